#!/usr/bin/env bash
# Runs every test: formatting and lints, the Rust suites (unit, REST, sockets, dispatcher,
# crash recovery) against a real Postgres, a load-test smoke run against a real hub, and the
# browser tests in headless Chromium. Brings up Postgres and installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
# Tests create one database per test next to this one.
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
source scripts/ensure-postgres.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== Rust test suites"
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked --quiet
fi
cargo nextest run --workspace --no-fail-fast

# A hub of our own for the black-box suites: fresh database, free port.
start_hub() { # name port
  local db_url=${DATABASE_URL%/*}/$1
  psql "$DATABASE_URL" -qtc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null
  DATABASE_URL=$db_url HUB_BIND=127.0.0.1:$2 HUB_ADMIN_TOKEN=suite-admin HUB_SECRET=suite-secret \
    HUB_LOGIN_HASH_KIB=256 RUST_LOG=warn target/debug/dispatch-hub serve &
  HUB_PID=$!
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "hub did not start" >&2; return 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cleanup() { [ -n "${HUB_PID:-}" ] && kill "$HUB_PID" 2>/dev/null || true; }
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
