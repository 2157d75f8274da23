#!/usr/bin/env bash
# hack/bench-perplexity.sh [MEGABYTES] [ROUNDS]  (default 1 MB, 1,665 records; 3 rounds)
#
# Records/s of the `score` step ranked by perplexity under the tiny random-weight chat model (a
# real model's work per record: one mistral.rs forward pass over it and a log-softmax of every
# position's logits, CPU), beside the hashed student (MIRA), `random` and `dsir` over the same shards in the same binary.
# The dev profile, like the tests, since the `llm` feature's release build of mistral.rs alone
# takes most of an hour on 2 cores (Cargo.toml builds the dependencies and scorer-runner optimised
# in it). Interleaved rounds; prints every run and, per ranker, the median over the rounds of its
# rate over the student's in the same round: compare ratios, not absolute times.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
size="${1:-1}" rounds="${2:-3}"
use_cargo_target
cd "$HACK_DIR/.."
cargo build --workspace --all-targets --quiet
use_tiny_models
export MIRA_TINY_MODELS="$MIRA_CACHE/tiny-models"
bench="$(newest_bin "$CARGO_TARGET_DIR/debug/deps" score)"
dir="$MIRA_CACHE/bench/score-dev-${size}mb"
cached_corpus "$bench" "$dir" generate "$size"
"$bench" train "$dir"
echo "corpus: $(corpus_size "$dir"); $(nproc) cores"
declare -A ratios=()
for ((round = 1; round <= rounds; round++)); do
  student=$("$bench" score "$dir" student) && echo "round $round student: $student"
  for ranker in random dsir perplexity; do
    run=$("$bench" score "$dir" "$ranker") && echo "round $round $ranker: $run"
    ratios[$ranker]+="$(awk -v r="$(records_rate "$run")" -v s="$(records_rate "$student")" 'BEGIN { printf "%.3g", r / s }') "
  done
done
for name in random dsir perplexity; do
  # shellcheck disable=SC2086
  echo "$name/student per round: ${ratios[$name]}; median $(printf '%s\n' ${ratios[$name]} | sort -n | sed -n "$(((rounds + 1) / 2))p")"
done
