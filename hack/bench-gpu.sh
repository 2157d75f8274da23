#!/usr/bin/env bash
# hack/bench-gpu.sh - the embedding student on a GPU against sentence-transformers.
#
# Usage:
#   hack/bench-gpu.sh OUT                  both steps below, on one machine with cargo and a GPU
#   hack/bench-gpu.sh build BUNDLE         build the `cuda` bench in release into BUNDLE (needs
#                                          cargo and a C compiler; no GPU, no CUDA install: the
#                                          toolkit comes from hack/install-tools.sh cuda)
#   hack/bench-gpu.sh measure BUNDLE OUT   on the GPU machine (python3 with torch, transformers and
#                                          sentence-transformers; no cargo): measure, and write
#                                          OUT/report.md and the raw JSON lines beside it
#
# What it measures: a model of Qwen3-Embedding-0.6B's shape with random bf16 weights, made on the
# GPU machine; the same texts (exactly 128, 512 and 2048 tokens) through the runner's embedding
# featurizer (mistral.rs) and through SentenceTransformer.encode, at batch sizes 1, 32 and 256;
# tokens/s and records/s per case, peak GPU memory per implementation, and each against the bf16
# matrix rate measured on the same card in the same run (2 x parameters x tokens/s). The split
# exists because a GPU machine need not have a Rust toolchain: the build step's BUNDLE (the
# binary and the tokenizer files) is all the measure step needs from this checkout.
#
# Environment: CUDA_COMPUTE_CAP (build; default 90, Hopper), BENCH_BATCHES (default 1,32,256),
# BENCH_SEQS (default "128 512 2048"), BENCH_MIN_SECONDS (per case, default 2).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BATCHES="${BENCH_BATCHES:-1,32,256}"
read -r -a SEQS <<<"${BENCH_SEQS:-128 512 2048}"
MIN_SECONDS="${BENCH_MIN_SECONDS:-2}"

build() {
  local bundle="$1" bin
  cd "$HACK_DIR/.."
  use_tools cuda
  use_cargo_target
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  cargo build --release --quiet -p scorer-runner --features cuda --bench embed
  bin="$(newest_bin "$CARGO_TARGET_DIR/release/deps" embed)"
  use_tiny_models
  rm -rf "$bundle"
  mkdir -p "$bundle"
  # The binary carries every kernel's PTX and cubins; compressed it travels in a fraction.
  xz -T0 -6 -c "$bin" >"$bundle/embed.xz"
  cp -r "$MIRA_CACHE/tiny-models/qwen3-embedding-tiny" "$bundle/template"
  echo "$bundle"
}

# cuda_libraries : the directory of the CUDA libraries (cuBLAS, NVRTC, ...) that the GPU machine's
# PyTorch installed as NVIDIA wheels, which the binary links against by soname.
cuda_libraries() {
  python3 -c 'import nvidia, os, glob; print(":".join(glob.glob(os.path.join(nvidia.__path__[0], "cu*", "lib"))))'
}

# with_peak_memory FILE CMD... : run CMD while sampling the GPU's used memory every 100 ms, then
# append {"peak_gpu_mib_<impl>": ...} (the rise over the idle figure) to FILE; impl is $IMPL.
with_peak_memory() {
  local file="$1" idle sampler rc=0
  shift
  idle="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1)"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$file.samples" &
  sampler=$!
  "$@" || rc=$?
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  printf '{"peak_gpu_mib_%s": %d}\n' "$IMPL" "$(($(sort -n "$file.samples" | tail -n 1) - idle))" >>"$file"
  rm -f "$file.samples"
  return "$rc"
}

measure() {
  local bundle out work libs py="$HACK_DIR/bench-gpu.py"
  bundle="$(cd "$1" && pwd)"
  mkdir -p "$2"
  out="$(cd "$2" && pwd)"
  need_cmd python3 nvidia-smi xz
  # The model (1.2 GB), the binary and the inputs stay out of OUT, which keeps the figures only.
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  xz -dc "$bundle/embed.xz" >"$work/embed"
  chmod +x "$work/embed"
  libs="$(cuda_libraries)"
  [[ -n "$libs" ]] || die "python3 has no NVIDIA CUDA wheels (nvidia/cu*/lib) to take the libraries from"
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export HF_HOME="$work/hf-home" PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/card.txt"
  python3 "$py" peak | tee "$out/meta.jsonl"
  python3 "$py" model "$bundle/template" "$work/model" | tee -a "$out/meta.jsonl"
  python3 "$py" inputs "$work/model" "$work/inputs.jsonl" "${SEQS[@]}"
  # The baseline first: its figures are there even if the other side runs out of time.
  IMPL=sentence-transformers with_peak_memory "$out/meta.jsonl" \
    python3 "$py" st "$work/model" "$work/inputs.jsonl" "$BATCHES" "$MIN_SECONDS" | tee "$out/st.jsonl"
  IMPL=mistral.rs with_peak_memory "$out/meta.jsonl" \
    "$work/embed" "$work/model" "$work/inputs.jsonl" "$BATCHES" "$MIN_SECONDS" | tee "$out/mistralrs.jsonl"
  python3 "$py" report "$out/meta.jsonl" "$out/mistralrs.jsonl" "$out/st.jsonl" | tee "$out/report.md"
}

case "${1:-}" in
  build) (($# == 2)) || usage; build "$2" ;;
  measure) (($# == 3)) || usage; measure "$2" "$3" ;;
  "" | -h | --help) usage ;;
  *) (($# == 1)) || usage; build "$1/bundle" >/dev/null; measure "$1/bundle" "$1" ;;
esac
