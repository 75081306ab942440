#!/usr/bin/env bash
# Sockets held by a cluster: NODES nodes (default 3) on one Postgres and NATS, PER_NODE
# authenticated, subscribed buyer sockets each (default 19,000: 57,000 in all), opened by the
# harness split over NODES processes (one process may open only 20,000 files). Prints each
# node's socket count, RSS and RSS per socket once every socket is up, and the harness's merged
# report. Loopback only; a fresh database.
#
#   scripts/bench-cluster-sockets.sh [PER_NODE=19000] [NODES=3]
set -euo pipefail
cd "$(dirname "$0")/.."
PER_NODE=${1:-19000}
NODES=${2:-3}
TOTAL=$((PER_NODE * NODES))
BASE_PORT=${BASE_PORT:-18600}
OUT=${OUT:-target/bench}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
source scripts/ensure-postgres.sh
source scripts/ensure-nats.sh
[ -n "${NO_BUILD:-}" ] || cargo build --release --workspace --bins --quiet
DB=hub_bench_sockets_$$
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql postgres://postgres@127.0.0.1:5432/postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

urls=()
for i in $(seq 1 "$NODES"); do
  port=$((BASE_PORT + i))
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB HUB_BIND=127.0.0.1:$port \
    HUB_ADMIN_TOKEN=bench HUB_SECRET=bench RUST_LOG=warn HUB_NODE_NAME=node$i \
    HUB_NATS_URL=$NATS_URL HUB_CLUSTER=sockets$$ HUB_DB_MAX_CONNECTIONS=12 \
    HUB_MAX_CONNECTIONS=$((PER_NODE + 500)) HUB_MAX_UNAUTHENTICATED=4096 \
    target/release/dispatch-hub serve >>"$OUT/sockets-node$i.log" 2>&1 &
  PIDS+=($!)
  until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do sleep 0.05; done
  urls+=(--url "http://127.0.0.1:$port")
done
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
base_rss=()
for i in $(seq 1 "$NODES"); do base_rss+=("$(rss "${PIDS[$((i - 1))]}")"); done
subs() { # the node's open sockets (0 before its first)
  local n
  n=$(curl -s "http://127.0.0.1:$1/metrics" | awk '/^hub_connections /{print int($2)}')
  echo "${n:-0}"
}

target/release/loadtest "${urls[@]}" --admin-token bench --connections-only --sockets "$TOTAL" \
  --duration 60 --ramp-up 30 --processes "$NODES" --max-reconnects 30 \
  --json "$OUT/sockets-$TOTAL.json" >"$OUT/sockets-$TOTAL.txt" 2>&1 &
LT=$!
# Wait until every node holds its share (or the harness ends), then read each node.
for _ in $(seq 1 600); do
  n=0
  for i in $(seq 1 "$NODES"); do n=$((n + $(subs $((BASE_PORT + i))))); done
  [ "$n" -ge "$TOTAL" ] && break
  kill -0 "$LT" 2>/dev/null || break
  sleep 1
done
sleep 5
echo "sockets held: $n of $TOTAL"
for i in $(seq 1 "$NODES"); do
  pid=${PIDS[$((i - 1))]}
  s=$(subs $((BASE_PORT + i)))
  r=$(rss "$pid")
  [ "$s" -gt 0 ] || s=1
  printf 'node%d: %d sockets, RSS %d MiB (baseline %d MiB), %.1f KiB per socket over the baseline\n' \
    "$i" "$s" $((r / 1024)) $((${base_rss[$((i - 1))]} / 1024)) \
    "$(echo "($r - ${base_rss[$((i - 1))]}) / $s" | bc -l)"
done
wait "$LT" || true
tail -40 "$OUT/sockets-$TOTAL.txt"
