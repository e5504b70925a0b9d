# One user at a time, for scripts/postgres-pair.sh and scripts/rabbitmq-cluster.sh, which source
# this file: every command that starts or stops a server holds the lock file while it runs,
# waiting for it if need be; a caller that holds it for longer (tests::cluster, for a whole
# test) says so with RP_CLUSTER_LOCK_HELD=<that path>.

# hold_cluster_lock LOCK WHAT ARGS...: unless RP_CLUSTER_LOCK_HELD names LOCK, runs the sourcing
# script again with ARGS holding LOCK, in place of this process; logs (with the script's `log`)
# that it waits when another user of the WHAT holds LOCK.
hold_cluster_lock() {
  local lock=$1 what=$2
  shift 2
  if [ "${RP_CLUSTER_LOCK_HELD:-}" != "$lock" ]; then
    flock -n "$lock" true || log "waiting for another user of the $what (the holder of $lock)"
    # -o: the servers this starts must not inherit the lock and hold it for ever.
    RP_CLUSTER_LOCK_HELD="$lock" exec flock -o "$lock" bash "$0" "$@"
  fi
}
