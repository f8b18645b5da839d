#!/usr/bin/env bash
# Load benchmark of deepseek-gateway: the full stack (audit, redact, cache, rate limit, retry,
# breaker, bearer auth, timeouts) with inbound keys, in front of the testkit mock upstream,
# driven by wrk with 64 connections.
#
#   tower-deepseek-gateway/bench/load.sh                 # 30 s per scenario, testkit upstream
#   UPSTREAM_KIND=fast tower-deepseek-gateway/bench/load.sh   # a minimal fixed-answer upstream
#   DURATION=60s THREADS=1 tower-deepseek-gateway/bench/load.sh
#   ROUNDS=3 DURATION=10s tower-deepseek-gateway/bench/load.sh   # the scenarios alternated, 3 rounds
#
# Scenarios: `proxied` (temperature 1: not cacheable, every call goes upstream through the whole
# stack), `cached` (temperature 0, one prompt: L1 hits), and `bare` (a second gateway with every
# layer switched off, for the cost of the layers).
#
# Needs `wrk` (apt-get install -y wrk). Prints requests/s, p50/p99 and the gateway's resident
# memory before and after each scenario.
set -euo pipefail

DURATION=${DURATION:-30s}
ROUNDS=${ROUNDS:-1}
THREADS=${THREADS:-1}
CONNECTIONS=${CONNECTIONS:-64}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d)
GW_PID= UP_PID= BARE_PID=
trap 'kill $GW_PID $BARE_PID $UP_PID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p tower-deepseek-gateway -p tower-deepseek-testkit --bins)
fi
BIN=$TARGET/release

# The mock upstream prints `listening on http://127.0.0.1:PORT`.
UPSTREAM_KIND=${UPSTREAM_KIND:-testkit}
if [ "$UPSTREAM_KIND" = fast ]; then UP_ARGS=--fast; else UP_ARGS=; fi
"$BIN/mock-upstream" $UP_ARGS > "$WORK/upstream.out" &
UP_PID=$!
for _ in $(seq 100); do grep -q listening "$WORK/upstream.out" 2>/dev/null && break; sleep 0.05; done
UPSTREAM=$(sed -n 's/^listening on //p' "$WORK/upstream.out")

KEY=bench-client-key-0001
HASH=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)
cat > "$WORK/gateway.toml" <<TOML
[[keys]]
sha256 = "$HASH"
tenant = "bench"

[rate_limit]
requests_per_minute = 100000000
key_by = "tenant"

[breaker]
minimum_number_of_calls = 100

[audit]
on_sink_failure = "fail_open"
TOML

DEEPSEEK_API_KEY=sk-bench-upstream GATEWAY_AUDIT_HMAC_KEY=bench-audit-hmac-key-0001 RUST_LOG=warn \
  "$BIN/deepseek-gateway" --listen 127.0.0.1:0 --upstream "$UPSTREAM" \
  --config "$WORK/gateway.toml" --audit-log "$WORK/audit.jsonl" > "$WORK/gateway.out" 2> "$WORK/gateway.err" &
GW_PID=$!
for _ in $(seq 100); do grep -q listening "$WORK/gateway.out" 2>/dev/null && break; sleep 0.05; done
GATEWAY=$(sed -n 's/^listening on //p' "$WORK/gateway.out")
[ -n "$GATEWAY" ] || { cat "$WORK/gateway.err" >&2; exit 1; }

printf '[[keys]]\nsha256 = "%s"\n[layers]\naudit = false\nredact = false\ncache = false\nrate_limit = false\nretry = false\nbreaker = false\ntimeout = false\n' "$HASH" > "$WORK/bare.toml"
DEEPSEEK_API_KEY=sk-bench-upstream RUST_LOG=warn \
  "$BIN/deepseek-gateway" --listen 127.0.0.1:0 --upstream "$UPSTREAM" --config "$WORK/bare.toml" > "$WORK/bare.out" 2>&1 &
BARE_PID=$!
for _ in $(seq 100); do grep -q listening "$WORK/bare.out" 2>/dev/null && break; sleep 0.05; done
BARE=$(sed -n 's/^listening on //p' "$WORK/bare.out")

rss() { awk '/VmRSS/ {print $2 " kB"}' "/proc/$1/status"; }

script() { # $1 = file, $2 = JSON body
  cat > "$1" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
wrk.body = '$2'
LUA
}
# Proxied: temperature 1 (DeepSeek's default) is not cached, so every call goes upstream.
script "$WORK/proxied.lua" '{"model":"deepseek-chat","temperature":1,"messages":[{"role":"user","content":"Hello, how are you today?"}]}'
# Cache hits: temperature 0, the same prompt every time.
script "$WORK/cached.lua" '{"model":"deepseek-chat","temperature":0,"messages":[{"role":"user","content":"Hello, how are you today?"}]}'

# Sanity: one call of each kind answers 200 (and warms the cache).
for s in proxied cached; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
    --data "$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$WORK/$s.lua")" "$GATEWAY/v1/chat/completions")
  [ "$code" = 200 ] || { echo "sanity call ($s) answered $code" >&2; cat "$WORK/gateway.err" >&2; exit 1; }
done

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "gateway $GATEWAY -> $UPSTREAM_KIND upstream $UPSTREAM; wrk -t$THREADS -c$CONNECTIONS -d$DURATION; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
for s in proxied cached bare; do
  if [ $s = bare ]; then pid=$BARE_PID url=$BARE lua=proxied; else pid=$GW_PID url=$GATEWAY lua=$s; fi
  before=$(rss $pid); c0=$(cpu $pid)
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/$lua.lua" "$url/v1/chat/completions" > "$WORK/$s.wrk"
  after=$(rss $pid); c1=$(cpu $pid)
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/$s.wrk")
  total=$(awk '/requests in/ {print $1}' "$WORK/$s.wrk")
  p50=$(awk '$1 == "50%" {print $2}' "$WORK/$s.wrk")
  p99=$(awk '$1 == "99%" {print $2}' "$WORK/$s.wrk")
  errors=$(grep -E 'Non-2xx|Socket errors' "$WORK/$s.wrk" | tr '\n' ' ' || true)
  us=$(( (c1 - c0) * 10000000 / total / 1000 ))
  printf '%s%-8s %10s req/s  %9s requests  p50 %8s  p99 %8s  gateway CPU %4s us/req  RSS %s -> %s  %s\n' \
    "$( [ "$ROUNDS" -gt 1 ] && echo "round $round  ")" "$s" "$rps" "$total" "$p50" "$p99" "$us" "$before" "$after" "$errors"
done
done
curl -s "$GATEWAY/metrics" | grep -E '^deepseek_cache_requests_total|^deepseek_gateway_requests_total' || true
kill -TERM $GW_PID; wait $GW_PID 2>/dev/null || true; GW_PID=
echo "audit records written (after the drain): $(cat "$WORK"/audit.jsonl* | wc -l)"
