"""Concurrent deliveries and processors in real processes against PostgreSQL."""

from __future__ import annotations

import pytest
from django.test import Client

from billing.models import Invoice
from neruba.models import AuditEntry
from tests import processes
from tests.webhooks.helpers import invoice_event, make_invoice, post
from webhooks import services
from webhooks.models import EventAttempt, StripeEvent


def _deliver(body: bytes, signature: str) -> tuple[int, str]:
    # Autocommit (transaction=True): the after-commit task runs eagerly in this process.
    response = post(Client(), body, signature)
    return response.status_code, response.json().get("status", "")


def _process(event_pk: int) -> str:
    attempt = services.event_process(event=StripeEvent.objects.get(pk=event_pk), trigger="http")
    return attempt.outcome if attempt else "not claimed"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_deliveries_of_one_event_are_stored_and_processed_once() -> None:
    invoice = make_invoice()
    body, signature = invoice_event(invoice, type="invoice.paid", id="evt_concurrent")

    results = processes.run_all(_deliver, [(body, signature)] * 10)

    assert {code for code, _ in results} == {200}
    assert sorted(status for _, status in results) == ["duplicate"] * 9 + ["stored"]
    event = StripeEvent.objects.get()
    assert event.status == StripeEvent.Status.PROCESSED and event.attempts == 1
    assert EventAttempt.objects.count() == 1
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert AuditEntry.objects.filter(action="invoice.payment_status").count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_processors_racing_for_one_stored_event_claim_it_once() -> None:
    invoice = make_invoice()
    body, signature = invoice_event(invoice, type="invoice.paid", id="evt_race")
    event, _ = services.event_receive(body=body, signature=signature, headers={})
    # The after-commit task already ran eagerly; put the event back as if it had not.
    EventAttempt.objects.all().delete()
    StripeEvent.objects.filter(pk=event.pk).update(status="received", attempts=0)
    Invoice.objects.filter(pk=invoice.pk).update(status="finalized", status_changed_at=None)

    results = processes.run_all(_process, [(event.pk,)] * 8)

    assert sorted(results) == ["not claimed"] * 7 + ["processed"]
    assert EventAttempt.objects.count() == 1
