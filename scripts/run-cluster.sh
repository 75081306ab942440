#!/usr/bin/env bash
# Runs the hub as a cluster on this machine: NATS (started, or installed from the OS packages,
# if none runs), three hub nodes on one Postgres, and HAProxy in front of them on one URL
# (HUB_BIND, default 127.0.0.1:8080), so the web demo works through it unchanged.
# Ctrl-C stops the nodes and the load balancer (NATS and Postgres keep running).
#
#   NODES=3 HUB_BIND=127.0.0.1:8080 FIRST_NODE_PORT=8081 ./scripts/run-cluster.sh
#
# HUB_BIN=path uses an already built binary instead of building the release one; the nodes'
# and HAProxy's logs and the generated haproxy.cfg go to CLUSTER_DIR (default target/cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-postgres.sh
source scripts/ensure-nats.sh

NODES=${NODES:-3}
FIRST_NODE_PORT=${FIRST_NODE_PORT:-8081}
export HUB_BIND=${HUB_BIND:-127.0.0.1:8080}
export HUB_ADMIN_TOKEN=${HUB_ADMIN_TOKEN:-demo-admin-token}
export HUB_SECRET=${HUB_SECRET:-demo-secret-change-me}
export HUB_NATS_URL=$NATS_URL
export HUB_CLUSTER=${HUB_CLUSTER:-hub}
# Each node opens up to twice this many Postgres connections (its pool and its writer's), plus
# two of its own (the lease and the health probe): keep NODES of them under Postgres's
# max_connections (100 by default).
export HUB_DB_MAX_CONNECTIONS=${HUB_DB_MAX_CONNECTIONS:-12}
# HAProxy reaches the nodes from this address and appends the client's to X-Forwarded-For;
# the nodes believe that header from it alone (login and sign-up limits are per client).
PROXY_SOURCE=127.0.0.2
export HUB_TRUSTED_PROXIES=$PROXY_SOURCE

if ! command -v haproxy >/dev/null 2>&1; then
  echo "Installing HAProxy from the OS packages…" >&2
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
fi

if [ -n "${HUB_BIN:-}" ]; then
  bin=$HUB_BIN
else
  cargo build --release --quiet --bin dispatch-hub
  bin=target/release/dispatch-hub
fi
"$bin" migrate
"$bin" seed-demo

dir=${CLUSTER_DIR:-target/cluster}
# Every socket is a file for a node, and two for HAProxy (client side and node side).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
maxconn=$(( ($(ulimit -n) - 200) / 2 ))
[ "$maxconn" -gt 100000 ] && maxconn=100000
mkdir -p "$dir"
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
# Ctrl-C or a TERM is the normal way to stop it: clean up and exit 0.
trap 'stop; exit 0' INT TERM

servers=""
for i in $(seq 1 "$NODES"); do
  port=$((FIRST_NODE_PORT + i - 1))
  HUB_BIND=127.0.0.1:$port HUB_NODE_NAME=node$i "$bin" serve >"$dir/node$i.log" 2>&1 &
  pids+=($!)
  servers+="    server node$i 127.0.0.1:$port source $PROXY_SOURCE check inter 1s fall 2 rise 1"$'\n'
done

# WebSockets are long-lived: least connections spreads them, `timeout tunnel` keeps them open,
# and /readyz takes a node out while it cannot reach Postgres or NATS.
cat >"$dir/haproxy.cfg" <<CFG
global
    maxconn $maxconn
defaults
    mode http
    timeout connect 2s
    timeout client 65s
    timeout server 65s
    timeout tunnel 1h
    option http-server-close
    option forwardfor
frontend hub
    bind $HUB_BIND
    default_backend nodes
backend nodes
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
$servers
CFG
haproxy -f "$dir/haproxy.cfg" -db >"$dir/haproxy.log" 2>&1 &
pids+=($!)

echo "Cluster: $NODES nodes (logs in $dir/), NATS at $NATS_URL"
echo "Admin token (fleet map, GET /api/admin/cluster): $HUB_ADMIN_TOKEN"
echo "Hub: http://$HUB_BIND/"
wait -n "${pids[@]}"
