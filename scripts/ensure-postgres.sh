#!/usr/bin/env bash
# Makes sure a Postgres answers at DATABASE_URL's host and port (default 127.0.0.1:5432):
# uses one that is already running, else starts the installed cluster, else installs one from
# the OS packages (Debian/Ubuntu) and starts it with trust auth on loopback.
# Sourced by run-hub.sh and test.sh; exports DATABASE_URL.
set -euo pipefail

: "${DATABASE_URL:=postgres://postgres@127.0.0.1:5432/dispatch_hub}"
export DATABASE_URL

pg_host() { local rest=${DATABASE_URL#*://}; rest=${rest#*@}; rest=${rest%%/*}; echo "${rest%%:*}"; }
pg_port() { local rest=${DATABASE_URL#*://}; rest=${rest#*@}; rest=${rest%%/*}; [[ $rest == *:* ]] && echo "${rest##*:}" || echo 5432; }

is_up() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$(pg_host)" -p "$(pg_port)"
  else
    (exec 3<>"/dev/tcp/$(pg_host)/$(pg_port)") 2>/dev/null
  fi
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

start_installed_cluster() {
  command -v pg_ctlcluster >/dev/null 2>&1 || return 1
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
  [ -n "$version" ] || return 1
  echo "Starting the installed PostgreSQL $version cluster…" >&2
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || return 1
}

install_postgres() {
  command -v apt-get >/dev/null 2>&1 || { echo "No Postgres at $(pg_host):$(pg_port) and no apt-get to install one; set DATABASE_URL." >&2; return 1; }
  echo "Installing PostgreSQL from the OS packages…" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  local version hba
  version=$(ls /etc/postgresql | sort -V | tail -1)
  hba=/etc/postgresql/$version/main/pg_hba.conf
  # A local development cluster: trust connections from this machine only.
  as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || as_root pg_ctlcluster "$version" main restart
}

if ! is_up; then
  start_installed_cluster || install_postgres
  for _ in $(seq 1 30); do is_up && break; sleep 1; done
  is_up || { echo "Postgres did not come up at $(pg_host):$(pg_port)" >&2; exit 1; }
fi
