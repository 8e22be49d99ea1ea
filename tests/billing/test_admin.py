from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client

from billing import services
from billing.models import CreditEntry, Invoice
from neruba.models import AuditEntry
from tests.billing.helpers import add_events

pytestmark = pytest.mark.django_db

JAN = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def invoice(catalog: dict[str, Any]) -> Invoice:
    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        timestamps=[JAN + timedelta(days=2)] * 10,
    )
    services.billing_scan(trigger="command", as_of=datetime(2026, 2, 1, 2, tzinfo=UTC))
    return Invoice.objects.get()


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _action(client: Client, invoice: Invoice, action: str, **extra: str) -> Any:
    return client.post(
        "/admin/billing/invoice/",
        {"action": action, "_selected_action": [str(invoice.pk)], **extra},
    )


@pytest.mark.parametrize(
    "path",
    [
        "/admin/billing/invoice/",
        "/admin/billing/billingwindow/",
        "/admin/billing/billingrun/",
        "/admin/billing/creditentry/",
        "/admin/billing/refund/",
        "/admin/billing/dispute/",
        "/admin/billing/driftfinding/",
    ],
)
def test_support_sees_the_billing_lists(console_user: Any, invoice: Invoice, path: str) -> None:
    assert _client(console_user("Support")).get(path).status_code == 200


def test_operations_sees_the_provider_outbox_and_support_does_not(
    console_user: Any, invoice: Invoice
) -> None:
    assert (
        _client(console_user("Operations")).get("/admin/billing/providersync/").status_code == 200
    )
    assert _client(console_user("Support")).get("/admin/billing/providersync/").status_code == 403


def test_an_invoice_page_shows_lines_credits_window_and_run_read_only(
    console_user: Any, invoice: Invoice
) -> None:
    page = _client(console_user("Support")).get(f"/admin/billing/invoice/{invoice.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert invoice.number in html and "Pro base fee" in html
    assert f"/admin/billing/billingwindow/{invoice.window_id}/change/" in html
    assert f"/admin/billing/billingrun/{invoice.run_id}/change/" in html
    assert 'name="_save"' not in html


def test_support_cannot_issue_a_credit_and_finance_can(console_user: Any, invoice: Invoice) -> None:
    form = {
        "customer": invoice.customer.external_id,
        "amount": "5.00",
        "currency": "",
        "reason_code": "goodwill",
        "note": "outage on the 3rd",
    }
    support = _client(console_user("Support"))
    assert support.get("/admin/billing/creditentry/add/").status_code == 403
    assert support.post("/admin/billing/creditentry/add/", form).status_code == 403
    assert not CreditEntry.objects.exists()

    finance = _client(console_user("Finance"))
    response = finance.post("/admin/billing/creditentry/add/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = CreditEntry.objects.get()
    assert (entry.amount, entry.currency, entry.kind, entry.reason_code) == (
        500,
        "USD",
        "grant",
        "goodwill",
    )
    audit = AuditEntry.objects.get(action="credit.grant")
    assert audit.actor.username == "finance-user" and audit.reason == "outage on the 3rd"


def test_support_cannot_rerun_an_invoice(console_user: Any, invoice: Invoice) -> None:
    support = _client(console_user("Support"))
    assert _action(support, invoice, "rerun_invoices").status_code == 403
    assert _action(support, invoice, "mark_paid", confirm="yes", reason="x").status_code == 403
    invoice.refresh_from_db()
    assert invoice.status == "finalized"


def test_finance_reruns_after_a_confirmation_that_shows_the_diff(
    console_user: Any, invoice: Invoice, catalog: dict[str, Any]
) -> None:
    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        timestamps=[JAN + timedelta(days=5)] * 10,
    )
    finance = _client(console_user("Finance"))
    preview = _action(finance, invoice, "rerun_invoices")
    assert preview.status_code == 200
    html = preview.content.decode()
    assert "voided and a new invoice supersedes it" in html
    assert '<td class="num">10</td><td class="num">20</td>' in html
    missing_reason = _action(finance, invoice, "rerun_invoices", confirm="yes")
    assert missing_reason.status_code == 200 and Invoice.objects.count() == 1
    done = _action(finance, invoice, "rerun_invoices", confirm="yes", reason="late events")
    assert done.status_code == 302
    invoice.refresh_from_db()
    assert invoice.status == "void" and invoice.superseded_by.subtotal == 1010


def test_finance_marks_an_invoice_paid_through_the_guarded_action(
    console_user: Any, invoice: Invoice
) -> None:
    finance = _client(console_user("Finance"))
    assert _action(finance, invoice, "mark_paid", confirm="yes", reason="wire").status_code == 302
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert AuditEntry.objects.get(action="invoice.mark_paid").reason == "wire"
