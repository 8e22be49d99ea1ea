"""The Celery app for ``manage.py benchmark outbound``'s worker: Neruba's own app, with the
outbound tasks routed to the queue named by ``NERUBA_BENCH_OUTBOUND_QUEUE`` (so the benchmark
never competes with, or feeds, a deployment's own workers). Started as
``celery -A webhooks.bench_worker worker``."""

from __future__ import annotations

import os

from neruba.celery import app

QUEUE = os.environ.get("NERUBA_BENCH_OUTBOUND_QUEUE", "")
if QUEUE:
    app.conf.task_routes = {"webhooks.outbound_*": {"queue": QUEUE}}

__all__ = ["app"]
