#!/bin/sh
# Container entrypoint: validate the environment, migrate, then run the role's process.
#   web     gunicorn. Migrations run here through `migrate_locked`, which holds a PostgreSQL
#           advisory lock: replicas starting together migrate one at a time (the second finds
#           nothing to apply). Plain `migrate` from two replicas at once fails one of them.
#   worker  Celery worker
#   beat    Celery beat. Two may run (two hosts or containers): the one holding the
#           `celery-beat` lease in the database schedules, the other stands by and takes over
#           within NERUBA_BEAT_LEASE (30 s) of the first dying (neruba/beat.py).
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
    python manage.py migrate_locked
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
    exec python manage.py migrate_locked
    ;;
  *)
    exec "$@"
    ;;
esac
