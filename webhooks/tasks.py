"""Thin tasks: load by id, call the service."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from webhooks import outbound, services
from webhooks.models import EventAttempt, StripeEvent

PROCESS_BATCH = 200


@shared_task(name="webhooks.process_event", acks_late=True, soft_time_limit=60, time_limit=90)
def process_event(event_id: int) -> str:
    event = StripeEvent.objects.filter(pk=event_id).first()
    if event is None:
        return "missing"
    attempt = services.event_process(event=event, trigger=EventAttempt.Trigger.HTTP)
    return attempt.outcome if attempt else "not claimed"


@shared_task(name="webhooks.process_received", acks_late=True, soft_time_limit=240, time_limit=300)
def process_received() -> int:
    taken = services.events_process_received(limit=PROCESS_BATCH)
    if taken == PROCESS_BATCH:
        process_received.delay()  # more are waiting; keep going in a fresh task
    return taken


@shared_task(name="webhooks.retry_due", acks_late=True, soft_time_limit=240, time_limit=300)
def retry_due() -> dict[str, int]:
    return services.events_retry_due(now=timezone.now())


# --- outbound webhooks -------------------------------------------------------------------------


@shared_task(
    name="webhooks.outbound_fan_out",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=120,
    time_limit=180,
)
def outbound_fan_out() -> int:
    return outbound.messages_fan_out()


@shared_task(
    name="webhooks.outbound_deliver",
    bind=True,
    acks_late=True,
    # A worker killed mid-delivery puts the task back on the queue; the redelivered task
    # carries the same id, which lets it take back its own claim (see outbound._claim).
    reject_on_worker_lost=True,
    soft_time_limit=300,
    time_limit=360,
)
def outbound_deliver(self: object, delivery_ids: list[int], trigger: str = "send") -> dict:
    task_id = getattr(self.request, "id", None) or ""  # type: ignore[attr-defined]
    return outbound.deliveries_send(
        delivery_ids=delivery_ids, trigger=trigger, claimer=task_id
    ).as_dict()


@shared_task(
    name="webhooks.outbound_retry_due", acks_late=True, soft_time_limit=120, time_limit=180
)
def outbound_retry_due() -> dict[str, int]:
    return outbound.deliveries_retry_due(now=timezone.now())
