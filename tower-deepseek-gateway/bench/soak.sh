#!/usr/bin/env bash
# Soak test of deepseek-gateway (not a CI test): the full stack (audit with its file sink,
# redact, cache, rate limit, retry, breaker, bearer auth, timeouts) with inbound keys, in front
# of the mock upstream, for at least REQUESTS requests (default 1,000,000) over loopback, driven
# by wrk. The gateway's resident memory (VmRSS) is sampled every SAMPLE_SECONDS; at the end the
# script prints whether RSS after warm-up (the wrk rounds until WARMUP_REQUESTS requests, default
# a quarter of REQUESTS: L1 fills, allocator arenas grow) stayed within 10 % of its value at the
# end of the warm-up, and exits 1 if it did not.
#
#   tower-deepseek-gateway/bench/soak.sh
#   REQUESTS=200000 UPSTREAM_KIND=fast tower-deepseek-gateway/bench/soak.sh
#   SKIP_BUILD=1 CARGO_TARGET_DIR=/tmp/t nice tower-deepseek-gateway/bench/soak.sh
#
# The traffic mixes, per request (wrk Lua): non-cacheable calls (temperature 1), cacheable
# calls over 20,000 prompts per kind (L1 fills during the warm-up, then hits), calls
# whose prompt holds PII (masked, placeholders restored), and streaming calls (a third).
# Needs wrk (apt-get install -y wrk). UPSTREAM_KIND=testkit (default, the workspace's mock,
# which keeps every request it saw: its own memory grows, the gateway's must not) or fast.
set -euo pipefail

REQUESTS=${REQUESTS:-1000000}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
ROUND=${ROUND:-30s}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-3}
WARMUP_REQUESTS=${WARMUP_REQUESTS:-$((REQUESTS / 4))}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d)
GW_PID= UP_PID= SAMPLER_PID=
trap 'kill $SAMPLER_PID $GW_PID $UP_PID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p tower-deepseek-gateway -p tower-deepseek-testkit --bins)
fi
BIN=$TARGET/release

UPSTREAM_KIND=${UPSTREAM_KIND:-testkit}
if [ "$UPSTREAM_KIND" = fast ]; then UP_ARGS=--fast; else UP_ARGS=; fi
"$BIN/mock-upstream" $UP_ARGS > "$WORK/upstream.out" &
UP_PID=$!
for _ in $(seq 100); do grep -q listening "$WORK/upstream.out" 2>/dev/null && break; sleep 0.05; done
UPSTREAM=$(sed -n 's/^listening on //p' "$WORK/upstream.out")

KEY=soak-client-key-0001
HASH=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)
cat > "$WORK/gateway.toml" <<TOML
[[keys]]
sha256 = "$HASH"
tenant = "soak"

[rate_limit]
requests_per_minute = 100000000
key_by = "tenant"

[breaker]
minimum_number_of_calls = 100

[audit]
on_sink_failure = "fail_open"
TOML

DEEPSEEK_API_KEY=sk-soak-upstream GATEWAY_AUDIT_HMAC_KEY=soak-audit-hmac-key-0001 RUST_LOG=warn \
  "$BIN/deepseek-gateway" --listen 127.0.0.1:0 --upstream "$UPSTREAM" \
  --config "$WORK/gateway.toml" --audit-log "$WORK/audit.jsonl" > "$WORK/gateway.out" 2> "$WORK/gateway.err" &
GW_PID=$!
for _ in $(seq 100); do grep -q listening "$WORK/gateway.out" 2>/dev/null && break; sleep 0.05; done
GATEWAY=$(sed -n 's/^listening on //p' "$WORK/gateway.out")
[ -n "$GATEWAY" ] || { cat "$WORK/gateway.err" >&2; exit 1; }

cat > "$WORK/mix.lua" <<LUA
local n = 0
local auth = "Bearer $KEY"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = auth
request = function()
  n = n + 1
  local k = n % 6
  local body
  if k == 0 then
    body = '{"model":"deepseek-chat","temperature":1,"messages":[{"role":"user","content":"Hello, how are you today? ' .. n .. '"}]}'
  elseif k == 1 then
    body = '{"model":"deepseek-chat","temperature":0,"messages":[{"role":"user","content":"cached prompt ' .. (n % 20000) .. '"}]}'
  elseif k == 2 then
    body = '{"model":"deepseek-chat","temperature":0,"messages":[{"role":"user","content":"call me at 13800138000 or mail a.b@example.com about ' .. (n % 5000) .. '"}]}'
  elseif k == 3 then
    body = '{"model":"deepseek-chat","temperature":1,"stream":true,"messages":[{"role":"user","content":"stream please ' .. n .. '"}]}'
  elseif k == 4 then
    body = '{"model":"deepseek-chat","temperature":0,"stream":true,"messages":[{"role":"user","content":"cached stream ' .. (n % 20000) .. '"}]}'
  else
    body = '{"model":"deepseek-chat","temperature":1,"stream":true,"messages":[{"role":"user","content":"my card is 4111 1111 1111 1111, id ' .. n .. '"}]}'
  end
  return wrk.format(nil, "/v1/chat/completions", nil, body)
