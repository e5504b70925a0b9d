#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on this machine for the cluster tests and benchmarks, beside (and
# never touching) the shared broker on 127.0.0.1:5672.
#
#   scripts/rabbitmq-cluster.sh up           start the nodes that are down, join them (idempotent)
#   scripts/rabbitmq-cluster.sh stop N       stop node N (1-3) as a crash would end it
#   scripts/rabbitmq-cluster.sh start N      start node N again; it rejoins the cluster
#   scripts/rabbitmq-cluster.sh urls         the nodes' AMQP URLs, comma-separated
#   scripts/rabbitmq-cluster.sh leader Q     the node (1-3) that leads quorum queue Q
#   scripts/rabbitmq-cluster.sh down         stop every node and delete the data
#   scripts/rabbitmq-cluster.sh lock-path    the lock file of the cluster's one user (below)
#
# Node N is rp-cluster-N@localhost, AMQP on 127.0.0.1:$((BASE_PORT + N)) (5700 + N), Erlang
# distribution on 25700 + N, data and logs under $RABBITMQ_CLUSTER_DIR (default
# /tmp/runner-planner-rabbitmq-cluster), one Erlang cookie of its own. No plugins (no
# management UI). Runs as root (the Debian wrapper switches users; this calls the scripts
# underneath with its own HOME, so the cookie and data stay in the cluster directory).
#
# One user at a time: test runs of several checkouts on one machine share the cluster, and one
# run's `up` or node stop in the middle of another's node loss takes the majority of its queues
# away (or restarts the node it stopped). Every command that starts or stops nodes holds the
# lock file $RABBITMQ_CLUSTER_DIR.lock while it runs, waiting for it if need be; a caller that
# holds it for longer (tests::cluster, for a whole test) says so with
# RP_CLUSTER_LOCK_HELD=<that path>.
set -euo pipefail

DIR=${RABBITMQ_CLUSTER_DIR:-/tmp/runner-planner-rabbitmq-cluster}
LOCK="$DIR.lock"
BASE_PORT=${RABBITMQ_CLUSTER_BASE_PORT:-5700}
DIST_BASE_PORT=${RABBITMQ_CLUSTER_DIST_BASE_PORT:-25700}
NODES=(1 2 3)
SBIN=/usr/lib/rabbitmq/bin

log() { printf 'rabbitmq-cluster: %s\n' "$*" >&2; }

# shellcheck source=lib/cluster-lock.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/cluster-lock.sh"
case "${1:-}" in
up | stop | start | down) hold_cluster_lock "$LOCK" cluster "$@" ;;
esac

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

node_name() { echo "rp-cluster-$1@localhost"; }
node_port() { echo $((BASE_PORT + $1)); }

# The environment of node $1's server and of the CLI tools talking to it.
node_env() {
  local n=$1 home="$DIR/node$1"
  echo HOME="$DIR" \
    RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf" \
    RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(node_port "$n")" \
    RABBITMQ_DIST_PORT=$((DIST_BASE_PORT + n)) \
    RABBITMQ_CONFIG_FILE="$home/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$home/mnesia" \
    RABBITMQ_LOG_BASE="$home/log" \
    RABBITMQ_PID_FILE="$home/rabbit.pid" \
    RABBITMQ_PLUGINS_EXPAND_DIR="$home/plugins-expand"
}

