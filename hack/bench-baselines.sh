#!/usr/bin/env bash
# hack/bench-baselines.sh [MEGABYTES]  (default 640: about 100 MB of JSONL.zst)
#
# Records/s of the `score` step with each ranker over the same shards in the same binary: the
# hashed student (MIRA), the random baseline and DSIR (its weights fitted from 20,000 records of
# the target and of the source inside the timed run), with the decompress-and-parse floor beside
# them. Five interleaved rounds; prints every run and, per ranker, the median over the rounds of
# its rate over the student's in the same round: compare ratios, not absolute times. The corpus
# is bench-score.sh's generator's, cached by size.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
size="${1:-640}"
use_cargo_target
cd "$HACK_DIR/.."
generated_score_corpus "$size"
declare -A ratios=()
for round in 1 2 3 4 5; do
  floor=$("$bench" baseline "$dir") && echo "round $round floor: $floor"
  student=$("$bench" score "$dir" student) && echo "round $round student: $student"
  for ranker in random dsir; do
    run=$("$bench" score "$dir" "$ranker") && echo "round $round $ranker: $run"
    ratios[$ranker]+="$(awk -v r="$(records_rate "$run")" -v s="$(records_rate "$student")" 'BEGIN { printf "%.2f", r / s }') "
  done
  ratios[floor]+="$(awk -v f="$(records_rate "$floor")" -v s="$(records_rate "$student")" 'BEGIN { printf "%.2f", f / s }') "
done
for name in random dsir floor; do
  # shellcheck disable=SC2086
  echo "$name/student per round: ${ratios[$name]}; median $(printf '%s\n' ${ratios[$name]} | sort -n | sed -n 3p)"
done
