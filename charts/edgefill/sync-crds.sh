#!/usr/bin/env bash
# Copy the CRDs (and the admission policy that belongs to them) from crds/,
# the single source of the API, into the chart, which cannot read files
# outside its own directory once packaged. tests/chart fails when the two
# drift; run this (`make chart-crds`) after changing anything in crds/.
#
#   charts/edgefill/sync-crds.sh          copy
#   charts/edgefill/sync-crds.sh --check  exit 1 and name the files that differ
set -euo pipefail
chart="$(cd "$(dirname "$0")" && pwd)"
src="$chart/../../crds"
dst="$chart/files/crds"
mode="${1:-copy}"
drift=0
shopt -s nullglob
for f in "$src"/*.yaml; do
  name="$(basename "$f")"
  if [ "$mode" = "--check" ]; then
    cmp -s "$f" "$dst/$name" || { echo "drift: crds/$name differs from charts/edgefill/files/crds/$name" >&2; drift=1; }
  else
    install -m 0644 "$f" "$dst/$name"
  fi
done
for f in "$dst"/*.yaml; do
  name="$(basename "$f")"
  if [ ! -e "$src/$name" ]; then
    if [ "$mode" = "--check" ]; then
      echo "drift: charts/edgefill/files/crds/$name has no source in crds/" >&2; drift=1
    else
      rm -f "$f"
    fi
  fi
done
if [ "$mode" = "--check" ] && [ "$drift" = 1 ]; then
  echo "run charts/edgefill/sync-crds.sh to copy crds/ into the chart" >&2
  exit 1
fi
