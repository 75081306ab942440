#!/usr/bin/env bash
# Runs the hub: brings up Postgres if needed, creates and migrates the database, seeds a demo
# city (printing its login codes), then serves REST, WebSockets and the web demo.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-postgres.sh

export HUB_BIND=${HUB_BIND:-127.0.0.1:8080}
export HUB_ADMIN_TOKEN=${HUB_ADMIN_TOKEN:-demo-admin-token}
# A stable secret for the demo, so OTPs survive a restart; set your own in production.
export HUB_SECRET=${HUB_SECRET:-demo-secret-change-me}

cargo build --release --quiet --bin dispatch-hub
bin=target/release/dispatch-hub
"$bin" migrate
"$bin" seed-demo
echo "Admin token (fleet map): $HUB_ADMIN_TOKEN"
echo "Hub: http://$HUB_BIND/"
exec "$bin" serve
