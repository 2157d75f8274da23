#!/usr/bin/env bash
# hack/bench-score.sh [MEGABYTES]  (default 6400: about 1 GB of JSONL.zst)
# MIRA_BENCH_TEXT=<folder> hack/bench-score.sh   also on real text: every UTF-8 file in the folder
#
# Benchmarks the `score` step with the hashed student against the floor, a plain
# decompress-and-parse pass over the same JSONL.zst shards with the same parallelism.
# The corpus is generated once and cached (keyed by size). Each phase is its own process,
# so each reports its own peak RSS. Runs baseline and score five times, interleaved, prints
# every run and the median of the rounds' ratios: compare ratios, not absolute times. Then, on
# one core, the floor beside score and beside the student alone (featurize + ridge heads over
# texts already in memory), the step's hot loop. Last, three rounds with a student of fifteen
# dimensions. With MIRA_BENCH_TEXT, the same students then score a corpus cut from real text
# (the bench's `import` phase): the generated corpus draws its words from a few dozen, which
# flatters the featurizer.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
size="${1:-6400}"
use_cargo_target
cd "$HACK_DIR/.."
generated_score_corpus "$size"
# Five interleaved rounds, each ratio taken within its round: on a shared machine one run can be
# twice as slow as the next, so the median of the rounds' ratios is the figure to quote.
# rounds N [DIR]: N interleaved floor/score rounds over DIR (default: the generated corpus),
# every run printed, then the rounds' ratios and their median.
rounds() {
  local n="$1" dir="${2:-$dir}" round floor score ratios=()
  for ((round = 1; round <= n; round++)); do
    floor=$("$bench" baseline "$dir") && echo "$floor"
    score=$("$bench" score "$dir") && echo "$score"
    ratios+=("$(awk -v s="$(records_rate "$score")" -v f="$(records_rate "$floor")" 'BEGIN { printf "%.1f", 100 * s / f }')")
  done
  echo "score/floor per round (%): ${ratios[*]}; median $(printf '%s\n' "${ratios[@]}" | sort -n | sed -n "$(((n + 1) / 2))p")"
}
rounds 5
for round in 1 2; do
  MIRA_PARALLELISM=1 "$bench" baseline "$dir"
  MIRA_PARALLELISM=1 "$bench" score "$dir"
  "$bench" student "$dir"
done
# The same with a student of fifteen dimensions, the paper's rubric size (the labels' signal
# repeated: fifteen heads to apply, whatever they learn).
"$bench" train "$dir" 15
rounds 3
[[ -n "${MIRA_BENCH_TEXT:-}" ]] || exit 0
text="$MIRA_CACHE/bench/text-$(printf '%s' "$MIRA_BENCH_TEXT" | sha256sum | cut -c1-12)"
cached_corpus "$bench" "$text" import "$MIRA_BENCH_TEXT"
echo "real text: $(corpus_size "$text")"
for dims in 15 1; do
  "$bench" train "$dir" "$dims"
  rm -rf "$text/distill" && cp -r "$dir/distill" "$text/distill"
  rounds 3 "$text"
  "$bench" student "$text"
done
