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

use_cargo_target
cargo build --workspace --bins --quiet
example=examples/quickstart
if [[ -n "${1:-}" ]]; then
  rm -rf "$1" && mkdir -p "$1"
  cp -r "$example/mira.yaml" "$example/data" "$1/"
  example="$1"
fi
use_tiny_models   # also keeps mistral.rs' hub cache out of the user's home
mkdir -p "$example/models"
for m in qwen3-tiny qwen3-embedding-tiny; do
  ln -sfn "$MIRA_CACHE/tiny-models/$m" "$example/models/$m"
done
exec "$CARGO_TARGET_DIR/debug/mira" run -f "$example/mira.yaml"
