"""Thin tasks: load by id, call the service."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from webhooks import services
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
