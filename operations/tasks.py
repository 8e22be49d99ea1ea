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
