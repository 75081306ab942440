#!/usr/bin/env bash
# Makes sure a NATS server answers at NATS_URL (default nats://127.0.0.1:4222): uses one that
# is already running, else starts `nats-server` (installing the OS package if needed) on that
# address, in the background, logging to a file under the system's temporary directory.
# Sourced by test.sh and run-cluster.sh; exports NATS_URL.
set -euo pipefail

: "${NATS_URL:=nats://127.0.0.1:4222}"
export NATS_URL

nats_hostport() { local r=${NATS_URL#nats://}; echo "${r%%/*}"; }
nats_up() { local hp; hp=$(nats_hostport); (exec 3<>"/dev/tcp/${hp%%:*}/${hp##*:}") 2>/dev/null; }

if ! nats_up; then
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  if ! command -v nats-server >/dev/null 2>&1; then
    echo "Installing nats-server from the OS packages…" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  fi
  hp=$(nats_hostport)
  echo "Starting nats-server on $hp…" >&2
  # setsid: the server outlives this script (other suites and runs reuse it).
  setsid nats-server -a "${hp%%:*}" -p "${hp##*:}" >"${TMPDIR:-/tmp}/dispatch-hub-nats.log" 2>&1 < /dev/null &
  for _ in $(seq 1 50); do nats_up && break; sleep 0.1; done
  nats_up || { echo "nats-server did not come up at $hp" >&2; exit 1; }
fi