end
LUA

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
( while kill -0 "$GW_PID" 2>/dev/null; do echo "$(date +%s) $(rss "$GW_PID") $(rss "$UP_PID" 2>/dev/null || echo 0)"; sleep "$SAMPLE_SECONDS"; done ) > "$WORK/rss.log" &
SAMPLER_PID=$!

echo "gateway $GATEWAY -> $UPSTREAM_KIND upstream $UPSTREAM; $REQUESTS requests in wrk rounds of $ROUND (-t$THREADS -c$CONNECTIONS); $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
total=0 non2xx=0 errors=0 round=0 started=$(date +%s) warm_end=
while [ "$total" -lt "$REQUESTS" ]; do
  round=$((round + 1))
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$ROUND" --latency -s "$WORK/mix.lua" "$GATEWAY" > "$WORK/round.wrk"
  n=$(awk '/requests in/ {print $1}' "$WORK/round.wrk")
  bad=$(awk '/Non-2xx/ {print $NF}' "$WORK/round.wrk"); bad=${bad:-0}
  sock=$(awk '/Socket errors/ {s=0; for (i=4;i<=NF;i+=2) s+=$i; print s}' "$WORK/round.wrk"); sock=${sock:-0}
  total=$((total + n)); non2xx=$((non2xx + bad)); errors=$((errors + sock))
  if [ -z "$warm_end" ] && [ "$total" -ge "$WARMUP_REQUESTS" ]; then warm_end=$(date +%s); echo "$warm_end $(rss "$GW_PID") 0" >> "$WORK/rss.log"; fi
  printf 'round %3d: %8s requests (%s req/s, p50 %s, p99 %s), total %9d, gateway RSS %s kB\n' "$round" "$n" \
    "$(awk '/Requests\/sec/ {print $2}' "$WORK/round.wrk")" "$(awk '$1 == "50%" {print $2}' "$WORK/round.wrk")" \
    "$(awk '$1 == "99%" {print $2}' "$WORK/round.wrk")" "$total" "$(rss "$GW_PID")"
done
elapsed=$(( $(date +%s) - started ))
kill $SAMPLER_PID 2>/dev/null || true; wait $SAMPLER_PID 2>/dev/null || true; SAMPLER_PID=

echo "total: $total requests in ${elapsed}s, non-2xx $non2xx, socket errors $errors"
curl -s "$GATEWAY/metrics" | grep -E '^deepseek_cache_requests_total|^deepseek_gateway_requests_total' || true
sort -n -s -k1,1 "$WORK/rss.log" > "$WORK/rss.sorted"
awk -v warm_end="$warm_end" -v warm_n="$WARMUP_REQUESTS" '
  { t[NR] = $1; r[NR] = $2; if ($3 > 0) { u0 = u0 ? u0 : $3; u1 = $3 } }
  END {
    first = NR
    for (i = NR; i >= 1; i--) if (t[i] >= warm_end) first = i
    base = r[first]; lo = base; hi = base; n = 0
    for (i = first; i <= NR; i++) { n++; if (r[i] < lo) lo = r[i]; if (r[i] > hi) hi = r[i] }
    printf "RSS samples: %d (every few s); start %d kB; after warm-up (%d requests) %d kB, then over %d samples min %d kB, max %d kB, last %d kB; upstream RSS %d -> %d kB\n", NR, r[1], warm_n, base, n, lo, hi, r[NR], u0, u1
    drift = (hi - base) / base * 100; dip = (base - lo) / base * 100
    flat = (drift <= 10 && dip <= 10)
    printf "RSS after warm-up: %+.1f %% max drift, -%.1f %% min: %s\n", drift, dip, flat ? "FLAT (within 10 %)" : "NOT FLAT"
    exit flat ? 0 : 1
  }' "$WORK/rss.sorted"
