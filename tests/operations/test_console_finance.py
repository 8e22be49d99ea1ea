"""Finance screens: the credit ledger and the audit log with filters and CSV export; invoice
totals per status and currency."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine

from billing.ledger import credit_grant
from billing.models import Invoice
from neruba.models import AuditEntry
from tests.factories import CustomerFactory
from tests.operations.console import FEB_LATER, JAN, bill_january, call, client_for, ingest

pytestmark = pytest.mark.django_db

LEDGER = "/admin/billing/creditentry/"
AUDIT = "/admin/neruba/auditentry/"


@pytest.fixture
def ledger(catalog: dict[str, Any], console_user: Any) -> dict[str, Any]:
    finance = console_user("Finance")
    globex = CustomerFactory(external_id="globex", name="Globex")
    with time_machine.travel(datetime(2026, 3, 1, tzinfo=UTC), tick=False):
        credit_grant(
            customer=catalog["customer"],
            amount=100,
            reason_code="goodwill",
            actor=finance,
            reason="march outage",
        )
    with time_machine.travel(datetime(2026, 4, 1, tzinfo=UTC), tick=False):
        credit_grant(
            customer=catalog["customer"],
            amount=200,
            reason_code="correction",
            actor=None,
            reason="=cmd|' /C calc'!A0",
        )
        credit_grant(
            customer=globex, amount=300, reason_code="goodwill", actor=finance, reason="april"
        )
    return {"finance": finance, "globex": globex, **catalog}


def _csv(response: Any) -> list[dict[str, str]]:
    assert response["Content-Type"].startswith("text/csv")
    assert response.streaming
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_the_ledger_filters_by_customer_actor_reason_code_and_date_range(
    ledger: dict[str, Any], console_user: Any
) -> None:
    client = client_for(console_user, "Support")
    html = client.get(LEDGER + "?customer=acme").content.decode()
    assert "march outage" in html and "april" not in html
    html = client.get(LEDGER + "?reason_code__exact=goodwill&since=2026-04-01").content.decode()
    assert "april" in html and "march outage" not in html
    html = client.get(LEDGER + "?actor=finance-user&until=2026-03-01").content.decode()
    assert "march outage" in html and "april" not in html
    assert client.get(LEDGER + "?since=not-a-date").status_code in (200, 302)


def test_finance_exports_exactly_the_filtered_ledger_rows_as_csv_and_the_export_is_audited(
    ledger: dict[str, Any], console_user: Any
) -> None:
    client = client_for(console_user, "Finance")
    html = client.get(LEDGER + "?customer=acme").content.decode()
    assert 'href="/admin/billing/creditentry/export.csv?customer=acme"' in html
    rows = _csv(client.get(LEDGER + "export.csv?customer=acme"))
    assert [
        (r["customer"], r["amount"], r["amount_minor_units"], r["reason_code"]) for r in rows
    ] == [
        ("acme", "2.00", "200", "correction"),
        ("acme", "1.00", "100", "goodwill"),
    ]
    assert rows[0]["note"].startswith("'=")  # no formula reaches a spreadsheet
    export = AuditEntry.objects.get(action="export.csv")
    assert export.actor_label == "finance-user" and "customer=acme" in export.reason


@pytest.mark.parametrize("role", ["Support", "Operations"])
def test_support_and_operations_cannot_export_the_ledger_or_the_audit_log(
    ledger: dict[str, Any], console_user: Any, role: str
) -> None:
    client = client_for(console_user, role)
    for url in (LEDGER, AUDIT):
        assert 'id="export-csv"' not in client.get(url).content.decode()
        assert client.get(url + "export.csv").status_code == 403
    assert not AuditEntry.objects.filter(action="export.csv").exists()


def test_the_audit_log_filters_by_customer_actor_action_reason_code_and_date(
    ledger: dict[str, Any], console_user: Any
) -> None:
    client = client_for(console_user, "Finance")
    html = client.get(AUDIT + "?actor=finance-user&action=credit.grant").content.decode()
    assert "march outage" in html and "april" in html and "=cmd" not in html
    html = client.get(AUDIT + "?customer=globex").content.decode()
    assert "april" in html and "march outage" not in html
    html = client.get(AUDIT + "?reason_code=correction").content.decode()
    assert "=cmd" in html and "april" not in html
    html = client.get(AUDIT + "?since=2026-04-01&until=2026-04-01").content.decode()
    assert "april" in html and "march outage" not in html
    rows = _csv(client.get(AUDIT + "export.csv?reason_code=goodwill&customer=acme"))
    assert [(r["action"], r["reason"], r["reason_code"]) for r in rows] == [
        ("credit.grant", "march outage", "goodwill")
    ]


def test_audit_entries_cannot_be_changed_or_deleted_from_the_console(
    ledger: dict[str, Any], console_user: Any
) -> None:
    entry = AuditEntry.objects.first()
    client = client_for(console_user, "superuser")
    assert client.post(f"{AUDIT}{entry.pk}/change/", {"reason": "x"}).status_code == 403
    assert client.post(f"{AUDIT}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.get(AUDIT + "add/").status_code == 403
    entry.refresh_from_db()
    assert entry.reason != "x"


def test_the_invoice_list_shows_totals_per_status_and_currency_of_the_filtered_rows(
    catalog: dict[str, Any], console_user: Any
) -> None:
    with time_machine.travel(JAN + timedelta(days=4), tick=False):
        ingest(*(call(f"k-{n}") for n in range(10)))
    with time_machine.travel(FEB_LATER, tick=False):
        invoice = bill_january()
    client = client_for(console_user, "Finance")
    html = client.get("/admin/billing/invoice/").content.decode()
    totals = html[html.index('id="invoice-totals"') :]
    assert "<td>finalized</td><td>USD</td><td>1</td>" in totals
    assert f"<strong>${invoice.total / 100:.2f}</strong>" in totals
    html = client.get("/admin/billing/invoice/?status__exact=paid").content.decode()
    assert 'id="invoice-totals"' not in html
    assert Invoice.objects.count() == 1
