"""Payment reconciliation through the real stripe SDK, with only its HTTP client replaced."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any
from urllib.parse import urlsplit

import pytest
import stripe
import stripe._stripe_client as stripe_client_module
import time_machine
from django.conf import settings
from django.core.management import call_command

from billing import services
from billing.models import DriftFinding, Invoice
from billing.reconcile import reconciliation_sweep
from neruba.models import AuditEntry
from operations.models import SweepRun
from tests.billing.helpers import add_events

pytestmark = pytest.mark.django_db

ISSUED = datetime(2026, 2, 1, 2, tzinfo=UTC)
PAID_AT = datetime(2026, 2, 2, 9, tzinfo=UTC)


class StripeInvoices(stripe.HTTPClient):
    """Answers ``GET /v1/invoices/<id>`` from a dict of invoices (404 for unknown ids) and
    records every request the SDK sends."""

    name = "stripe-invoices"

    def __init__(self, invoices: dict[str, dict[str, Any]]) -> None:
        super().__init__()
        self.invoices = invoices
        self.requests: list[tuple[str, str]] = []

    def request(
        self, method: str, url: str, headers: Any, post_data: Any = None, *, _usage: Any = None
    ) -> tuple[str, int, dict[str, str]]:
        path = urlsplit(url).path
        self.requests.append((method, path))
        invoice_id = path.rsplit("/", 1)[-1]
        if method != "get" or invoice_id not in self.invoices:
            error = {"type": "invalid_request_error", "code": "resource_missing", "message": "no"}
            return json.dumps({"error": error}), 404, {}
        return (
            json.dumps({"id": invoice_id, "object": "invoice", **self.invoices[invoice_id]}),
            200,
            {},
        )

    def close(self) -> None:
        return None


@pytest.fixture(autouse=True)
def _later() -> Iterator[None]:
    with time_machine.travel(ISSUED + timedelta(days=4), tick=True):
        yield


@pytest.fixture
def stripe_http(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Stripe "enabled" with the SDK's default HTTP client replaced by ``StripeInvoices``."""
    http = StripeInvoices({})
    monkeypatch.setitem(settings.NERUBA, "STRIPE_SECRET_KEY", "sk_test_123")
    monkeypatch.setattr(stripe_client_module, "new_default_http_client", lambda **kw: http)
    return http


def _pushed(catalog: dict[str, Any], stripe_id: str, *, start: datetime) -> Invoice:
    """An invoice billed by the scan, then recorded as pushed to Stripe (as the outbox does)."""
    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        timestamps=[start + timedelta(days=1)] * 10,
    )
    with time_machine.travel(start + timedelta(days=31, hours=2), tick=False):
        services.billing_scan(trigger="command")
    invoice = Invoice.objects.get(period_start=start)
    Invoice.objects.filter(pk=invoice.pk).update(provider="stripe", provider_invoice_id=stripe_id)
    invoice.refresh_from_db()
    return invoice


def test_a_missing_invoice_paid_webhook_is_made_good_by_reconciliation(
    catalog: dict[str, Any], stripe_http: StripeInvoices
) -> None:
    invoice = _pushed(catalog, "in_paid", start=datetime(2026, 1, 1, tzinfo=UTC))
    stripe_http.invoices["in_paid"] = {
        "status": "paid",
        "amount_due": invoice.total,
        "status_transitions": {"paid_at": int(PAID_AT.timestamp())},
    }
    out = StringIO()

    call_command("sweep", "--only", "reconciliation", stdout=out)

    invoice.refresh_from_db()
    assert (invoice.status, invoice.paid_at) == ("paid", PAID_AT)
    assert stripe_http.requests == [("get", "/v1/invoices/in_paid")]
    entry = AuditEntry.objects.get(action="invoice.payment_status")
    assert entry.actor is None and "reconciliation" in entry.reason
    assert "reconciliation: succeeded" in out.getvalue() and "corrected=1" in out.getvalue()
    run = SweepRun.objects.get()
    assert (run.trigger, run.counts["corrected"], run.findings) == ("command", 1, 0)

    call_command("sweep", "--only", "reconciliation", stdout=StringIO())
    assert len(stripe_http.requests) == 1, "a paid invoice is not asked about again"


