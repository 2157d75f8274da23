#!/usr/bin/env bash
# hack/bench-distill.sh [LABELS...]  (default 12500 62500 250000)
#
# Benchmarks `distill` at paper scale: a hashed student of fifteen dimensions trained on each
# number of labels (a fifth is held out for agreement, so 250,000 labels train on 200,000), each
# in its own process so that its peak RSS is its own. The baseline, run beside them on the
# smallest corpus, is the exact dual solve on 2,000 training labels, the most it takes (the
# step's cap was 3,000 labels before the primal solve). Prints each run's line and the time and memory per thousand training labels against
# the baseline's. Corpora are generated once and cached (keyed by size).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
use_cargo_target
cd "$HACK_DIR/.."
sizes=("$@")
[[ ${#sizes[@]} -gt 0 ]] || sizes=(12500 62500 250000)
# The dev profile, shared with the tests (the data plane is built optimised in it): no release
# build of the dependencies.
cargo build -p scorer-runner --bench score --quiet
bench="$(newest_bin "$CARGO_TARGET_DIR/debug/deps" score)"
# field NAME LINE : a `name=value` field of a bench output line.
field() { grep -o "$1=[0-9.]*" <<<"$2" | cut -d= -f2; }
# run LABELS MAX_TRAIN : train on a corpus of LABELS labels, at most MAX_TRAIN of them.
run() {
  local dir="$MIRA_CACHE/bench/distill-$1"
  if [[ ! -f "$dir/raw-bytes" ]]; then
    rm -rf "$dir" && mkdir -p "$dir"
    # About 600 bytes a record, one label per record.
    "$bench" generate "$dir" $(($1 * 600 / 1000000 + 1)) "$1" >/dev/null
  fi
  "$bench" train "$dir" 15 "$2"
}
baseline=$(run "${sizes[0]}" 2000)
echo "baseline (dual, 2,000): $baseline"
per_k() { awk -v v="$1" -v n="$2" 'BEGIN { printf "%.3f", v * 1000 / n }'; }
base_s=$(per_k "$(field seconds "$baseline")" "$(field labels "$baseline")")
base_mib=$(field peak_rss_mib "$baseline")
printf '| training labels | seconds | peak RSS (MiB) | s per 1k labels vs baseline | peak RSS vs baseline |\n| ---: | ---: | ---: | ---: | ---: |\n'
for n in "${sizes[@]}"; do
  line=$(run "$n" 1000000)
  echo "$line" >&2
  labels=$(field labels "$line")
  seconds=$(field seconds "$line")
  mib=$(field peak_rss_mib "$line")
  printf '| %s | %s | %s | %s | %s |\n' "$labels" "$seconds" "$mib" \
    "$(awk -v a="$(per_k "$seconds" "$labels")" -v b="$base_s" 'BEGIN { printf "%.2fx", a / b }')" \
    "$(awk -v a="$mib" -v b="$base_mib" 'BEGIN { printf "%.2fx", a / b }')"
done
