#!/usr/bin/env bash
# Sends a payload to the gateway signed as GitHub signs it.
# Usage: scripts/send-webhook.sh [FILE] [EVENT] [DELIVERY]
#   FILE      JSON payload (default tests/fixtures/workflow_job/queued.1.json)
#   EVENT     X-GitHub-Event (default workflow_job)
#   DELIVERY  X-GitHub-Delivery (default a new UUID; the same one again is a duplicate)
# Environment: GATEWAY_URL (default http://127.0.0.1:8080), APP_WEBHOOK_SECRET_VALUE (default
# the demo secret of `make run`).
set -euo pipefail
file=${1:-tests/fixtures/workflow_job/queued.1.json}
event=${2:-workflow_job}
url=${GATEWAY_URL:-http://127.0.0.1:8080}
secret=${APP_WEBHOOK_SECRET_VALUE:-demo-webhook-secret}
signature=$(openssl dgst -sha256 -hmac "$secret" -r <"$file" | cut -d' ' -f1)
delivery=${3:-$(cat /proc/sys/kernel/random/uuid)}
curl -sS --max-time 10 -w ' -> HTTP %{http_code}\n' -X POST "$url/webhook" \
  -H 'Content-Type: application/json' \
  -H "X-GitHub-Event: $event" \
  -H "X-GitHub-Delivery: $delivery" \
  -H "X-Hub-Signature-256: sha256=$signature" \
  --data-binary "@$file"
