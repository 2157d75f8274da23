#!/usr/bin/env bash
# hack/demo.sh [STATE_DIR] - the README's first command: builds `mira` and `scorer-runner`,
# writes the tiny random-weight models into examples/quickstart/models (cached), and runs the
# whole chain of examples/quickstart/ on one machine with `mira run`. With STATE_DIR, the run's
# state and outputs go there (a fresh run); without it, into examples/quickstart/ itself, so a
# second run resumes and redoes nothing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HACK_DIR/.."

# phase N TEXT : one line per phase on stderr, so a first run's long build is never silent.
phase() { printf '[demo %s/3] %s\n' "$1" "$2" >&2; }

use_cargo_target
if [[ -x "$CARGO_TARGET_DIR/debug/mira" ]]; then
  phase 1 "building mira and scorer-runner (seconds when only MIRA changed)"
else
  phase 1 "building mira and scorer-runner; the first build compiles mistral.rs and the AWS SDK: about 20 minutes on 2 cores, once (cached in $CARGO_TARGET_DIR)"
fi
# The examples too: with them the build resolves features as the tests do, so the tests, the
# tiny-model generator and these binaries share one build of every dependency.
cargo build --workspace --bins --examples --quiet
example=examples/quickstart
if [[ -n "${1:-}" ]]; then
  rm -rf "$1" && mkdir -p "$1"
  cp -r "$example/mira.yaml" "$example/data" "$example/labels.jsonl.gz" "$1/"
  example="$1"
fi
phase 2 "tiny random-weight models (a few seconds, once)"
use_tiny_models   # also keeps mistral.rs' hub cache out of the user's home
mkdir -p "$example/models"
for m in qwen3-tiny qwen3-embedding-tiny; do
  ln -sfn "$MIRA_CACHE/tiny-models/$m" "$example/models/$m"
done
phase 3 "mira run -f $example/mira.yaml (about a minute)"
exec "$CARGO_TARGET_DIR/debug/mira" run -f "$example/mira.yaml"
