"""Neruba's Celery app for beat process tests: everything beat sends goes to the queue named by
``NERUBA_TEST_QUEUE``, so a test reads exactly what its own beats scheduled. Started as
``celery -A tests.neruba.beat_app beat``."""

from __future__ import annotations

import os

from neruba.celery import app

app.conf.task_default_queue = os.environ.get("NERUBA_TEST_QUEUE", "celery")

__all__ = ["app"]
