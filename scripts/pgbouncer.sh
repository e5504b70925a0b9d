#!/usr/bin/env bash
# Installs PgBouncer (the Debian package pgbouncer) when it is missing, idempotently: the tests
# that run the planner through a transaction pooler start their own pgbouncer processes, each
# on its own port with its own configuration directory; nothing here starts or configures one.
# Prints the path of the pgbouncer binary.
set -euo pipefail

log() { printf 'pgbouncer: %s\n' "$*" >&2; }

find_binary() {
  command -v pgbouncer 2>/dev/null || { [ -x /usr/sbin/pgbouncer ] && echo /usr/sbin/pgbouncer; }
}

if binary=$(find_binary); then
  echo "$binary"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  log "pgbouncer is not installed and installing it needs root: run"
  log "  sudo apt-get install pgbouncer"
  exit 1
fi
log "installing the Debian package pgbouncer"
env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null 2>&1 || {
  env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
}
# The package may start its own service (port 6432); the tests do not use it.
if command -v service >/dev/null 2>&1; then
  service pgbouncer stop >/dev/null 2>&1 || true
fi
find_binary || { log "installed, yet no pgbouncer binary found"; exit 1; }
