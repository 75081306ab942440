#!/usr/bin/env bash
# Restart of a hub holding N subscribed sockets (default 15,000): kill -9 it, start it again,
# and time how long until every socket has reconnected, re-authenticated and re-subscribed
# (the hub's `hub_subscriptions` gauge back at N). Loopback only; a fresh database per run.
#
#   scripts/bench-restart.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-15000}
PORT=${PORT:-18410}
DB=hub_bench_restart_$$
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB
ulimit -n "$(ulimit -Hn)"
cargo build --release --workspace --bins --quiet

HUB=""
start_hub() {
  HUB_BIND=127.0.0.1:$PORT HUB_ADMIN_TOKEN=bench HUB_SECRET=bench HUB_LOGIN_HASH_KIB=1024 \
    RUST_LOG=warn target/release/dispatch-hub serve >>"/tmp/bench-restart-$$.log" 2>&1 &
  HUB=$!
  until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do sleep 0.02; done
}
subs() { curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^hub_subscriptions /{print int($2)}'; }
now() { date +%s.%N; }
cleanup() {
  [ -n "$HUB" ] && kill "$HUB" 2>/dev/null || true
  [ -n "${LT:-}" ] && kill "$LT" 2>/dev/null || true
  wait 2>/dev/null || true
  psql postgres://postgres@127.0.0.1:5432/postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

start_hub
target/release/loadtest --url "http://127.0.0.1:$PORT" --admin-token bench --connections-only \
  --sockets "$N" --duration 120 --ramp-up 15 --max-reconnects 30 --quiet >/dev/null 2>&1 &
LT=$!
until [ "$(subs)" -ge "$N" ] 2>/dev/null; do sleep 0.2; done
rss_before=$(awk '/VmRSS/{print $2}' "/proc/$HUB/status")
echo "holding $N subscribed sockets (hub RSS $((rss_before / 1024)) MiB); kill -9"
kill -9 "$HUB"; wait "$HUB" 2>/dev/null || true
t0=$(now)
start_hub
t1=$(now)
until [ "$(subs)" -ge "$N" ] 2>/dev/null; do sleep 0.05; done
t2=$(now)
printf 'restart to ready: %.2f s; ready to all %d resubscribed: %.2f s; total %.2f s\n' \
  "$(echo "$t1 - $t0" | bc)" "$N" "$(echo "$t2 - $t1" | bc)" "$(echo "$t2 - $t0" | bc)"
