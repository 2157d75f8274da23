#!/usr/bin/env bash
# hack/tiny-models.sh OUT_DIR
#
# Writes the tiny random-weight models that mistral.rs loads on CPU in a fraction of a second
# (scorer-runner/examples/tiny_models.rs) under OUT_DIR:
#   OUT_DIR/qwen3-tiny            Qwen3ForCausalLM with a ChatML template (chat judges, LLM students)
#   OUT_DIR/qwen3-embedding-tiny  the Qwen3-Embedding layout (embedders)
# and prints OUT_DIR. Cheap to call every time: when OUT_DIR already holds the output of the
# same generator (a stamp file records a hash of its source) it does nothing. The generator is
# deterministic, so a fresh run writes the same bytes.
#
# Environment:
#   CARGO_TARGET_DIR  where the example is built (default: $MIRA_CACHE/target)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# == 1)) || die "usage: ${0##*/} OUT_DIR"
need_cmd cargo sha256sum
root="$(cd "$HACK_DIR/.." && pwd)"
src="$root/scorer-runner/examples/tiny_models.rs"
[[ -f "$src" ]] || die "generator not found: $src"
mkdir -p "$1"
out="$(cd "$1" && pwd)"
stamp_file="$out/.tiny-models-stamp"
stamp="tiny_models $(sha256sum "$src" | cut -d' ' -f1)"
use_cargo_target

tmp=""
cleanup() { [[ -z "$tmp" ]] || rm -rf "$tmp"; }
trap cleanup EXIT

models=(qwen3-tiny qwen3-embedding-tiny)

# Every step checks its own status: with_lock runs this function where `set -e` does not apply,
# and a stamp written after a failed step would pass missing models off as current.
generate() {
  local d current=1
  for d in "${models[@]}"; do [[ -d "$out/$d" ]] || current=0; done
  if ((current)) && [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
    log "tiny models in $out are current"
    return 0
  fi
  log "generating tiny models into $out"
  rm -f "$stamp_file"
  # Written next to the output and moved into place, so a reader never sees half a model.
  tmp="$(mktemp -d "$out/.tiny-models.XXXXXX")" || return 1
  # Built with the whole workspace's features, as `cargo build --workspace --all-targets` and the
  # demo's `--bins --examples` build it, so that no dependency is compiled a second time for a
  # feature set of its own.
  (cd "$root" && cargo build --quiet --workspace --example tiny_models) || return 1
  "$CARGO_TARGET_DIR/debug/examples/tiny_models" "$tmp" >/dev/null || return 1
  for d in "${models[@]}"; do
    rm -rf "${out:?}/$d" && mv "$tmp/$d" "$out/$d" || return 1
  done
  printf '%s\n' "$stamp" >"$stamp_file"
}

# One generator per output directory at a time (parallel test binaries, CI jobs).
with_lock "tiny-models-$(printf '%s' "$out" | sha256sum | cut -c1-16)" generate
echo "$out"
