#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (FUZZ_SECONDS each, default 60).
#
#   fuzz/run.sh                       # all targets, 60 s each
#   FUZZ_SECONDS=300 fuzz/run.sh      # longer
#   fuzz/run.sh sse_parser restore    # some targets
#
# Needs the nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz`). Corpora grow in fuzz/corpus/<target>, crashes land in
# fuzz/artifacts/<target> (both git-ignored). Exits non-zero if a target found a crash.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${FUZZ_SECONDS:-60}
if [ $# -gt 0 ]; then TARGETS=("$@"); else mapfile -t TARGETS < <(cargo +nightly fuzz list); fi
failed=()
for t in "${TARGETS[@]}"; do
  echo "== $t (${SECONDS_EACH}s)"
  mkdir -p "corpus/$t"
  log=$(mktemp)
  status=0
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$SECONDS_EACH" \
    -max_len=4096 -print_final_stats=1 > "$log" 2>&1 || status=$?
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|==[0-9]+== ERROR|thread .* panicked|SUMMARY|.*Test unit written)' "$log" || true
  if [ "$status" -ne 0 ]; then failed+=("$t"); tail -40 "$log" >&2; fi
  rm -f "$log"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashes in: ${failed[*]} (see fuzz/artifacts/)" >&2
  exit 1
fi
echo "no crash in ${TARGETS[*]}"
