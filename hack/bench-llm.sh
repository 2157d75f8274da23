#!/usr/bin/env bash
# hack/bench-llm.sh [RECORDS] - label and embedding throughput with the tiny models on CPU, and the
# speed-up from batching (requests in flight together vs one at a time). Dev profile, like the
# tests (see Cargo.toml); compare the ratios, not the absolute figures.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HACK_DIR/.."
use_cargo_target
cargo build --workspace --all-targets --quiet
use_tiny_models
bench="$(newest_bin "$CARGO_TARGET_DIR/debug/deps" llm)"
echo "$(nproc) cores"
"$bench" "$MIRA_CACHE/tiny-models" "${1:-64}"
