#!/bin/sh
# Serve the control plane on the embedded SQLite database with a demo (cp/demo.py): a fleet,
# signed releases and a rollout in progress, plugins, restores, triage, webhook deliveries.
# Generates this session's role tokens and agent token unless they are already set, and a
# demo release key (instance/demo.key) whose public key the server trusts.
set -eu
export CONTROL_PLANE_SUPPORT_TOKEN="${CONTROL_PLANE_SUPPORT_TOKEN:-$(flask --app cp gen-token)}"
export CONTROL_PLANE_OPS_TOKEN="${CONTROL_PLANE_OPS_TOKEN:-$(flask --app cp gen-token)}"
export CONTROL_PLANE_ADMIN_TOKEN="${CONTROL_PLANE_ADMIN_TOKEN:-$(flask --app cp gen-token)}"
export CONTROL_PLANE_AGENT_TOKEN="${CONTROL_PLANE_AGENT_TOKEN:-$(flask --app cp gen-token)}"
export CONTROL_PLANE_LOG_FORMAT="${CONTROL_PLANE_LOG_FORMAT:-text}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-5000}"

mkdir -p instance
if [ ! -f instance/demo.key ]; then
  flask --app cp keys generate --key-id demo --out instance/demo.key > instance/demo-release-keys.env 2>/dev/null
fi
. ./instance/demo-release-keys.env
export CONTROL_PLANE_RELEASE_KEYS
# the alerts' webhook deliveries go to a local sink that accepts them (the outbox screen)
WEBHOOK_PORT="${WEBHOOK_PORT:-$((PORT + 1))}"
export CONTROL_PLANE_ALERT_WEBHOOK_URL="${CONTROL_PLANE_ALERT_WEBHOOK_URL:-http://127.0.0.1:$WEBHOOK_PORT/hook}"

flask --app cp db upgrade
CONTROL_PLANE_LOG_LEVEL=WARNING flask --app cp demo --key instance/demo.key

flask --app cp demo-webhook-sink --port "$WEBHOOK_PORT" &
SINK_PID=$!
flask --app cp worker &
WORKER_PID=$!
trap 'kill "$WORKER_PID" "$SINK_PID" 2>/dev/null || true' EXIT INT TERM

cat <<MSG

  control-plane is serving on http://$HOST:$PORT  (log in at http://$HOST:$PORT/login)
  support token: $CONTROL_PLANE_SUPPORT_TOKEN
  ops token:     $CONTROL_PLANE_OPS_TOKEN
  admin token:   $CONTROL_PLANE_ADMIN_TOKEN
  agent token:   $CONTROL_PLANE_AGENT_TOKEN   (cp-agent heartbeat --url http://$HOST:$PORT --instance demo-1 --secret ...)

MSG
gunicorn --bind "$HOST:$PORT" --workers 2 --threads 4 'cp:create_app()'
