#!/usr/bin/env bash
# hack/bench-llm.sh [RECORDS] - label and embedding throughput with the tiny models on CPU, and the
# speed-up from batching (requests in flight together vs one at a time). Dev profile, like the
# tests (see Cargo.toml); compare the ratios, not the absolute figures.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HACK_DIR/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MIRA_CACHE/target}"
cargo build --workspace --all-targets --quiet
hack/tiny-models.sh "$MIRA_CACHE/tiny-models" >/dev/null
export HF_HOME="${HF_HOME:-$MIRA_CACHE/hf-home}"
bench=$(ls -t "$CARGO_TARGET_DIR"/debug/deps/llm-* | grep -v '\.d$' | head -n 1)
echo "$(nproc) cores"
"$bench" "$MIRA_CACHE/tiny-models" "${1:-64}"
