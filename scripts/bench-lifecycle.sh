#!/usr/bin/env bash
# The lifecycle benchmark of docs/benchmarks.md: 200 shops, 2,000 drivers, 5,000 buyers, orders
# placed at RATE per second for DURATION seconds, every order walked to delivered; RUNS runs,
# each on a fresh database and fresh hub(s). With NODES > 1 the hub runs as a cluster of that
# many nodes on NATS (started if needed) and the harness spreads its sockets and requests over
# them. Prints one line per run (dispatch latency, orders, correctness, hub CPU); each run's
# full report is kept as JSON under OUT (default target/bench).
#
#   scripts/bench-lifecycle.sh RATE [DURATION=60] [RUNS=3] [NODES=1]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:?rate}
DURATION=${2:-60}
RUNS=${3:-3}
NODES=${4:-1}
OUT=${OUT:-target/bench}
BASE_PORT=${BASE_PORT:-18500}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
source scripts/ensure-postgres.sh
[ "$NODES" -gt 1 ] && source scripts/ensure-nats.sh
[ -n "${NO_BUILD:-}" ] || cargo build --release --workspace --bins --quiet

PIDS=()
DB=""
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
  [ -n "$DB" ] && psql postgres://postgres@127.0.0.1:5432/postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  DB=""
}
trap cleanup EXIT

for run in $(seq 1 "$RUNS"); do
  DB=hub_bench_life_$$_$run
  urls=()
  for i in $(seq 1 "$NODES"); do
    port=$((BASE_PORT + i))
    env=(DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB HUB_BIND=127.0.0.1:$port
         HUB_ADMIN_TOKEN=bench HUB_SECRET=bench HUB_LOGIN_HASH_KIB=1024 RUST_LOG=warn
         HUB_SIGNUPS_PER_ADDRESS_H=1000000 HUB_NODE_NAME=node$i)
    # A cluster's nodes share Postgres's 100 connections (each node: its pool and its writer's).
    [ "$NODES" -gt 1 ] && env+=(HUB_NATS_URL=$NATS_URL HUB_CLUSTER=bench$$_$run HUB_DB_MAX_CONNECTIONS=12)
    # The first node migrates (and creates the database) alone.
    env "${env[@]}" target/release/dispatch-hub serve >>"$OUT/hub-$run-$i.log" 2>&1 &
    PIDS+=($!)
    until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do sleep 0.05; done
    urls+=(--url "http://127.0.0.1:$port")
  done
  for i in $(seq 1 "$NODES"); do
    until curl -sf "http://127.0.0.1:$((BASE_PORT + i))/readyz" >/dev/null 2>&1; do sleep 0.05; done
  done
  json="$OUT/life-r$RATE-n$NODES-$run.json"
  target/release/loadtest "${urls[@]}" --admin-token bench \
    --shops 200 --drivers 2000 --buyers 5000 --rate "$RATE" --duration "$DURATION" \
    --ramp-up 10 --drain 10 --hub-pid "${PIDS[0]}" --json "$json" --quiet >/dev/null 2>&1 || true
  python3 - "$json" "$RATE" "$NODES" "$run" <<'PY'
import json, sys
path, rate, nodes, run = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception as e:
    print(f"rate {rate} nodes {nodes} run {run}: no report ({e})"); sys.exit()
d = r["latency"]["dispatch"]
o = r["orders"]
bad = sum(r["correctness"].values())
hub = r.get("hub") or {}
cpu = hub.get("cpu_avg_load_pct")
print(f"rate {rate} nodes {nodes} run {run}: dispatch p50 {d['p50_us']/1000:.1f} p90 {d['p90_us']/1000:.1f} "
      f"p99 {d['p99_us']/1000:.1f} max {d['max_us']/1000:.1f} ms | placed {o['placed']} ({o['placed_per_s']:.0f}/s) "
      f"failed {o['failed']} unfinished {o['unfinished_after_drain']} | correctness {bad} | "
      f"hub(node1) cpu {cpu if cpu is None else round(cpu)}%")
PY
  cleanup
done
