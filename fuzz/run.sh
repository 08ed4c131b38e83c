#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) from the committed seeds; exits non-zero on
# the first crash, printing the input that crashed (base64) so it can be replayed.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]
#
# cargo-fuzz is installed when missing. The sanitizer is off (`-s none`): the code under test
# is safe Rust, and without ASan no nightly-only flag is passed, so the stable toolchain builds
# the targets as they are. New inputs go to a scratch corpus, never into fuzz/corpus.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(jws claims execution_context request_bodies)

cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
  cargo install --locked cargo-fuzz --version "$cargo_fuzz_version"
fi

# Build flags: release, with 16 codegen units instead of cargo-fuzz's 1 (a much shorter build
# for somewhat slower code); UNWIND_FUZZ_BUILD replaces them. UNWIND_FUZZ_TARGET_DIR keeps the
# build outside the checkout, so that a later run rebuilds only what changed.
read -r -a build <<<"${UNWIND_FUZZ_BUILD:--O --codegen-units 16}"
target_dir=(--target-dir "${UNWIND_FUZZ_TARGET_DIR:-target}")
cargo fuzz build -s none "${build[@]}" "${target_dir[@]}"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
# Two at a time: one per core.
run_one() {
  local t=$1
  mkdir -p "$scratch/$t" "artifacts/$t"
  local dict=()
  [ -f "$t.dict" ] && dict=(-dict="$t.dict")
  cargo fuzz run -s none "${build[@]}" "${target_dir[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "${dict[@]}" >"$scratch/$t.log" 2>&1
}
report() {
  local t=$1 rc=$2
  local stats
  stats=$(grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units)' "$scratch/$t.log" | tail -n 2 | tr '\n' ' ')
  if [ "$rc" -eq 0 ]; then
    echo "fuzz: $t: ok after ${seconds}s ($stats)"
  else
    failed=1
    echo "fuzz: $t: FAILED (exit $rc)"
    tail -n 150 "$scratch/$t.log"
    for f in artifacts/"$t"/*; do
      [ -f "$f" ] && echo "fuzz: $t: crashing input $f (base64): $(base64 -w0 "$f")"
    done
  fi
}
i=0
while [ "$i" -lt "${#targets[@]}" ]; do
  a=${targets[$i]}
  b=${targets[$((i + 1))]:-}
  run_one "$a" &
  pa=$!
  if [ -n "$b" ]; then
    run_one "$b" &
    pb=$!
  fi
  rc=0; wait "$pa" || rc=$?; report "$a" "$rc"
  if [ -n "$b" ]; then rc=0; wait "$pb" || rc=$?; report "$b" "$rc"; fi
  i=$((i + 2))
done
exit "$failed"
