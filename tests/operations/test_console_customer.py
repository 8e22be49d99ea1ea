"""The customer page as the hub, support notes and ready-to-send replies."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.utils import timezone

from billing.ledger import credit_grant
from billing.models import Dispute, Invoice, PaymentCharge, PaymentFinding, Refund
from ingest.models import UsageEvent
from neruba.models import AuditEntry, SupportNote
from operations.support_messages import TEMPLATES, runbook_markdown
from tests.operations.console import FEB_LATER, JAN, bill_january, call, client_for, ingest
from webhooks.models import StripeEvent

pytestmark = pytest.mark.django_db


def _customer_url(catalog: dict[str, Any]) -> str:
    return f"/admin/neruba/customer/{catalog['customer'].pk}/change/"


@pytest.fixture
def history(catalog: dict[str, Any]) -> dict[str, Any]:
    """Acme with a January invoice, a late event, a rejection, a credit, a refund, a dispute
    and a webhook event."""
    customer = catalog["customer"]
    with time_machine.travel(JAN + timedelta(days=4), tick=False):
        ingest(call("k-1"), call("k-2"), call("k-bad", customer="acme") | {"metric": "nope"})
    with time_machine.travel(FEB_LATER, tick=False):
        invoice = bill_january()
    credit_grant(customer=customer, amount=250, reason_code="goodwill", actor=None, reason="sorry")
    Refund.objects.create(
        stripe_refund_id="re_1",
        customer=customer,
        invoice=invoice,
        amount=500,
        currency="usd",
        status="succeeded",
    )
    Dispute.objects.create(
        stripe_dispute_id="dp_1",
        customer=customer,
        invoice=invoice,
        amount=700,
        currency="usd",
        status="needs_response",
    )
    charge = PaymentCharge.objects.create(
        charge_id="ch_hub", customer=customer, invoice=invoice, currency="USD"
    )
    PaymentFinding.objects.create(
        charge=charge,
        customer=customer,
        invoice=invoice,
        currency="USD",
        collected=500,
        refunded=500,
        disputed=500,
        returned=1000,
        detail="charge ch_hub returned 10.00 of 5.00 USD: refunded and lost in dispute",
    )
    StripeEvent.objects.create(
        stripe_id="evt_hub",
        type="invoice.paid",
        created=timezone.now(),
        raw_body=b"{}",
        payload={},
        customer=customer,
        status="dead",
    )
    return {"invoice": invoice, **catalog}


def test_the_customer_page_shows_every_part_of_the_customers_history(
    history: dict[str, Any], console_user: Any
) -> None:
    html = client_for(console_user, "Support").get(_customer_url(history)).content.decode()
    for panel in (
        "hub-usage",
        "hub-balance",
        "hub-cash",
        "hub-payment_findings",
        "hub-subscriptions",
        "hub-invoices",
        "hub-credits",
        "hub-refunds",
        "hub-disputes",
        "hub-events",
        "hub-rejections",
        "hub-webhooks",
        "hub-audit",
        "support-notes",
        "support-messages",
    ):
        assert f'id="{panel}"' in html, panel
    assert history["invoice"].number in html
    assert "re_1" in html and "dp_1" in html and "evt_hub" in html
    assert "charge ch_hub returned 10.00 of 5.00 USD: refunded and lost in dispute" in html
    assert "k-bad" in html and "unknown_metric" in html
    assert "$2.50" in html  # the credit balance
    assert f"/console/customers/{history['customer'].pk}/usage/" in html
    assert "credit.grant" in html


def test_the_usage_panel_shows_the_open_windows_quantities_and_amount_so_far(
    catalog: dict[str, Any], console_user: Any
) -> None:
    url = f"/console/customers/{catalog['customer'].pk}/usage/"
    now = timezone.now()
    catalog["subscription"].started_at = now - timedelta(days=40)
    catalog["subscription"].save()
    ingest(*(call(f"now-{n}", at=now - timedelta(minutes=5)) for n in range(4)))
    html = client_for(console_user, "Operations").get(url).content.decode()
    # Base fee 10.00 plus 4 calls at 0.5 cents each, rounded half-even on the line.
    assert "Amount so far (pro)" in html and "$10.02" in html
    from django.contrib.auth.models import User

    bare = User.objects.create_user("bare", password="x-Password-1", is_staff=True)
    client = Client()
    client.force_login(bare)
    assert client.get(url).status_code == 403


def test_the_customer_page_runs_a_bounded_number_of_queries_however_long_the_history(
    history: dict[str, Any], console_user: Any, django_assert_max_num_queries: Any
) -> None:
    client = client_for(console_user, "Support")
    client.get(_customer_url(history))
    UsageEvent.objects.bulk_create(
        UsageEvent(
            idempotency_key=f"bulk-{n}",
            customer=history["customer"],
            metric=history["metrics"]["api_calls"],
            timestamp=JAN + timedelta(days=5),
            payload_hash="x" * 64,
        )
        for n in range(300)
    )
    with django_assert_max_num_queries(60):
        response = client.get(_customer_url(history))
    assert response.status_code == 200
    assert "newest 10" in response.content.decode()


def test_each_role_can_see_the_customer_page_and_only_finance_gets_the_credit_button(
    history: dict[str, Any], console_user: Any
) -> None:
    for role, has_button in (("Support", False), ("Finance", True), ("Operations", False)):
        html = client_for(console_user, role).get(_customer_url(history)).content.decode()
        assert 'id="hub-invoices"' in html, role
        assert ("/action/issue_credit/" in html) is has_button, role


def test_a_note_added_on_the_customer_page_is_shown_with_author_and_time_and_audited(
    history: dict[str, Any], console_user: Any
) -> None:
    client = client_for(console_user, "Support")
    customer = history["customer"]
    response = client.post(
        "/console/notes/add/",
        {
            "content_type": ContentType.objects.get_for_model(customer).pk,
            "object_id": customer.pk,
            "body": "Called about the January invoice.",
            "next": _customer_url(history),
        },
    )
    assert response.status_code == 302 and response["Location"] == _customer_url(history)
    html = client.get(_customer_url(history)).content.decode()
    assert "Called about the January invoice." in html and "support-user" in html
    entry = AuditEntry.objects.get(action="note.add")
    assert entry.customer == customer and entry.actor_label == "support-user"
    assert entry.reason == "Called about the January invoice."


@pytest.mark.parametrize("target", ["invoice", "event", "webhook"])
def test_notes_can_be_added_on_invoices_events_and_webhook_events_and_reach_the_customer_page(
    history: dict[str, Any], console_user: Any, target: str
) -> None:
    record = {
        "invoice": history["invoice"],
        "event": UsageEvent.objects.get(idempotency_key="k-1"),
        "webhook": StripeEvent.objects.get(stripe_id="evt_hub"),
    }[target]
    opts = record._meta
    page = f"/admin/{opts.app_label}/{opts.model_name}/{record.pk}/change/"
    client = client_for(console_user, "Finance")
    assert 'id="note-form"' in client.get(page).content.decode()
    client.post(
        "/console/notes/add/",
        {
            "content_type": ContentType.objects.get_for_model(record).pk,
            "object_id": record.pk,
            "body": f"note on the {target}",
            "next": page,
        },
    )
    assert f"note on the {target}" in client.get(page).content.decode()
    assert f"note on the {target}" in client.get(_customer_url(history)).content.decode()
    assert SupportNote.objects.get().customer == history["customer"]


def test_notes_cannot_be_changed_or_deleted_from_the_console(
    history: dict[str, Any], console_user: Any
) -> None:
    from neruba.services import note_add

    author = console_user("superuser")
    note = note_add(target=history["customer"], author=author, body="kept", customer=None)
    client = Client()
    client.force_login(author)
    url = f"/admin/neruba/supportnote/{note.pk}/"
    assert client.post(url + "change/", {"body": "rewritten"}).status_code == 403
    assert client.post(url + "delete/", {"post": "yes"}).status_code == 403
    note.refresh_from_db()
    assert note.body == "kept"


def test_a_user_without_the_note_permission_cannot_add_a_note(
    history: dict[str, Any], console_user: Any
) -> None:
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user("viewer", password="x-Password-1", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_customer"))
    client = Client()
    client.force_login(user)
    customer = history["customer"]
    response = client.post(
        "/console/notes/add/",
        {
            "content_type": ContentType.objects.get_for_model(customer).pk,
            "object_id": customer.pk,
            "body": "x",
        },
    )
    assert response.status_code == 403
    assert not SupportNote.objects.exists()


def test_notes_cannot_be_attached_to_records_outside_the_list(
    history: dict[str, Any], console_user: Any
) -> None:
    entry = AuditEntry.objects.first()
    response = client_for(console_user, "superuser").post(
        "/console/notes/add/",
        {
            "content_type": ContentType.objects.get_for_model(entry).pk,
            "object_id": entry.pk,
            "body": "x",
        },
    )
    assert response.status_code == 403


def test_the_customer_page_renders_each_reply_template_filled_from_the_records(
    history: dict[str, Any], console_user: Any
) -> None:
    html = client_for(console_user, "Support").get(_customer_url(history)).content.decode()
    number = history["invoice"].number
    assert "we have added a credit of $2.50 to your account (a goodwill gesture)" in html
    assert f"refund processed: $5.00 back to your card for invoice {number}" in html
    assert f"dispute on invoice {number} for $7.00" in html


def test_the_invoice_page_renders_the_invoice_corrected_reply_after_a_rerun(
    history: dict[str, Any], console_user: Any
) -> None:
    from billing.services import invoice_rerun

    invoice = history["invoice"]
    with time_machine.travel(FEB_LATER, tick=False):
        ingest(call("k-3"))
    result = invoice_rerun(invoice=invoice, actor=None, reason="late usage", dry_run=False)
    new = Invoice.objects.get(number=result.created[0])
    html = (
        client_for(console_user, "Support")
        .get(f"/admin/billing/invoice/{invoice.pk}/change/")
        .content.decode()
    )
    assert f"error on invoice {invoice.number} and issued {new.number} in its place" in html


def test_the_support_replies_runbook_is_generated_from_the_template_registry() -> None:
    from pathlib import Path

    runbook = Path(__file__).resolve().parents[2] / "docs/runbooks/support-templates.md"
    assert runbook.read_text() == runbook_markdown()
    assert set(TEMPLATES) == {
        "credit_issued",
        "refund_processed",
        "dispute_opened",
        "dispute_lost",
        "dispute_closed",
        "invoice_corrected",
    }


def test_every_full_list_link_on_the_customer_page_opens_the_filtered_list(
    history: dict[str, Any], console_user: Any
) -> None:
    import re

    client = client_for(console_user, "superuser")
    html = client.get(_customer_url(history)).content.decode()
    links = re.findall(r'<small>\(<a href="([^"]+)">', html)
    assert len(links) == 11
    for link in links:
        response = client.get(link.replace("&amp;", "&"))
        assert response.status_code == 200, link
        assert "acme" in response.content.decode() or "Acme" in response.content.decode(), link


def test_event_and_rejection_pages_link_to_the_explainer(
    history: dict[str, Any], console_user: Any
) -> None:
    from ingest.models import IngestRejection

    client = client_for(console_user, "Support")
    event = UsageEvent.objects.get(idempotency_key="k-1")
    html = client.get(f"/admin/ingest/usageevent/{event.pk}/change/").content.decode()
    assert 'id="explain-link" ' not in html and 'href="/console/explain/?key=k-1"' in html
    rejection = IngestRejection.objects.get(idempotency_key="k-bad")
    html = client.get(f"/admin/ingest/ingestrejection/{rejection.pk}/change/").content.decode()
    assert 'href="/console/explain/?key=k-bad"' in html
    explained = client.get("/console/explain/?key=k-bad").content.decode()
    assert "unknown_metric" in explained
