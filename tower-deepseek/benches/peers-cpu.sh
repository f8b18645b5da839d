#!/usr/bin/env bash
# CPU time per call of the peers bench's variants, for a loaded machine where criterion's wall
# clock medians move too much: each variant's process runs N calls after 1,000 to warm, and 0
# after the same warm-up; `perf stat`'s task-clock of the two, subtracted, divided by N. The
# binaries and variants are alternated within each round, ROUNDS rounds; prints the best and
# the median per call.
#
#   cargo bench -p tower-deepseek --bench peers --no-run        # note the binary it prints
#   tower-deepseek/benches/peers-cpu.sh peer_cache_miss_2k "bare ours tower_resilience floor_canonical_key" <binary>...
#   ROUNDS=5 N=20000 INSTR=1 tower-deepseek/benches/peers-cpu.sh ...   # INSTR=1: callgrind instructions per call instead
set -euo pipefail
GROUP=$1 VARIANTS=$2; shift 2
ROUNDS=${ROUNDS:-5} N=${N:-20000}
per_call() { # binary variant -> nanoseconds (or instructions) per call
  if [ -n "${INSTR:-}" ]; then
    one() { PEERS_DRIVE=$GROUP/$2 PEERS_ITERS=$3 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" 2>&1 | sed -n 's/.*Collected : //p'; }
    a=$(one "$1" "$2" 1000) z=$(one "$1" "$2" 0); echo $(( (a - z) / 1000 ))
  else
    one() { PEERS_DRIVE=$GROUP/$2 PEERS_ITERS=$3 perf stat -x, -e task-clock "$1" 2>&1 >/dev/null | awk -F, '/task-clock/ {print $1}'; }
    a=$(one "$1" "$2" "$N") z=$(one "$1" "$2" 0); awk -v a="$a" -v z="$z" -v n="$N" 'BEGIN {printf "%d\n", (a - z) * 1e6 / n}'
  fi
}
declare -A seen
[ -n "${INSTR:-}" ] && ROUNDS=1
for _ in $(seq "$ROUNDS"); do
  for bin in "$@"; do for v in $VARIANTS; do seen[$bin/$v]+="$(per_call "$bin" "$v") "; done; done
done
for bin in "$@"; do for v in $VARIANTS; do
  sorted=$(tr ' ' '\n' <<< "${seen[$bin/$v]}" | grep . | sort -n)
  n=$(wc -l <<< "$sorted")
  printf '%-40s %-26s best %8s  median %8s  (%s)\n' "$(basename "$bin")" "$v" "$(head -1 <<< "$sorted")" \
    "$(sed -n "$(( (n + 1) / 2 ))p" <<< "$sorted")" "$(tr '\n' ' ' <<< "$sorted")"
done; done
