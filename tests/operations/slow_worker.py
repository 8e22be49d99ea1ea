"""A Celery worker app for process tests: Neruba's own app, whose ``invoice.paid`` handler
first writes the file named by ``NERUBA_TEST_SLOW_HANDLER`` and then waits, so a test can kill
the worker while an event is being processed. Started as ``celery -A
tests.operations.slow_worker worker``; without the variable it is the plain app."""

from __future__ import annotations

import os
import time
from pathlib import Path

import django

from neruba.celery import app

django.setup()

from webhooks import handlers  # noqa: E402 - needs the apps loaded

__all__ = ["app"]

_MARKER = os.environ.get("NERUBA_TEST_SLOW_HANDLER")

if _MARKER:
    _original = handlers.HANDLERS["invoice.paid"]

    def _slow(event: handlers.StripeEvent) -> handlers.HandlerResult:
        Path(_MARKER).write_text(str(event.pk))
        time.sleep(300)  # killed long before this ends
        return _original(event)

    handlers.HANDLERS["invoice.paid"] = _slow
