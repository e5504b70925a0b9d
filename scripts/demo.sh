#!/usr/bin/env bash
# `make run`: runs the whole system on this machine with a demo configuration, in the
# foreground: the gateway on :8080, the planner on :8081 (database runner_planner_demo), and a
# demo flavor. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins
target=${CARGO_TARGET_DIR:-target}/debug

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

APP_PORT=$planner_port OTEL_EXPORTER_PROMETHEUS_PORT=${PLANNER_METRICS_PORT:-9465} \
  "$target/planner" serve &
pids+=($!)
wait_ready "http://127.0.0.1:$planner_port/health" "${pids[-1]}" planner

auth="Authorization: Bearer $APP_ADMIN_TOKEN_VALUE"
planner="http://127.0.0.1:$planner_port"
curl -sS -o /dev/null -X POST "$planner/api/v1/flavors/demo-k8s" -H "$auth" \
  -H 'Content-Type: application/json' \
  -d '{"platform":"github","labels":["k8s"],"priority":50,"is_disabled":false,"minimum_pressure":0}' || true

cat <<TXT

runner-planner demo is running.
  gateway   http://127.0.0.1:$gateway_port   webhook secret: $APP_WEBHOOK_SECRET_VALUE
  planner   $planner   admin token: $APP_ADMIN_TOKEN_VALUE   flavor: demo-k8s (labels: k8s)

Send a signed workflow_job webhook (a queued job with labels self-hosted, k8s):
  GATEWAY_URL=http://127.0.0.1:$gateway_port scripts/send-webhook.sh tests/fixtures/workflow_job/queued.1.json

Then look at the planner:
  curl -H '$auth' $planner/api/v1/jobs/github
  curl -H '$auth' $planner/api/v1/flavors/_/pressure
  curl -N -H '$auth' '$planner/api/v1/flavors/_/pressure?stream=true'

Metrics: http://127.0.0.1:${GATEWAY_METRICS_PORT:-9464}/metrics (gateway), http://127.0.0.1:${PLANNER_METRICS_PORT:-9465}/metrics (planner).
Ctrl-C stops the demo.
TXT
wait
