from __future__ import annotations

from celery import shared_task
from celery.signals import beat_init, worker_ready

from operations.health import heartbeat_record


@shared_task(name="operations.heartbeat", ignore_result=True)
def heartbeat() -> None:
    heartbeat_record(name="beat", detail="celery beat tick")


@beat_init.connect
def _beat_started(sender: object = None, **kwargs: object) -> None:
    heartbeat_record(name="beat", detail="celery beat started")


@worker_ready.connect
def _worker_started(sender: object = None, **kwargs: object) -> None:
    heartbeat_record(name="worker", detail="celery worker ready")


@shared_task(
    name="operations.sweep",
    acks_late=True,
    ignore_result=True,
    soft_time_limit=3300,
    time_limit=3500,
)
def sweep(name: str, trigger: str = "beat") -> str:
    """One sweep by name; a second one started while it runs records lock_held and exits."""
    from operations.sweeps import sweep_run

    return sweep_run(name=name, trigger=trigger).status


@shared_task(
    name="operations.sweep_all",
    acks_late=True,
    ignore_result=True,
    soft_time_limit=3300,
    time_limit=3500,
)
def sweep_all(trigger: str = "beat") -> dict[str, str]:
    from operations.sweeps import sweeps_run

    return {run.sweep: run.status for run in sweeps_run(trigger=trigger)}
