#!/usr/bin/env bash
# Makes PostgreSQL and RabbitMQ reachable on loopback (127.0.0.1:5432 and :5672), idempotently:
# nothing to do when they answer; start them when installed but stopped; install the Debian
# packages when missing and running as root; otherwise say what to run. Also installs the
# build dependency libpq-dev (diesel links libpq), and PgBouncer (scripts/pgbouncer.sh).
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() { # port name seconds
  local deadline=$((SECONDS + $3))
  until listening "$1"; do
    if ((SECONDS >= deadline)); then
      log "$2 did not start listening on 127.0.0.1:$1 within $3 s"
      return 1
    fi
    sleep 0.5
  done
  log "$2 is up on 127.0.0.1:$1"
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  else
    log "need root to run: $*"
    log "run it yourself (e.g. with sudo), then run 'make services' again"
    exit 1
  fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

postgres() {
  if listening 5432; then
    log "PostgreSQL is up on 127.0.0.1:5432"
    return
  fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "PostgreSQL is not installed; installing the Debian package postgresql"
    apt_install postgresql
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for_port 5432 PostgreSQL 60
  # The tests and the demo connect as postgres:postgres over TCP; with trust auth the password
  # is ignored, with Debian's default (scram) it must be set.
  if [ "$(id -u)" -eq 0 ] && command -v runuser >/dev/null; then
    runuser -u postgres -- psql -q -c "ALTER USER postgres PASSWORD 'postgres'" >/dev/null || true
  fi
}

rabbitmq() {
  if listening 5672; then
    log "RabbitMQ is up on 127.0.0.1:5672"
    return
  fi
  if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
    log "RabbitMQ is not installed; installing the Debian package rabbitmq-server"
    apt_install rabbitmq-server
  fi
  log "starting RabbitMQ"
  as_root env PATH="$PATH:/usr/sbin" rabbitmq-server -detached || true
  wait_for_port 5672 RabbitMQ 120
}

build_deps() {
  if ! [ -e /usr/include/postgresql/libpq-fe.h ] && ! pkg-config --exists libpq 2>/dev/null; then
    log "libpq headers missing; installing the Debian package libpq-dev"
    apt_install libpq-dev
  fi
}

build_deps
postgres
rabbitmq
# PgBouncer for the tests that run the planner through a transaction pooler (installed only;
# each test starts its own).
bash "$(dirname "$0")/pgbouncer.sh" >/dev/null
