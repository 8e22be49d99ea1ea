#!/bin/sh
# Container entrypoint: validate the environment, migrate, then run the role's process.
#   web     gunicorn (migrations run here; they are idempotent, so two web replicas are safe)
#   worker  Celery worker
#   beat    Celery beat (run exactly one)
#   any other command is executed as given (e.g. `manage.py smoke`).
set -eu

role="${1:-web}"
cd /app

if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
  rm -rf "${PROMETHEUS_MULTIPROC_DIR:?}"/* 2>/dev/null || true
  mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi

python manage.py check_env

case "$role" in
  web)
    python manage.py migrate --noinput
    python manage.py collectstatic --noinput --verbosity 0
    exec gunicorn neruba.wsgi:application --config deploy/gunicorn.conf.py
    ;;
  worker)
    exec celery -A neruba worker --loglevel "${LOG_LEVEL:-INFO}" \
      --concurrency "${CELERY_CONCURRENCY:-2}" --max-tasks-per-child 1000
    ;;
  beat)
    exec celery -A neruba beat --loglevel "${LOG_LEVEL:-INFO}" \
      --schedule /tmp/celerybeat-schedule
    ;;
  migrate)
    exec python manage.py migrate --noinput
    ;;
  *)
    exec "$@"
    ;;
esac
