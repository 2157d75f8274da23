#!/usr/bin/env bash
# hack/test.sh - the whole test suite, as CI runs it (.ci/run calls this; so does the README).
#
# First the lint gates, which fail fast: rustfmt over the whole tree, and clippy with warnings as
# errors, with and without the `llm` feature. Then it installs the test tools once (cached under
# $MIRA_CACHE, keyed by version), starts a real S3
# server (SeaweedFS) and a real Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager) on loopback, generates the tiny models, fetches SmolLM2-135M-Instruct
# (hack/smollm2.sh), builds everything, runs every
# cargo test (unit, data-plane integration on S3 and local disk, operator end to end), runs the
# README's first command, and lints the Helm chart. Stops what it started, whatever happens; on a
# failure it first keeps every server's and Job's log in a folder it names (lib.sh keep_logs).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HACK_DIR/.."

use_cargo_target
use_test_state mira-test

step() { printf '\n==> %s\n' "$*"; }

step "lint: rustfmt"
cargo fmt --all --check

step "lint: clippy (with the llm feature, and without it)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p scorer-runner --no-default-features --all-targets -- -D warnings

step "test tools (cached after the first run)"
use_tools all

step "S3 server"
hack/s3-server.sh start "$state"
source_env "$state/s3.env"

step "control plane start-ups (five in a row: a start-up race fails here, not in a test)"
hack/kube-up-selftest.sh 5

step "Kubernetes control plane"
hack/kube-up.sh start "$state"
source_env "$state/kube.env"

step "tiny models"
export MIRA_TINY_MODELS="$MIRA_CACHE/tiny-models"
hack/tiny-models.sh "$MIRA_TINY_MODELS"
export HF_HOME="$state/hf-home"

step "a real instruct model (fetched and converted once)"
MIRA_SMOLLM2="$(hack/smollm2.sh)"
export MIRA_SMOLLM2

step "process kubelet self-test"
hack/process-kubelet-selftest.sh

step "build"
cargo build --workspace --all-targets

step "tests"
cargo test --workspace --no-fail-fast -- --test-threads=2

step "README's first command"
hack/demo.sh "$state/demo" | tee "$state/demo.log"
# What the README promises of it: a report per FilterRun, the curated chain scoring by its
# signal dimension, every FilterRun keeping half of its tokens (the cuts are exact to a record),
# and the curated selection set beside the random baseline's in its report.
for out in selected curated random; do
  grep -q "^report: .*/out/$out/report.html$" "$state/demo.log" || die "the demo names no report in out/$out"
  [[ -s "$state/demo/out/$out/report.html" ]] || die "the demo wrote no report in out/$out"
done
grep -q "group prose: scores by signal; masked noise" "$state/demo.log" || die "the curated chain does not score by signal"
awk '/^  total: kept [0-9]+ of [0-9]+ tokens/ { n++; share = $3 / $5; if (share < 0.45 || share > 0.55) bad++ }
  END { exit !(n == 3 && bad == 0) }' "$state/demo.log" || die "a demo FilterRun does not keep half of its tokens"
grep -q "Beside the other selections of this corpus" "$state/demo/out/curated/report.html" ||
  die "the curated report does not compare its selection with the random baseline's"

step "Helm chart (lint, render, server-side dry run, CRDs in sync)"
hack/chart-check.sh
