"""Guarded support actions from the console: permission, confirmation, reason, service, audit."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.messages import get_messages
from django.test import Client
from django.utils import timezone

from billing.models import BillingWindow, CreditEntry, DriftFinding, Invoice
from ingest.models import IngestRejection
from neruba.models import AuditEntry
from tests.factories import CustomerFactory
from tests.operations.console import FEB_LATER, JAN, bill_january, call, client_for, ingest
from webhooks.models import StripeEvent

pytestmark = pytest.mark.django_db


def _action_url(obj: Any, action: str) -> str:
    opts = obj._meta
    return f"/admin/{opts.app_label}/{opts.model_name}/{obj.pk}/action/{action}/"


def _messages(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_finance_issues_a_credit_from_the_customer_page_with_a_reason_and_it_is_audited(
    catalog: dict[str, Any], console_user: Any
) -> None:
    client = client_for(console_user, "Finance")
    url = _action_url(catalog["customer"], "issue_credit")
    page = client.get(url).content.decode()
    assert 'name="amount"' in page and 'name="reason_code"' in page and 'name="reason"' in page
    assert "is added to acme" in page
    response = client.post(
        url, {"confirm": "yes", "amount": "15.00", "reason_code": "goodwill", "reason": "outage"}
    )
    assert response.status_code == 302
    assert "Issue a credit: 1 done, 0 skipped, 0 failed. (amount $15.00)" in _messages(response)
    entry = CreditEntry.objects.get()
    assert (entry.amount, entry.currency, entry.reason_code) == (1500, "USD", "goodwill")
    audit = AuditEntry.objects.get(action="credit.grant")
    assert (audit.actor_label, audit.reason, audit.customer) == (
        "finance-user",
        "outage",
        catalog["customer"],
    )


def test_a_credit_without_an_amount_or_a_reason_writes_nothing(
    catalog: dict[str, Any], console_user: Any
) -> None:
    client = client_for(console_user, "Finance")
    url = _action_url(catalog["customer"], "issue_credit")
    page = client.post(url, {"confirm": "yes", "reason_code": "goodwill", "reason": "x"})
    assert page.status_code == 200 and "This field is required" in page.content.decode()
    page = client.post(url, {"confirm": "yes", "amount": "5", "reason_code": "goodwill"})
    assert "A reason is required." in page.content.decode()
    assert not CreditEntry.objects.exists() and not AuditEntry.objects.exists()


@pytest.mark.parametrize("role", ["Support", "Operations"])
def test_support_and_operations_cannot_issue_credits(
    catalog: dict[str, Any], console_user: Any, role: str
) -> None:
    client = client_for(console_user, role)
    url = _action_url(catalog["customer"], "issue_credit")
    assert client.get(url).status_code == 403
    forced = client.post(
        "/admin/neruba/customer/",
        {
            "action": "issue_credit",
            "_selected_action": [catalog["customer"].pk],
            "confirm": "yes",
            "amount": "1.00",
            "reason_code": "goodwill",
            "reason": "x",
        },
    )
    assert forced.status_code == 403
    assert not CreditEntry.objects.exists()


@pytest.fixture
def january(catalog: dict[str, Any]) -> Invoice:
    with time_machine.travel(JAN + timedelta(days=4), tick=False):
        ingest(*(call(f"k-{n}") for n in range(10)))
    with time_machine.travel(FEB_LATER, tick=False):
        return bill_january()


def test_finance_records_a_correction_credit_linked_to_the_invoice(
    january: Invoice, console_user: Any
) -> None:
    client = client_for(console_user, "Finance")
    url = _action_url(january, "record_correction")
    assert "the invoice itself is not changed" in client.get(url).content.decode()
    client.post(url, {"confirm": "yes", "amount": "3", "reason": "wrong seat count"})
    entry = CreditEntry.objects.get()
    assert (entry.invoice, entry.reason_code, entry.amount) == (january, "correction", 300)
    audit = AuditEntry.objects.get(action="credit.grant")
    assert audit.reason == "wrong seat count" and audit.actor_label == "finance-user"
    january.refresh_from_db()
    assert january.status == "finalized"


def test_support_cannot_record_a_correction_or_rerun_an_invoice(
    january: Invoice, console_user: Any
) -> None:
    client = client_for(console_user, "Support")
    for action in ("record_correction", "rerun_invoices", "mark_paid"):
        assert client.get(_action_url(january, action)).status_code == 403, action
    html = client.get(f"/admin/billing/invoice/{january.pk}/change/").content.decode()
    assert "/action/record_correction/" not in html and "/action/rerun_invoices/" not in html


def test_the_rerun_confirmation_page_shows_the_dry_run_diff_before_anything_changes(
    january: Invoice, console_user: Any
) -> None:
    with time_machine.travel(FEB_LATER, tick=False):
        ingest(*(call(f"late-{n}") for n in range(4)))
    client = client_for(console_user, "Finance")
    page = client.get(_action_url(january, "rerun_invoices")).content.decode()
    assert "voided and a new invoice supersedes it" in page
    assert '<td class="num">10</td><td class="num">14</td>' in page
    assert Invoice.objects.count() == 1
    client.post(_action_url(january, "rerun_invoices"), {"confirm": "yes", "reason": "late"})
    january.refresh_from_db()
    assert january.status == "void"
    audit = AuditEntry.objects.get(action="invoice.rerun")
    assert audit.actor_label == "finance-user" and audit.reason == "late"


def test_finance_resolves_and_ignores_drift_findings_and_support_cannot(
    january: Invoice, console_user: Any, catalog: dict[str, Any]
) -> None:
    pytest.importorskip("billing.drift")
    window = BillingWindow.objects.get(pk=january.window_id)
    metric = catalog["metrics"]["api_calls"]
    with time_machine.travel(FEB_LATER, tick=False):
        ingest(call("late-1"))
    finding = DriftFinding.objects.create(
        window=window,
        metric=metric,
        invoice=january,
        invoiced_quantity=10,
        actual_quantity=11,
        delta_amount=1,
    )
    support = client_for(console_user, "Support")
    assert support.get(_action_url(finding, "resolve_findings")).status_code == 403
    assert support.get(_action_url(finding, "ignore_findings")).status_code == 403
    finance = client_for(console_user, "Finance")
    page = finance.get(_action_url(finding, "resolve_findings")).content.decode()
    assert "dry run" in page
    finance.post(_action_url(finding, "resolve_findings"), {"confirm": "yes", "reason": "late"})
    finding.refresh_from_db()
    assert (finding.status, finding.resolution) == ("resolved", "rerun")
    assert AuditEntry.objects.get(action="drift_finding.resolve").actor_label == "finance-user"
    other = DriftFinding.objects.create(
        window=window, metric=metric, kind="payment", delta_amount=0
    )
    finance.post(_action_url(other, "ignore_findings"), {"confirm": "yes", "reason": "handled"})
    other.refresh_from_db()
    assert (other.status, other.resolution_reason) == ("ignored", "handled")


def test_support_replays_a_rejection_once_the_customer_exists_and_finance_cannot(
    catalog: dict[str, Any], console_user: Any
) -> None:
    with time_machine.travel(JAN + timedelta(days=4), tick=False):
        ingest(call("k-new", customer="globex"))
    rejection = IngestRejection.objects.get()
    assert (
        client_for(console_user, "Finance")
        .get(_action_url(rejection, "replay_rejections"))
        .status_code
        == 403
    )
    CustomerFactory(external_id="globex")
    support = client_for(console_user, "Support")
    with time_machine.travel(JAN + timedelta(days=5), tick=False):
        response = support.post(
            _action_url(rejection, "replay_rejections"), {"confirm": "yes", "reason": "created"}
        )
    assert "Replay: 1 done" in _messages(response)[0]
    rejection.refresh_from_db()
    assert rejection.status == "replayed"
    audit = AuditEntry.objects.get(action="ingest_rejection.replay")
    assert audit.actor_label == "support-user" and audit.reason == "created"


def test_operations_replays_a_dead_webhook_event_and_support_and_finance_cannot(
    catalog: dict[str, Any], console_user: Any
) -> None:
    event = StripeEvent.objects.create(
        stripe_id="evt_dead",
        type="customer.created",
        created=timezone.now(),
        raw_body=b"{}",
        payload={"id": "evt_dead", "type": "customer.created", "data": {"object": {}}},
        status="dead",
        attempts=5,
    )
    for role in ("Support", "Finance"):
        assert (
            client_for(console_user, role).get(_action_url(event, "replay_events")).status_code
            == 403
        ), role
    ops = client_for(console_user, "Operations")
    ops.post(_action_url(event, "replay_events"), {"confirm": "yes", "reason": "handler fixed"})
    audit = AuditEntry.objects.filter(action__startswith="stripe_event").get()
    assert audit.actor_label == "operations-user" and audit.reason == "handler fixed"


def test_a_console_user_without_rights_gets_no_action_buttons(
    catalog: dict[str, Any], console_user: Any
) -> None:
    html = (
        client_for(console_user, "Operations")
        .get(f"/admin/neruba/customer/{catalog['customer'].pk}/change/")
        .content.decode()
    )
    assert "guarded-object-action" not in html
    assert Client().get(_action_url(catalog["customer"], "issue_credit")).status_code == 302
