#!/usr/bin/env bash
# hack/bench-teacher.sh [ROUNDS] - discover and label records per second on CPU with a real
# instruct model (SmolLM2-135M-Instruct: F32 safetensors and the Q4_1 GGUF it was converted from)
# beside the tiny random-weight model; medians over ROUNDS (default 1). Dev profile, like the
# tests (see Cargo.toml).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HACK_DIR/.."
use_cargo_target
cargo build --workspace --all-targets --quiet
use_tiny_models
smollm2="$("$HACK_DIR/smollm2.sh")"
bench="$(newest_bin "$CARGO_TARGET_DIR/debug/deps" teacher)"
echo "$(nproc) cores"
"$bench" "$MIRA_CACHE/tiny-models" "$smollm2" "${1:-1}"
