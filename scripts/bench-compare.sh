#!/usr/bin/env bash
# The criterion baseline of `cargo bench --bench blast_radius`, kept in benches/baseline/ so a
# regression shows against the figures in docs/benchmarks.md.
#
#   scripts/bench-compare.sh          restore the kept baseline into <target>/criterion, run the
#                                     bench against it; exit 1 when criterion reports a regression
#   scripts/bench-compare.sh save     run the bench, save it as the baseline and copy it into
#                                     benches/baseline/ (commit the result)
#
# The target directory is $CARGO_TARGET_DIR, else ./target. Criterion compares with its noise
# threshold (5 %) and a p-value; on a shared machine, re-run before believing a regression.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=kept
KEPT=benches/baseline
CRITERION="${CARGO_TARGET_DIR:-target}/criterion"

case "${1:-compare}" in
  save)
    cargo bench --locked --bench blast_radius -- --save-baseline "$NAME"
    rm -rf "$KEPT"
    # <group>/<function>/<baseline>/{estimates,sample,tukey,benchmark}.json
    (cd "$CRITERION" && find . -type d -name "$NAME" -print0) |
      while IFS= read -r -d '' d; do
        mkdir -p "$KEPT/$d"
        cp "$CRITERION/$d"/*.json "$KEPT/$d/"
      done
    echo "bench-compare: baseline saved in $KEPT"
    ;;
  compare)
    [ -d "$KEPT" ] || { echo "bench-compare: no baseline in $KEPT (run: $0 save)" >&2; exit 2; }
    mkdir -p "$CRITERION"
    cp -R "$KEPT"/. "$CRITERION"/
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    cargo bench --locked --bench blast_radius -- --baseline "$NAME" | tee "$log"
    if grep -q "Performance has regressed" "$log"; then
      echo "bench-compare: regression against the kept baseline (see above)" >&2
      exit 1
    fi
    echo "bench-compare: no regression against the kept baseline"
    ;;
  *)
    echo "usage: $0 [save|compare]" >&2
    exit 2
    ;;
esac