ctl() { # node, rabbitmqctl arguments...
  local n=$1
  shift
  env $(node_env "$n") "$SBIN/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

prepare() {
  mkdir -p "$DIR"
  if [ ! -s "$DIR/.erlang.cookie" ]; then
    # One cookie for the three nodes and the CLI tools (HOME=$DIR), not the shared broker's.
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/.erlang.cookie"
    chmod 400 "$DIR/.erlang.cookie"
  fi
  # Read instead of /etc/rabbitmq/rabbitmq-env.conf (which names the shared node).
  printf 'ERL_EPMD_ADDRESS=127.0.0.1\nexport ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n' >"$DIR/rabbitmq-env.conf"
  printf '[].\n' >"$DIR/enabled_plugins"
  for n in "${NODES[@]}"; do
    mkdir -p "$DIR/node$n/log" "$DIR/node$n/mnesia"
    cat >"$DIR/node$n/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(node_port "$n")
loopback_users = none
# A stopped peer is noticed within seconds, not the default minute.
net_ticktime = 10
# The machine is shared: do not refuse publishes because other processes use the memory/disk.
vm_memory_high_watermark.relative = 0.8
disk_free_limit.absolute = 50MB
EOF
  done
}

wait_for() { # description, seconds, command...
  local what=$1 deadline=$((SECONDS + $2))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "$what: not within the time allowed"
      return 1
    fi
    sleep 0.5
  done
}

# Starts node $1 unless it is running (or still booting); returns at once.
launch_node() {
  local n=$1
  local pid
  pid=$(cat "$DIR/node$n/rabbit.pid" 2>/dev/null || true)
  if listening "$(node_port "$n")" || { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }; then
    return
  fi
  log "starting $(node_name "$n") on 127.0.0.1:$(node_port "$n")"
  env $(node_env "$n") setsid "$SBIN/rabbitmq-server" >"$DIR/node$n/log/stdout.log" 2>&1 </dev/null &
}

# Waits until node $1 has booted and listens. After a crash of every node, each waits for the
# others' tables: they must be launched together, then awaited.
await_node() {
  local n=$1
  if listening "$(node_port "$n")"; then
    return
  fi
  wait_for "$(node_name "$n") to boot (if it never does: $0 down, then up)" 180 \
    ctl "$n" await_startup --timeout 5
  wait_for "$(node_name "$n") to listen" 30 listening "$(node_port "$n")"
}

start_node() {
  launch_node "$1"
  await_node "$1"
}

stop_node() {
  local n=$1 pid
  pid=$(cat "$DIR/node$n/rabbit.pid" 2>/dev/null || true)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    return
  fi
  # A crash, not a polite shutdown: connections and Raft members vanish at once.
  kill -KILL "$pid"
  wait_for "$(node_name "$n") to stop" 30 bash -c "! kill -0 $pid"
  rm -f "$DIR/node$n/rabbit.pid"
  log "stopped $(node_name "$n")"
}

# The members of node $1's cluster, running or not: a member that merely sees another one down
# is still in the cluster, and resetting it would throw away its copy of every quorum queue.
cluster_nodes() { ctl "$1" eval 'rabbit_nodes:all().' --timeout 10 2>/dev/null || true; }

join() {
  local n=$1 first
  first=$(node_name 1)
  if cluster_nodes "$n" | grep -q "$first"; then
    return
  fi
  log "joining $(node_name "$n") to $first"
  ctl "$n" stop_app >/dev/null 2>&1
  ctl "$n" reset >/dev/null 2>&1
  ctl "$n" join_cluster "$first" >/dev/null 2>&1
  ctl "$n" start_app >/dev/null 2>&1
}

up() {
  prepare
  for n in "${NODES[@]}"; do launch_node "$n"; done
  for n in "${NODES[@]}"; do await_node "$n"; done
  for n in 2 3; do join "$n"; done
  wait_for "all three nodes running together" 60 \
    bash -c "[ \$(env $(node_env 1) $SBIN/rabbitmqctl -n $(node_name 1) eval 'length(rabbit_nodes:all_running()).' --timeout 10) = 3 ]"
  log "up: $(urls)"
}

urls() {
  local out=() n
  for n in "${NODES[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$(node_port "$n")/%2f"); done
  (IFS=,; echo "${out[*]}")
}

leader() { # queue
  local n line
  for n in "${NODES[@]}"; do
    if listening "$(node_port "$n")"; then
      line=$(ctl "$n" list_queues name leader --no-table-headers --quiet --timeout 10 | awk -v q="$1" '$1 == q { print $2 }')
      if [ -n "$line" ]; then
        echo "${line}" | sed -E 's/^rp-cluster-([0-9]+)@.*/\1/'
        return
      fi
    fi
  done
  log "no running node knows a queue named $1"
  return 1
}

down() {
  for n in "${NODES[@]}"; do stop_node "$n"; done
  rm -rf "$DIR"
}

case "${1:-}" in
up) up ;;
stop) stop_node "$2" ;;
start) prepare; start_node "$2" ;;
urls) urls ;;
leader) leader "$2" ;;
down) down ;;
lock-path) echo "$LOCK" ;;
*)
  sed -n '2,11p' "$0" >&2
  exit 2
  ;;
esac
