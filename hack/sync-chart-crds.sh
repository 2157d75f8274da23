#!/usr/bin/env bash
# hack/sync-chart-crds.sh - copy the generated CRDs into the Helm chart.
#
# Usage:
#   hack/sync-chart-crds.sh           copy crds/*.yaml to charts/mira-operator/crds-src/ (and
#                                     remove files there that crds/ no longer has)
#   hack/sync-chart-crds.sh --check   change nothing; exit 1 and name the differences when the
#                                     chart's copies are not equal to crds/*.yaml
#
# Why: crds/ holds what `mira crd --out-dir crds` generates (committed; a test fails when it is
# stale). The chart installs the same CRDs as templates (templates/crds.yaml reads
# crds-src/*.yaml with .Files.Get and adds only labels and the keep annotation), so that
# `helm upgrade` updates them. Run this after regenerating crds/.
#
# Environment: MIRA_CRDS_DIR (default: crds), MIRA_CHART_CRDS_DIR (default:
# charts/mira-operator/crds-src), both relative to the repository root unless absolute.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HACK_DIR/.."

src="${MIRA_CRDS_DIR:-crds}"
dst="${MIRA_CHART_CRDS_DIR:-charts/mira-operator/crds-src}"
check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) usage ;;
esac

[[ -d "$src" ]] || die "$src does not exist; generate it first (mira crd --out-dir $src)"
shopt -s nullglob
srcs=("$src"/*.yaml)
((${#srcs[@]} > 0)) || die "$src has no .yaml files; generate them first (mira crd --out-dir $src)"

if ((check)); then
  diffs=0
  for f in "${srcs[@]}"; do
    name="${f##*/}"
    if [[ ! -f "$dst/$name" ]]; then
      printf 'missing in %s: %s\n' "$dst" "$name" >&2
      diffs=1
    elif ! cmp -s "$f" "$dst/$name"; then
      printf 'differs: %s %s\n' "$f" "$dst/$name" >&2
      diffs=1
    fi
  done
  for f in "$dst"/*.yaml; do
    [[ -f "$src/${f##*/}" ]] || { printf 'not in %s: %s\n' "$src" "$f" >&2; diffs=1; }
  done
  if ((diffs)); then
    printf '%s: the chart'"'"'s CRDs are stale; run hack/sync-chart-crds.sh\n' "${0##*/}" >&2
    exit 1
  fi
  log "chart CRDs equal $src"
  exit 0
fi

mkdir -p "$dst"
for f in "$dst"/*.yaml; do
  [[ -f "$src/${f##*/}" ]] || { log "removing ${f}"; rm -f "$f"; }
done
for f in "${srcs[@]}"; do
  cmp -s "$f" "$dst/${f##*/}" 2>/dev/null || { log "copying $f"; cp "$f" "$dst/${f##*/}"; }
done
