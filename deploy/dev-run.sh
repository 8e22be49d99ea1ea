#!/usr/bin/env bash
# Development runner for `make run`: the web server plus one Celery worker with embedded beat,
# on the filesystem broker (no Redis, no PostgreSQL). Ctrl-C stops all of it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
export NERUBA_ENV=${NERUBA_ENV:-development}

cleanup() {
  trap - INT TERM EXIT
  echo "Stopping Neruba..."
  kill -- -$$ 2>/dev/null || kill 0 2>/dev/null || true
}
trap cleanup INT TERM EXIT

"$BIN/celery" -A neruba worker --beat --loglevel=INFO --concurrency=2 \
  --schedule var/celerybeat-schedule --hostname "dev-worker@%h" &

password=$(cat var/admin-password.txt 2>/dev/null || echo "(run manage.py seed_demo)")
cat <<BANNER

  Neruba is starting on http://$HOST:$PORT/
    console   http://$HOST:$PORT/admin/   login: admin / $password
              (also support, finance, operations with the same password)
    API docs  http://$HOST:$PORT/docs
    health    http://$HOST:$PORT/healthz   readiness http://$HOST:$PORT/readyz
  Ctrl-C stops the web server, worker and beat.

BANNER

"$BIN/python" manage.py runserver "$HOST:$PORT" --noreload &
wait -n
