from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from prometheus_client import REGISTRY

from billing.models import Invoice
from neruba.models import AuditEntry
from tests import factories
from tests.webhooks.test_services import fix_customer_link, mismatched_invoice_event
from webhooks.models import StripeEvent

CHANGELIST = reverse("admin:webhooks_stripeevent_changelist")


def logged_in(role: str) -> Client:
    client = Client()
    client.force_login(factories.console_user(role))
    return client


def change_url(event: StripeEvent) -> str:
    return reverse("admin:webhooks_stripeevent_change", args=[event.pk])


def action_url(event: StripeEvent) -> str:
    return reverse("admin:webhooks_stripeevent_object_action", args=[event.pk, "replay_events"])


def post_action(client: Client, event: StripeEvent, reason: str) -> Any:
    """The bulk action from the list, confirmed with ``reason``."""
    data = {
        "action": "replay_events",
        "_selected_action": [event.pk],
        "confirm": "yes",
        "reason": reason,
    }
    return client.post(CHANGELIST, data, follow=True)


def replays(outcome: str) -> float:
    labels = {"kind": "stripe_event", "outcome": outcome}
    return REGISTRY.get_sample_value("neruba_replays_total", labels) or 0.0


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["Support", "Finance", "Operations", "superuser"])
def test_every_console_role_can_inspect_events(deliver: Any, role: str) -> None:
    invoice = mismatched_invoice_event(deliver)
    event = StripeEvent.objects.get()
    client = logged_in(role)

    listing = client.get(CHANGELIST, {"status__exact": "failed"})
    assert listing.status_code == 200 and event.stripe_id in listing.content.decode()

    page = client.get(change_url(event)).content.decode()
    assert "Stripe-Signature" in page  # headers
    assert "StripeCustomerMismatch" in page and "Traceback" in page  # attempt, traceback
    assert invoice.number in page  # linked invoice
    assert "&quot;object&quot;: &quot;event&quot;" in page  # payload / raw body


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["Support", "Finance"])
def test_support_and_finance_cannot_replay(deliver: Any, role: str) -> None:
    mismatched_invoice_event(deliver)
    event = StripeEvent.objects.get()
    client = logged_in(role)

    listing = client.get(CHANGELIST).content.decode()
    assert "replay_events" not in listing
    assert action_url(event) not in client.get(change_url(event)).content.decode()
    assert client.get(action_url(event)).status_code == 403
    assert post_action(client, event, "try").status_code in (200, 403)
    event.refresh_from_db()
    assert event.attempts == 1 and event.status == StripeEvent.Status.FAILED
    assert not AuditEntry.objects.filter(action="stripe_event.replay").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["Operations", "superuser"])
def test_operations_and_superusers_replay_a_fixed_event_with_a_reason(
    deliver: Any, role: str
) -> None:
    invoice = mismatched_invoice_event(deliver)
    event = StripeEvent.objects.get()
    client = logged_in(role)
    assert "replay_events" in client.get(CHANGELIST).content.decode()
    assert action_url(event) in client.get(change_url(event)).content.decode()
    fix_customer_link(invoice)

    # The confirmation page is a dry run: it shows the change and makes none.
    preview = client.get(action_url(event))
    assert preview.status_code == 200
    assert "finalized → paid" in preview.content.decode()
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.FINALIZED

    # No reason, no replay.
    missing = client.post(action_url(event), {"confirm": "yes", "reason": " "})
    assert "A reason is required" in missing.content.decode()
    event.refresh_from_db()
    assert event.attempts == 1

    before = replays("processed")
    done = client.post(action_url(event), {"confirm": "yes", "reason": "customer link fixed"})
    assert done.status_code == 302

    event.refresh_from_db()
    invoice.refresh_from_db()
    assert event.status == StripeEvent.Status.PROCESSED
    assert invoice.status == Invoice.Status.PAID
    attempt = event.event_attempts.order_by("-id").first()
    assert attempt.trigger == "replay" and attempt.outcome == "processed"
    assert attempt.actor.username == f"{role.lower()}-user"
    entry = AuditEntry.objects.get(action="stripe_event.replay")
    assert entry.reason == "customer link fixed" and entry.actor_label == f"{role.lower()}-user"
    assert entry.before == {"status": "failed"} and entry.after["status"] == "processed"
    assert replays("processed") == before + 1


@pytest.mark.django_db
def test_a_replay_that_fails_again_is_reported_as_failed(deliver: Any) -> None:
    mismatched_invoice_event(deliver)
    event = StripeEvent.objects.get()
    client = logged_in("Operations")
    preview = client.get(action_url(event)).content.decode()
    assert "would fail" in preview
    response = post_action(client, event, "trying again")
    assert "0 done, 0 skipped, 1 failed" in response.content.decode()
    event.refresh_from_db()
    assert event.status == StripeEvent.Status.FAILED and event.attempts == 2
    entry = AuditEntry.objects.get(action="stripe_event.replay")
    assert entry.after["outcome"] == "failed"


@pytest.mark.django_db
def test_events_are_read_only_in_the_console(deliver: Any) -> None:
    mismatched_invoice_event(deliver)
    event = StripeEvent.objects.get()
    client = logged_in("superuser")
    assert client.get(reverse("admin:webhooks_stripeevent_add")).status_code == 403
    assert (
        client.get(reverse("admin:webhooks_stripeevent_delete", args=[event.pk])).status_code == 403
    )
    client.post(change_url(event), {"status": "processed"})
    event.refresh_from_db()
    assert event.status == StripeEvent.Status.FAILED


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["Support", "Finance", "Operations"])
def test_attempts_with_tracebacks_are_listed_for_every_role(deliver: Any, role: str) -> None:
    mismatched_invoice_event(deliver)
    attempt = StripeEvent.objects.get().event_attempts.get()
    client = logged_in(role)
    listing = client.get(reverse("admin:webhooks_eventattempt_changelist"))
    assert listing.status_code == 200 and "StripeCustomerMismatch" in listing.content.decode()
    page = client.get(reverse("admin:webhooks_eventattempt_change", args=[attempt.pk]))
    assert "Traceback" in page.content.decode()
