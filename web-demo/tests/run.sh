#!/usr/bin/env bash
# Browser tests of the web demo against a running hub.
#
#   HUB_URL=http://127.0.0.1:8080 HUB_ADMIN_TOKEN=… web-demo/tests/run.sh
#
# Installs what is missing (the npm dev dependencies, Chromium from the system's packages),
# then runs every tests/*.test.mjs with node's built-in test runner. Screenshots go to
# web-demo/test-artifacts/. CHROMIUM_PATH overrides the browser binary.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "${HUB_URL:-}" ] || [ -z "${HUB_ADMIN_TOKEN:-}" ]; then
  echo "run.sh: set HUB_URL (the hub's base URL) and HUB_ADMIN_TOKEN" >&2
  exit 2
fi

if ! command -v node >/dev/null 2>&1; then
  echo "run.sh: node (20 or newer) is required" >&2
  exit 2
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "run.sh: node 20 or newer is required (found $(node --version))" >&2
  exit 2
fi

export CHROMIUM_PATH="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM_PATH" ]; then
  if [ "$CHROMIUM_PATH" = /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
    echo "run.sh: installing chromium" >&2
    export DEBIAN_FRONTEND=noninteractive
    as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -E "$@"; fi; }
    as_root apt-get update -qq
    as_root apt-get install -y -qq chromium >/dev/null
  else
    echo "run.sh: no browser at $CHROMIUM_PATH" >&2
    exit 2
  fi
fi

if [ ! -d node_modules/playwright-core ]; then
  if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund
  else
    npm install --no-audit --no-fund
  fi
fi

mkdir -p test-artifacts
# Files, not the directory: from Node 22 on, a directory argument to --test is not searched.
exec node --test tests/*.test.mjs
