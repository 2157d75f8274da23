#!/usr/bin/env bash
# hack/bench-control-plane.sh - the operator at scale against a real API server.
#
# A chain whose FilterRun covers 500,000 shards in 100 groups, 15 rubric dimensions per group, run
# by `mira operator` with the stage Jobs played by the process kubelet and a fake data plane (see
# operator/benches/control_plane.rs). Prints the size of every object the operator writes
# (budget 256 KiB each) and the time of one reconcile of the FilterRun, warm and after a restart.
# Exits 1 when an object is over budget.
#
# Uses the API server and S3 server of the environment (KUBECONFIG, MIRA_S3_ENDPOINT and AWS_*,
# as hack/test.sh sets them); when there are none, starts both in a temporary directory and
# stops them at the end.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HACK_DIR/.."
use_cargo_target

# helm renders the chart's RBAC, which the operator runs with.
use_tools helm

state=""
cleanup() {
  if [[ -n "$state" ]]; then
    stop_test_servers "$state"
    rm -rf "$state"
  fi
}
trap cleanup EXIT
if [[ -z "${KUBECONFIG:-}" || -z "${MIRA_S3_ENDPOINT:-}" ]]; then
  state="$(mktemp -d "${TMPDIR:-/tmp}/mira-bench.XXXXXX")"
  hack/s3-server.sh start "$state"
  hack/kube-up.sh start "$state"
  source_env "$state/s3.env" "$state/kube.env"
fi

# The dev profile, shared with the tests: no extra build of the dependencies.
cargo build --workspace --all-targets --quiet
bench="$(newest_bin "$CARGO_TARGET_DIR/debug/deps" control_plane)"
"$bench"
