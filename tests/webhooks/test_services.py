from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from billing.models import Invoice
from neruba.models import AuditEntry, Customer
from tests.webhooks.helpers import invoice_event, make_invoice
from webhooks import services, tasks
from webhooks.models import EventAttempt, StripeEvent


def mismatched_invoice_event(deliver: Any, event_id: str = "evt_mismatch") -> Invoice:
    """An invoice.paid whose Stripe customer differs from the Neruba customer's link: a real
    data conflict that fails processing until an operator fixes the link."""
    invoice = make_invoice()
    body, signature = invoice_event(invoice, type="invoice.paid", id=event_id)
    Customer.objects.filter(pk=invoice.customer_id).update(stripe_customer_id="cus_other")
    assert deliver(body, signature).status_code == 200
    return invoice


def fix_customer_link(invoice: Invoice) -> None:
    event = StripeEvent.objects.get(invoice=invoice)
    stripe_customer = event.payload["data"]["object"]["customer"]
    Customer.objects.filter(pk=invoice.customer_id).update(stripe_customer_id=stripe_customer)


def test_backoff_doubles_from_a_minute_and_is_capped() -> None:
    assert [services.backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [60, 120, 240, 480]
    assert services.backoff(30) == services.BACKOFF_CAP


@pytest.mark.django_db
def test_a_failed_event_is_retried_with_backoff_and_is_dead_after_max_attempts(
    deliver: Any,
) -> None:
    invoice = mismatched_invoice_event(deliver)
    event = StripeEvent.objects.get()
    assert event.status == StripeEvent.Status.FAILED and event.attempts == 1
    assert "StripeCustomerMismatch" in event.last_error
    first_retry_at = event.next_attempt_at
    assert first_retry_at is not None
    assert first_retry_at - timezone.now() == pytest.approx(
        services.backoff(1), abs=timedelta(seconds=5)
    )
    # Not due yet: the beat does nothing.
    assert services.events_retry_due(now=timezone.now())["failed"] == 0

    for expected_attempts in (2, 3, 4):  # STRIPE_WEBHOOK_MAX_ATTEMPTS is 4 in these tests
        event.refresh_from_db()
        with time_machine.travel(event.next_attempt_at + timedelta(seconds=1)):
            counts = tasks.retry_due()
        assert counts["failed"] == 1
        event.refresh_from_db()
        assert event.attempts == expected_attempts

    assert event.status == StripeEvent.Status.DEAD and event.next_attempt_at is None
    assert event.last_error
    triggers = list(event.event_attempts.order_by("id").values_list("trigger", "outcome"))
    assert triggers == [("http", "failed")] + [("retry", "failed")] * 3
    assert all(a.traceback for a in event.event_attempts.all())
    assert AuditEntry.objects.filter(action="stripe_event.dead").count() == 1
    # A dead event stays put however much time passes.
    with time_machine.travel(timezone.now() + timedelta(days=30)):
        assert services.events_retry_due(now=timezone.now())["failed"] == 0
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.FINALIZED


@pytest.mark.django_db
def test_a_retry_after_the_cause_is_fixed_processes_the_event(deliver: Any) -> None:
    invoice = mismatched_invoice_event(deliver)
    fix_customer_link(invoice)
    event = StripeEvent.objects.get()
    with time_machine.travel(event.next_attempt_at + timedelta(seconds=1)):
        assert tasks.retry_due()["processed"] == 1
    event.refresh_from_db()
    invoice.refresh_from_db()
    assert event.status == StripeEvent.Status.PROCESSED and event.last_error == ""
    assert invoice.status == Invoice.Status.PAID


@pytest.mark.django_db
def test_a_stored_event_whose_task_never_ran_is_picked_up_by_the_beat(client: Any) -> None:
    from tests.webhooks.helpers import post

    invoice = make_invoice()
    # Without running on-commit callbacks: as if the broker lost the task.
    post(client, *invoice_event(invoice, type="invoice.paid"))
    event = StripeEvent.objects.get()
    assert event.status == StripeEvent.Status.RECEIVED
    with time_machine.travel(timezone.now() + services.RECEIVED_GRACE + timedelta(seconds=1)):
        assert tasks.retry_due()["processed"] == 1
    assert EventAttempt.objects.get().trigger == "retry"


@pytest.mark.django_db
def test_a_claim_held_by_a_live_processor_is_not_taken_but_a_lapsed_one_is(client: Any) -> None:
    from tests.webhooks.helpers import post

    invoice = make_invoice()
    post(client, *invoice_event(invoice, type="invoice.paid"))
    event = StripeEvent.objects.get()
    now = timezone.now()
    StripeEvent.objects.filter(pk=event.pk).update(
        status=StripeEvent.Status.PROCESSING, next_attempt_at=now + services.PROCESSING_LEASE
    )
    assert services.event_process(event=event, trigger="http") is None
    assert services.event_process(event=event, trigger="retry") is None
    with time_machine.travel(now + services.PROCESSING_LEASE + timedelta(seconds=1)):
        attempt = services.event_process(event=event, trigger="retry")
    assert attempt is not None and attempt.outcome == "processed"


@pytest.mark.django_db
def test_a_processed_event_is_not_processed_again_by_the_http_task(deliver: Any) -> None:
    invoice = make_invoice()
    deliver(*invoice_event(invoice, type="invoice.paid"))
    event = StripeEvent.objects.get()
    assert tasks.process_event(event.pk) == "not claimed"
    assert EventAttempt.objects.count() == 1


@pytest.mark.django_db
def test_a_dry_run_changes_nothing(deliver: Any, client: Any) -> None:
    from tests.webhooks.helpers import post

    invoice = make_invoice()
    post(client, *invoice_event(invoice, type="invoice.paid"))
    event = StripeEvent.objects.get()
    audits = AuditEntry.objects.count()
    result = services.event_dry_run(event=event)
    assert result.outcome == "processed"
    assert any("finalized → paid" in note for note in result.notes)
    invoice.refresh_from_db()
    event.refresh_from_db()
    assert invoice.status == Invoice.Status.FINALIZED
    assert event.status == StripeEvent.Status.RECEIVED and event.attempts == 0
    assert AuditEntry.objects.count() == audits


@pytest.mark.django_db
def test_a_processor_whose_claim_was_taken_over_cannot_write_the_outcome(client: Any) -> None:
    from tests.webhooks.helpers import post

    invoice = make_invoice()
    post(client, *invoice_event(invoice, type="invoice.paid"))
    event = StripeEvent.objects.get()
    now = timezone.now()
    # A processor claims the event, then stalls past its lease.
    assert services._claim(event=event, trigger="http", now=now)
    stalled = StripeEvent.objects.get(pk=event.pk)
    stalled_attempt = EventAttempt.objects.create(event=stalled, trigger="http")
    with time_machine.travel(now + services.PROCESSING_LEASE + timedelta(seconds=1)):
        taken_over = services.event_process(event=event, trigger="retry")
    assert taken_over is not None and taken_over.outcome == "processed"

    # The stalled processor wakes up and fails: the event keeps the new processor's outcome.
    assert not services._ours(stalled).exists()
    services._record_failure(
        event=stalled, attempt=stalled_attempt, exc=RuntimeError("late"), trace=""
    )
    event.refresh_from_db()
    assert event.status == StripeEvent.Status.PROCESSED and event.attempts == 2
    assert event.last_error == ""


def test_a_web_process_publishes_one_delayed_processing_task_per_window() -> None:
    from kombu.transport.memory import Channel

    from neruba.celery import app

    def queued() -> int:
        queue = Channel.queues.get("celery")
        return queue.qsize() if queue is not None else 0

    saved = {key: app.conf[key] for key in ("task_always_eager", "broker_url")}
    app.conf.update(task_always_eager=False, broker_url="memory://")
    app._pool = app.amqp._producer_pool = None
    services._last_publish[0] = -services.COALESCE
    Channel.queues.pop("celery", None)
    try:
        services._publish(1)
        services._publish(2)  # inside the window: the first task, still waiting, covers it
        assert queued() == 1
        services._last_publish[0] -= services.COALESCE  # the window has passed
        services._publish(3)
        assert queued() == 2
    finally:
        Channel.queues.pop("celery", None)
        app.pool.force_close_all()
        app.conf.update(saved)
        app._pool = app.amqp._producer_pool = None
        services._last_publish[0] = -services.COALESCE


@pytest.mark.django_db
def test_the_processing_task_takes_every_received_event_oldest_first(client: Any) -> None:
    from tests.webhooks.helpers import post

    invoice = make_invoice()
    post(client, *invoice_event(invoice, type="invoice.payment_failed", created=1_700_000_000))
    post(client, *invoice_event(invoice, type="invoice.paid", created=1_700_000_100))
    assert tasks.process_received() == 2
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert list(EventAttempt.objects.order_by("id").values_list("event__type", "trigger")) == [
        ("invoice.payment_failed", "http"),
        ("invoice.paid", "http"),
    ]


@pytest.mark.django_db
def test_a_stored_payload_equals_the_signed_body_and_a_redelivery_returns_the_stored_row() -> None:
    import json

    invoice = make_invoice()
    body, signature = invoice_event(invoice, type="invoice.paid", id="evt_roundtrip")
    event, created = services.event_receive(body=body, signature=signature, headers={})
    assert created
    stored = StripeEvent.objects.get(pk=event.pk)
    assert stored.payload == json.loads(body)
    assert bytes(stored.raw_body) == body

    again, created_again = services.event_receive(body=body, signature=signature, headers={})
    assert not created_again
    assert (again.pk, again.stripe_id) == (event.pk, "evt_roundtrip")
    assert again.type == "invoice.paid"  # loaded from the stored row on access
    assert StripeEvent.objects.count() == 1
