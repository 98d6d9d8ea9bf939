#!/bin/sh
# Serve the control plane on the embedded SQLite database with a demo fleet.
# Generates this session's role tokens and agent token unless they are already set.
set -eu
export CONTROL_PLANE_SUPPORT_TOKEN="${CONTROL_PLANE_SUPPORT_TOKEN:-$(flask --app cp gen-token)}"
export CONTROL_PLANE_OPS_TOKEN="${CONTROL_PLANE_OPS_TOKEN:-$(flask --app cp gen-token)}"
export CONTROL_PLANE_ADMIN_TOKEN="${CONTROL_PLANE_ADMIN_TOKEN:-$(flask --app cp gen-token)}"
export CONTROL_PLANE_AGENT_TOKEN="${CONTROL_PLANE_AGENT_TOKEN:-$(flask --app cp gen-token)}"
export CONTROL_PLANE_LOG_FORMAT="${CONTROL_PLANE_LOG_FORMAT:-text}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-5000}"

flask --app cp db upgrade
CONTROL_PLANE_LOG_LEVEL=WARNING flask --app cp seed-demo

WORKER_PID=""
if flask --app cp --help 2>/dev/null | grep -q '^  worker'; then
  flask --app cp worker &
  WORKER_PID=$!
fi
trap '[ -n "$WORKER_PID" ] && kill "$WORKER_PID" 2>/dev/null || true' EXIT INT TERM

cat <<MSG

  control-plane is serving on http://$HOST:$PORT  (log in at http://$HOST:$PORT/login)
  support token: $CONTROL_PLANE_SUPPORT_TOKEN
  ops token:     $CONTROL_PLANE_OPS_TOKEN
  admin token:   $CONTROL_PLANE_ADMIN_TOKEN
  agent token:   $CONTROL_PLANE_AGENT_TOKEN   (cp-agent heartbeat --url http://$HOST:$PORT --instance demo-1 --secret ...)

MSG
gunicorn --bind "$HOST:$PORT" --workers 2 --threads 4 'cp:create_app()'
