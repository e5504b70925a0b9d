#!/usr/bin/env bash
# A PostgreSQL primary and a synchronous streaming standby on this machine, for the failover
# tests, beside (and never touching) the shared server on 127.0.0.1:5432.
#
#   scripts/postgres-pair.sh up        a primary on 5441 with a synchronous standby on 5442
#                                      (idempotent: rebuilt from scratch unless it is that)
#   scripts/postgres-pair.sh url       a connection string naming both, read-write sessions only
#   scripts/postgres-pair.sh crash     stop the primary as a crash would (immediate shutdown)
#   scripts/postgres-pair.sh promote   promote the standby: it becomes the primary, alone
#   scripts/postgres-pair.sh down      stop both and delete the data
#   scripts/postgres-pair.sh lock-path the lock file of the pair's one user (below)
#
# Node a is 127.0.0.1:$PG_PAIR_BASE_PORT+1 (5441), node b +2 (5442); data under $PG_PAIR_DIR
# (default /tmp/runner-planner-postgres-pair). Trust authentication on loopback, as the shared
# test server. The binaries are /usr/lib/postgresql/15/bin (PG_BIN); the servers run as the
# postgres user when this runs as root.
#
# One user at a time, as scripts/rabbitmq-cluster.sh: another test run's `up` rebuilds a pair
# whose standby a failover just promoted. Every command that starts or stops a server holds
# $PG_PAIR_DIR.lock while it runs; a caller that holds it for longer says so with
# RP_CLUSTER_LOCK_HELD=<that path>.
set -euo pipefail

DIR=${PG_PAIR_DIR:-/tmp/runner-planner-postgres-pair}
LOCK="$DIR.lock"
BASE_PORT=${PG_PAIR_BASE_PORT:-5440}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PORT_A=$((BASE_PORT + 1))
PORT_B=$((BASE_PORT + 2))

log() { printf 'postgres-pair: %s\n' "$*" >&2; }

# shellcheck source=lib/cluster-lock.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/cluster-lock.sh"
case "${1:-}" in
up | crash | promote | down) hold_cluster_lock "$LOCK" pair "$@" ;;
esac

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg() { as_postgres "$PG_BIN/$1" "${@:2}"; }

sql() { # port, statement: one value
  as_postgres psql -X -A -t -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2" 2>/dev/null
}

running() { pg pg_ctl -D "$DIR/$1" status >/dev/null 2>&1; }

healthy() {
  [ "$(sql "$PORT_A" 'SELECT pg_is_in_recovery()')" = f ] &&
    [ "$(sql "$PORT_B" 'SELECT pg_is_in_recovery()')" = t ] &&
    [ "$(sql "$PORT_A" "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")" = 1 ]
}

stop_all() {
  for node in a b; do
    if [ -d "$DIR/$node" ] && running "$node"; then
      pg pg_ctl -D "$DIR/$node" -m immediate -w stop >/dev/null
    fi
  done
}

start() { # node
  pg pg_ctl -D "$DIR/$1" -l "$DIR/$1.log" -w -t 60 start >/dev/null
}

build() {
  stop_all
  rm -rf "$DIR"
  mkdir -p "$DIR"
  [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$DIR"
  log "initdb of the primary (127.0.0.1:$PORT_A)"
  pg initdb -D "$DIR/a" -U postgres --auth=trust --no-sync >/dev/null
  cat >>"$DIR/a/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT_A
unix_socket_directories = '$DIR'
wal_level = replica
max_wal_senders = 4
# A commit returns once the standby has flushed it: a failover loses no committed transaction.
synchronous_standby_names = '*'
synchronous_commit = on
fsync = on
shared_buffers = 32MB
max_connections = 60
EOF
  printf 'local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n' \
    >"$DIR/a/pg_hba.conf"
  start a
  log "pg_basebackup of the standby (127.0.0.1:$PORT_B)"
  pg pg_basebackup -h 127.0.0.1 -p "$PORT_A" -U postgres -D "$DIR/b" -R -X stream >/dev/null
  cat >>"$DIR/b/postgresql.conf" <<EOF
port = $PORT_B
primary_conninfo = 'host=127.0.0.1 port=$PORT_A user=postgres application_name=b'
EOF
  start b
}

up() {
  if healthy; then
    log "up: $(url)"
    return
  fi
  build
  local deadline=$((SECONDS + 60))
  until healthy; do
    if ((SECONDS >= deadline)); then
      log "the standby did not become synchronous within 60 s (see $DIR/*.log)"
      exit 1
    fi
    sleep 0.5
  done
  log "up: $(url)"
}

url() {
  echo "postgresql://postgres:postgres@127.0.0.1:$PORT_A,127.0.0.1:$PORT_B/postgres?target_session_attrs=read-write"
}

crash() {
  pg pg_ctl -D "$DIR/a" -m immediate -w stop >/dev/null
  log "primary (127.0.0.1:$PORT_A) stopped"
}

promote() {
  pg pg_ctl -D "$DIR/b" -w promote >/dev/null
  # Alone now: with synchronous_standby_names still set, every commit would wait forever for a
  # standby. Running without one is the price of staying available (docs/scaling.md).
  sql "$PORT_B" "ALTER SYSTEM SET synchronous_standby_names = ''" >/dev/null
  sql "$PORT_B" "SELECT pg_reload_conf()" >/dev/null
  log "standby (127.0.0.1:$PORT_B) promoted"
}

down() {
  stop_all
  rm -rf "$DIR"
}

case "${1:-}" in
up) up ;;
url) url ;;
crash) crash ;;
promote) promote ;;
down) down ;;
lock-path) echo "$LOCK" ;;
*)
  sed -n '2,13p' "$0" >&2
  exit 2
  ;;
esac
