#!/usr/bin/env bash
# `make run`: runs the system on this machine with a demo configuration, in the foreground.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins
target=${CARGO_TARGET_DIR:-target}/debug

export RUST_LOG=${RUST_LOG:-info}
export RABBITMQ_CONNECT_STRING=${RABBITMQ_CONNECT_STRING:-amqp://guest:guest@127.0.0.1:5672/%2f}
export APP_WEBHOOK_SECRET_VALUE=${APP_WEBHOOK_SECRET_VALUE:-demo-webhook-secret}
gateway_port=${GATEWAY_PORT:-8080}

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait
}
trap cleanup EXIT INT TERM

APP_PORT=$gateway_port "$target/gateway" &
pids+=($!)

until curl -fsS "http://127.0.0.1:$gateway_port/ready" >/dev/null 2>&1; do
  if ! kill -0 "${pids[0]}" 2>/dev/null; then echo "the gateway did not start" >&2; exit 1; fi
  sleep 0.5
done

cat <<TXT

runner-planner demo is running.
  gateway   http://127.0.0.1:$gateway_port  (webhook secret: $APP_WEBHOOK_SECRET_VALUE)

Send it a signed workflow_job webhook:
  GATEWAY_URL=http://127.0.0.1:$gateway_port scripts/send-webhook.sh tests/fixtures/workflow_job/queued.1.json

The delivery lands on the RabbitMQ queue github-workflow-jobs. Ctrl-C stops the demo.
TXT
wait