def test_invoices_not_yet_past_the_reconcile_delay_are_left_to_the_webhooks(
    catalog: dict[str, Any], stripe_http: StripeInvoices
) -> None:
    _pushed(catalog, "in_recent", start=datetime(2026, 1, 1, tzinfo=UTC))
    with time_machine.travel(ISSUED + timedelta(days=1), tick=False):
        counts = reconciliation_sweep(lease=None)
    assert counts["checked"] == 0 and stripe_http.requests == []


def test_what_cannot_be_brought_in_step_becomes_one_payment_finding(
    catalog: dict[str, Any], stripe_http: StripeInvoices
) -> None:
    catalog["subscription"].started_at = datetime(2025, 11, 1, tzinfo=UTC)
    catalog["subscription"].save()
    draft = _pushed(catalog, "in_draft", start=datetime(2026, 1, 1, tzinfo=UTC))
    stripe_http.invoices["in_draft"] = {"status": "draft", "amount_due": draft.total}
    Invoice.objects.filter(pk=draft.pk).update(status_changed_at=ISSUED - timedelta(days=30))
    gone = _pushed(catalog, "in_gone", start=datetime(2025, 12, 1, tzinfo=UTC))
    Invoice.objects.filter(pk=gone.pk).update(status_changed_at=ISSUED - timedelta(days=30))
    still_open = _pushed(catalog, "in_open", start=datetime(2025, 11, 1, tzinfo=UTC))
    stripe_http.invoices["in_open"] = {"status": "open", "amount_due": still_open.total}
    Invoice.objects.filter(pk=still_open.pk).update(status_changed_at=ISSUED - timedelta(days=30))

    dry = reconciliation_sweep(lease=None, dry_run=True)
    assert (dry["findings"], dry["open"]) == (2, 1) and not DriftFinding.objects.exists()

    first = reconciliation_sweep(lease=None)
    second = reconciliation_sweep(lease=None)

    assert (first["checked"], first["findings"], first["open"]) == (3, 2, 1)
    assert (second["findings"], second["updated"]) == (0, 0), "repeating finds nothing new"
    findings = {f.invoice.provider_invoice_id: f for f in DriftFinding.objects.all()}
    assert set(findings) == {"in_draft", "in_gone"}
    assert all(f.kind == "payment" and f.status == "open" for f in findings.values())
    assert "draft" in findings["in_draft"].detail
    assert "no invoice" in findings["in_gone"].detail
    assert set(Invoice.objects.values_list("status", flat=True)) == {"finalized"}


def test_without_stripe_keys_reconciliation_asks_nobody(catalog: dict[str, Any]) -> None:
    _pushed(catalog, "in_x", start=datetime(2026, 1, 1, tzinfo=UTC))
    assert reconciliation_sweep(lease=None)["checked"] == 0


def test_void_at_stripe_is_applied_and_a_different_amount_due_becomes_a_finding(
    catalog: dict[str, Any], stripe_http: StripeInvoices
) -> None:
    catalog["subscription"].started_at = datetime(2025, 12, 1, tzinfo=UTC)
    catalog["subscription"].save()
    voided = _pushed(catalog, "in_void", start=datetime(2026, 1, 1, tzinfo=UTC))
    stripe_http.invoices["in_void"] = {"status": "void", "amount_due": voided.total}
    edited = _pushed(catalog, "in_edited", start=datetime(2025, 12, 1, tzinfo=UTC))
    Invoice.objects.filter(pk=edited.pk).update(status_changed_at=ISSUED - timedelta(days=30))
    stripe_http.invoices["in_edited"] = {"status": "open", "amount_due": edited.total + 500}

    counts = reconciliation_sweep(lease=None)

    voided.refresh_from_db()
    assert voided.status == "void" and voided.voided_at is not None
    finding = DriftFinding.objects.get()
    assert (finding.kind, finding.invoice) == ("payment", edited)
    assert str(edited.total + 500) in finding.detail
    assert (counts["corrected"], counts["findings"]) == (1, 1)
