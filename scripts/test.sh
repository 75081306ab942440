#!/usr/bin/env bash
# Runs every test: formatting and lints, the Rust suites (unit, REST, sockets, dispatcher,
# crash recovery) against a real Postgres, a load-test smoke run against a real hub, and the
# browser tests in headless Chromium. Brings up Postgres and installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
# Tests create one database per test next to this one.
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
source scripts/ensure-postgres.sh
# The cluster suite's nodes talk over NATS.
source scripts/ensure-nats.sh
export HUB_TEST_NATS_URL=$NATS_URL
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== Rust test suites"
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked --quiet
fi
cargo nextest run --workspace --no-fail-fast

# A hub of our own for the black-box suites: fresh database, free port. Only bash is needed
# here (no psql, curl or python), so the suite runs wherever the hub builds.
SUITE_DBS=()
start_hub() { # name port — the hub creates its (fresh, per-run) database itself
  local name="$1_$$"
  SUITE_DBS+=("$name")
  DATABASE_URL=${DATABASE_URL%/*}/$name HUB_BIND=127.0.0.1:$2 HUB_ADMIN_TOKEN=suite-admin \
    HUB_SECRET=suite-secret HUB_LOGIN_HASH_KIB=256 RUST_LOG=warn target/debug/dispatch-hub serve &
  HUB_PID=$!
  for _ in $(seq 1 100); do
    ready "$2" && return 0
    sleep 0.2
  done
  echo "hub did not start" >&2; return 1
}
ready() { # port: GET /readyz answers 200
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    read -r line <&3 || exit 1
    [[ $line == *" 200 "* ]]
  ) 2>/dev/null
}
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000)) # below the ephemeral range (32768–60999), which outgoing connections use
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
cleanup() {
  if [ -n "${HUB_PID:-}" ] && kill "$HUB_PID" 2>/dev/null; then
    wait "$HUB_PID" 2>/dev/null || true
  fi
  if command -v psql >/dev/null 2>&1; then # best effort: leave no suite databases behind
    for db in "${SUITE_DBS[@]}"; do
      psql "$DATABASE_URL" -qtc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
  fi
  return 0
}
trap cleanup EXIT

echo "== load-test smoke run"
cargo build --workspace --quiet --bins
PORT=$(free_port)
start_hub hub_suite_load "$PORT"
target/debug/loadtest --smoke --url "http://127.0.0.1:$PORT" --admin-token suite-admin --hub-pid "$HUB_PID" --quiet
kill "$HUB_PID"; wait "$HUB_PID" 2>/dev/null || true

echo "== browser tests"
PORT=$(free_port)
start_hub hub_suite_web "$PORT"
HUB_URL="http://127.0.0.1:$PORT" HUB_ADMIN_TOKEN=suite-admin bash web-demo/tests/run.sh
kill "$HUB_PID"; wait "$HUB_PID" 2>/dev/null || true
HUB_PID=

echo "== cluster smoke: three nodes behind HAProxy, the load-test smoke and the browser tests through it"
PORT=$(free_port)
NODE_PORT=$(free_port)
SUITE_DBS+=("hub_suite_cluster_$$")
CLUSTER_DIR=$(mktemp -d)
DATABASE_URL=${DATABASE_URL%/*}/hub_suite_cluster_$$ HUB_BIN=target/debug/dispatch-hub \
  HUB_BIND=127.0.0.1:$PORT FIRST_NODE_PORT=$NODE_PORT HUB_CLUSTER=suite$$ \
  HUB_ADMIN_TOKEN=suite-admin HUB_SECRET=suite-secret HUB_LOGIN_HASH_KIB=256 RUST_LOG=warn \
  CLUSTER_DIR=$CLUSTER_DIR ./scripts/run-cluster.sh >"$CLUSTER_DIR/run.log" 2>&1 &
HUB_PID=$!
up=0
for _ in $(seq 1 150); do
  ready "$PORT" && { up=1; break; }
  sleep 0.2
done
[ "$up" = 1 ] || { echo "cluster did not come up" >&2; cat "$CLUSTER_DIR"/*.log >&2; exit 1; }
target/debug/loadtest --smoke --url "http://127.0.0.1:$PORT" --admin-token suite-admin --quiet
HUB_URL="http://127.0.0.1:$PORT" HUB_ADMIN_TOKEN=suite-admin bash web-demo/tests/run.sh
