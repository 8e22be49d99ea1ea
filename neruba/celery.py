"""The Celery app. Beat names tasks by string so the kernel imports no app."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "neruba.settings")

app = Celery("neruba")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# Sweep name -> the variable holding its beat interval (the names are operations.sweeps').
SWEEP_SCHEDULES = {
    "usage_drift": "NERUBA_SWEEP_INTERVAL",
    "stuck_runs": "NERUBA_SWEEP_INTERVAL",
    "webhook_retries": "NERUBA_SWEEP_INTERVAL",
    "reconciliation": "NERUBA_SWEEP_RECONCILIATION_INTERVAL",
    "outbox": "NERUBA_SWEEP_INTERVAL",
    "partitions": "NERUBA_SWEEP_INTERVAL",
    "retention": "NERUBA_SWEEP_RETENTION_INTERVAL",
}


def _beat_schedule() -> dict[str, dict[str, object]]:
    """Every periodic task, named by string. Intervals come from the configuration list."""
    from django.conf import settings

    return {
        "scheduler-heartbeat": {"task": "operations.heartbeat", "schedule": 30.0},
        "billing-scan": {
            "task": "billing.scan",
            "schedule": float(settings.NERUBA["NERUBA_BILLING_SCAN_INTERVAL"]),
        },
        # Failed Stripe events whose backoff elapsed, and claims whose worker died.
        "webhooks-retry-due": {"task": "webhooks.retry_due", "schedule": 60.0},
        # Recovery and consistency sweeps (operations.sweeps), one entry each so a slow one
        # never delays another; each records a SweepRun and skips itself while already running.
        **{
            f"sweep-{name.replace('_', '-')}": {
                "task": "operations.sweep",
                "schedule": float(settings.NERUBA[variable]),
                "args": [name],
            }
            for name, variable in SWEEP_SCHEDULES.items()
        },
    }


@app.on_after_configure.connect
def _setup_beat(sender: Celery, **kwargs: object) -> None:
    sender.conf.beat_schedule = _beat_schedule()


@worker_ready.connect
def _serve_worker_metrics(sender: object = None, **kwargs: object) -> None:
    from django.conf import settings

    from neruba.metrics import worker_metrics_serve

    port = settings.NERUBA["NERUBA_WORKER_METRICS_PORT"]
    if port:
        worker_metrics_serve(port=port)
