#!/usr/bin/env bash
# `make run`: runs the whole system on this machine with a demo configuration, in the
# foreground: the gateway on :8080, the planner on :8081 (database runner_planner_demo), and a
# demo flavor; the project's fake GitHub on :8083 (github.com cannot be reached from here: the
# fake stands in for it) and the runner manager on :8082, running the fake runner as its exec
# runner command; then it sends a few jobs' webhooks through the gateway. The planner's web
# console is at http://127.0.0.1:8081/console (the admin token logs in; it shows those jobs,
# their deliveries, the manager's runners, and creates GitHub Apps on the fake GitHub).
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins
# Absolute: the manager runs the fake runner by this path (CARGO_TARGET_DIR may be either).
target=$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)

export RUST_LOG=${RUST_LOG:-info}
export RABBITMQ_CONNECT_STRING=${RABBITMQ_CONNECT_STRING:-amqp://guest:guest@127.0.0.1:5672/%2f}
export APP_WEBHOOK_SECRET_VALUE=${APP_WEBHOOK_SECRET_VALUE:-demo-webhook-secret}
export APP_ADMIN_TOKEN_VALUE=${APP_ADMIN_TOKEN_VALUE:-planner_v0_demo_admin_token_001}
database=${DEMO_DATABASE:-runner_planner_demo}
export POSTGRESQL_DB_CONNECT_STRING=${POSTGRESQL_DB_CONNECT_STRING:-postgres://postgres:postgres@127.0.0.1:5432/$database}
# The fixtures are GitHub's documented payloads from 2021-2023: let jobs that old count.
export APP_JOB_MAX_AGE=${APP_JOB_MAX_AGE:-36500d}
gateway_port=${GATEWAY_PORT:-8080}
planner_port=${PLANNER_PORT:-8081}

# The demo database, created once.
admin_url=postgres://postgres:postgres@127.0.0.1:5432/postgres
if ! psql "$admin_url" -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1; then
  psql "$admin_url" -qc "CREATE DATABASE $database"
fi

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait
}
trap cleanup EXIT INT TERM

wait_ready() { # url pid name
  local deadline=$((SECONDS + 60))
  until curl -fsS "$1" >/dev/null 2>&1; do
    if ! kill -0 "$2" 2>/dev/null; then echo "$3 did not start" >&2; exit 1; fi
    if ((SECONDS >= deadline)); then echo "$3 not ready after 60 s" >&2; exit 1; fi
    sleep 0.5
  done
}

APP_PORT=$gateway_port OTEL_EXPORTER_PROMETHEUS_PORT=${GATEWAY_METRICS_PORT:-9464} \
  "$target/gateway" &
pids+=($!)
wait_ready "http://127.0.0.1:$gateway_port/ready" "${pids[-1]}" gateway

fake_github_port=${FAKE_GITHUB_PORT:-8083}
manager_port=${MANAGER_PORT:-8082}
# The console shows the manager's runners (with the manager's own admin token) and creates
# GitHub Apps on the fake GitHub.
manager_admin_token=${APP_MANAGER_ADMIN_TOKEN_VALUE:-demo-manager-admin-token}
APP_PORT=$planner_port OTEL_EXPORTER_PROMETHEUS_PORT=${PLANNER_METRICS_PORT:-9465} \
  APP_CONSOLE_MANAGER_URLS="http://127.0.0.1:$manager_port" \
  APP_CONSOLE_MANAGER_TOKEN_VALUE="$manager_admin_token" \
  APP_CONSOLE_WEBHOOK_URL="http://127.0.0.1:$gateway_port/webhook" \
  APP_CONSOLE_GITHUB_URL="http://127.0.0.1:$fake_github_port" \
  "$target/planner" serve &
pids+=($!)
wait_ready "http://127.0.0.1:$planner_port/health" "${pids[-1]}" planner

auth="Authorization: Bearer $APP_ADMIN_TOKEN_VALUE"
planner="http://127.0.0.1:$planner_port"
curl -sS -o /dev/null -X POST "$planner/api/v1/flavors/demo-k8s" -H "$auth" \
  -H 'Content-Type: application/json' \
  -d '{"platform":"github","labels":["k8s"],"priority":50,"is_disabled":false,"minimum_pressure":0}' || true

# The runner manager. GitHub itself cannot be reached here: the project's fake GitHub (the one
# the tests use) stands in for it, and the fake runner stands in for GitHub's runner application.
demo_dir=$(mktemp -d -t runner-manager-demo.XXXXXX)
"$target/fake-github" --listen "127.0.0.1:$fake_github_port" &
pids+=($!)
deadline=$((SECONDS + 30))
until curl -s -o /dev/null "http://127.0.0.1:$fake_github_port/"; do
  if ((SECONDS >= deadline)); then echo "fake-github did not start" >&2; exit 1; fi
  sleep 0.2
done
curl -sS -o /dev/null -X DELETE "$planner/api/v1/auth/token/demo-manager" -H "$auth" || true
manager_token=$(curl -sS -X POST "$planner/api/v1/auth/token/demo-manager" -H "$auth" |
  grep -o '"token":"[^"]*"' | cut -d'"' -f4)
cat >"$demo_dir/flavors.toml" <<TOML
[[flavor]]
name = "demo-k8s"
max_runners = 3
min_runners = 0
boot_timeout = "2m"
max_lifetime = "1h"
[flavor.backend]
kind = "exec"
command = ["$target/fake-runner"]
stop_grace = "5s"
TOML
# demo_job ID ACTION: the queued.1 fixture (labels self-hosted, k8s) as job ID's ACTION
# webhook, with GitHub's times; prints the file it wrote.
demo_job() {
  local file="$demo_dir/job-$1-$2.json"
  local edits=(-e "0,/\"id\": 12877621891/s//\"id\": $1/"
    -e "0,/\"action\": \"queued\"/s//\"action\": \"$2\"/")
  if [[ $2 != queued ]]; then
    edits+=(-e "0,/\"status\": \"waiting\"/s//\"status\": \"$2\"/"
      -e '0,/"started_at": "2023-04-19T21:12:12Z"/s//"started_at": "2023-04-19T21:12:40Z"/')
  fi
  if [[ $2 == completed ]]; then
    edits+=(-e '0,/"conclusion": null/s//"conclusion": "success"/'
      -e '0,/"completed_at": null/s//"completed_at": "2023-04-19T21:15:02Z"/')
  fi
  sed "${edits[@]}" tests/fixtures/workflow_job/queued.1.json >"$file"
  echo "$file"
}
completed=$(demo_job 12877621891 completed)
APP_PORT=$manager_port OTEL_EXPORTER_PROMETHEUS_PORT=${MANAGER_METRICS_PORT:-9466} \
  APP_PLANNER_URL="$planner" APP_PLANNER_TOKEN_VALUE="$manager_token" APP_MANAGER_ID=demo \
  APP_MANAGER_CONFIG="$demo_dir/flavors.toml" APP_EXEC_STATE_DIR="$demo_dir/state" \
  APP_GITHUB_APP_ID=4242 APP_GITHUB_APP_INSTALLATION_ID=777 \
  APP_GITHUB_APP_PRIVATE_KEY_VALUE="$(cat tests/fixtures/github-app/test-only-private-key.pem)" \
  APP_GITHUB_API_URL="http://127.0.0.1:$fake_github_port" APP_GITHUB_PATH=demo-org \
  APP_RECONCILE_INTERVAL=5s APP_MANAGER_ADMIN_TOKEN_VALUE="$manager_admin_token" \
  "$target/manager" serve &
pids+=($!)
wait_ready "http://127.0.0.1:$manager_port/health" "${pids[-1]}" manager

# Demo data for the console, through the gateway as GitHub sends it: a queued job (its delivery
# sent twice: a duplicate), one in progress and one completed.
send() { # file [delivery]
  local answer
  answer=$(GATEWAY_URL="http://127.0.0.1:$gateway_port" scripts/send-webhook.sh "$1" workflow_job "${2:-}")
  if [[ $answer != *"HTTP 200"* ]]; then echo "the gateway refused $1: $answer" >&2; exit 1; fi
}
repeated=$(cat /proc/sys/kernel/random/uuid)
queued=$(demo_job 12877621891 queued)
send "$queued" "$repeated"
send "$queued" "$repeated"
for action in queued in_progress; do send "$(demo_job 12877621892 $action)"; done
for action in queued in_progress completed; do send "$(demo_job 12877621893 $action)"; done
deadline=$((SECONDS + 30))
until curl -fsS --max-time 5 -H "$auth" "$planner/api/v1/jobs/github/12877621893" 2>/dev/null |
  grep -q '"status":"completed"'; do
  if ((SECONDS >= deadline)); then echo "the planner did not apply the demo jobs" >&2; exit 1; fi
  sleep 0.5
done

cat <<TXT

runner-planner demo is running.
  gateway   http://127.0.0.1:$gateway_port   webhook secret: $APP_WEBHOOK_SECRET_VALUE
  planner   $planner   admin token: $APP_ADMIN_TOKEN_VALUE   flavor: demo-k8s (labels: k8s)

Web console: $planner/console (log in with the admin token above). Its demo data, sent
through the gateway: job 12877621891 queued (its delivery sent twice: the deliveries page
counts the duplicate), 12877621892 in progress, 12877621893 completed; the open ones' pressure
starts runners.

Send a signed workflow_job webhook (a queued job with labels self-hosted, k8s):
  GATEWAY_URL=http://127.0.0.1:$gateway_port scripts/send-webhook.sh tests/fixtures/workflow_job/queued.1.json

Then look at the planner:
  curl -H '$auth' $planner/api/v1/jobs/github
  curl -H '$auth' $planner/api/v1/flavors/_/pressure
  curl -N -H '$auth' '$planner/api/v1/flavors/_/pressure?stream=true'

The runner manager (http://127.0.0.1:$manager_port) follows that pressure: a queued job starts
a runner process (the fake runner, registered with the FAKE GitHub on :$fake_github_port, which
stands in for github.com), and completing the job removes it:
  curl -H 'Authorization: Bearer $manager_token' http://127.0.0.1:$manager_port/api/v1/runners
  ps -o pid,args -C fake-runner
  GATEWAY_URL=http://127.0.0.1:$gateway_port scripts/send-webhook.sh $completed

Metrics: http://127.0.0.1:${GATEWAY_METRICS_PORT:-9464}/metrics (gateway), http://127.0.0.1:${PLANNER_METRICS_PORT:-9465}/metrics (planner), http://127.0.0.1:${MANAGER_METRICS_PORT:-9466}/metrics (manager).
Ctrl-C stops the demo.
TXT
wait
