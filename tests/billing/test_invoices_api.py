from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import transaction
from django.test import Client, override_settings
from rest_framework.test import APIClient

from billing import services
from billing.ledger import credit_grant
from billing.models import CreditEntry, Dispute, Invoice, Refund
from billing.payments import invoice_cash_refresh
from neruba.models import AuditEntry
from tests.billing.helpers import add_events

pytestmark = pytest.mark.django_db

JAN = datetime(2026, 1, 1, tzinfo=UTC)
MAR = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def billed(catalog: dict[str, Any]) -> dict[str, Any]:
    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        timestamps=[JAN + timedelta(hours=h) for h in range(7)],
    )
    services.billing_scan(trigger="command", as_of=MAR + timedelta(hours=2))
    return catalog


def test_an_invoice_has_the_public_shape_with_integer_money_and_decimal_strings(
    api: Callable[..., APIClient], billed: dict[str, Any]
) -> None:
    listing = api("read").get("/api/v1/invoices", {"customer": "acme"})
    assert listing.status_code == 200
    body = listing.json()
    assert set(body) == {"next", "previous", "results"} and len(body["results"]) == 2
    number = body["results"][-1]["number"]
    detail = api("read").get(f"/api/v1/invoices/{number}").json()
    assert set(detail) == {
        "number",
        "customer",
        "status",
        "period_start",
        "period_end",
        "currency",
        "subtotal",
        "credits_applied",
        "total",
        "amount_paid",
        "amount_refunded",
        "amount_disputed",
        "amount_collected",
        "lines",
    }
    assert detail["customer"] == "acme" and detail["status"] == "finalized"
    # Nothing arrived yet, nothing went back.
    assert [detail[k] for k in ("amount_paid", "amount_refunded", "amount_disputed")] == [0, 0, 0]
    assert detail["amount_collected"] == 0
    assert detail["period_start"].startswith("2026-01-01")
    assert detail["lines"][0] == {
        "metric": None,
        "description": "Pro base fee",
        "quantity": "1",
        "unit_amount": "1000",
        "amount": 1000,
    }
    calls = next(line for line in detail["lines"] if line["metric"] == "api_calls")
    assert (calls["quantity"], calls["unit_amount"], calls["amount"]) == ("7", "0.5", 4)
    assert detail["subtotal"] == detail["total"] == 1004


def test_invoices_filter_by_status_and_an_unknown_number_is_a_404(
    api: Callable[..., APIClient], billed: dict[str, Any]
) -> None:
    client = api("read")
    assert client.get("/api/v1/invoices", {"status": "paid"}).json()["results"] == []
    assert len(client.get("/api/v1/invoices", {"status": "finalized"}).json()["results"]) == 2
    missing = client.get("/api/v1/invoices/NER-1999-000001")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "invoice_not_found"


@pytest.mark.parametrize(
    "path",
    ["/api/v1/invoices", "/api/v1/customers/acme/credits", "/api/v1/customers/acme/usage"],
)
def test_billing_reads_need_a_key_with_the_read_scope(
    api: Callable[..., APIClient], catalog: dict[str, Any], path: str
) -> None:
    assert api(None).get(path).status_code == 401
    denied = api("ingest").get(path)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "missing_scope"
    assert api("read").get(path).status_code == 200


def test_credits_show_the_balance_per_currency_and_the_entries(
    api: Callable[..., APIClient], catalog: dict[str, Any]
) -> None:
    credit_grant(
        customer=catalog["customer"], amount=1500, reason_code="goodwill", actor=None, reason="x"
    )
    services.billing_scan(trigger="command", as_of=datetime(2026, 2, 1, 2, tzinfo=UTC))
    body = api("read").get("/api/v1/customers/acme/credits").json()
    assert body["customer"] == "acme"
    assert body["balances"] == [{"currency": "USD", "balance": 500}]
    assert [(e["kind"], e["amount"]) for e in body["entries"]] == [
        ("consumption", -1000),
        ("grant", 1500),
    ]
    assert body["entries"][0]["invoice"].startswith("NER-")
    assert api("read").get("/api/v1/customers/nobody/credits").status_code == 404


def test_usage_shows_the_open_window_quantities_and_amount_so_far(
    api: Callable[..., APIClient], catalog: dict[str, Any]
) -> None:
    now = datetime(2026, 3, 15, 12, tzinfo=UTC)
    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        timestamps=[MAR + timedelta(days=d) for d in range(10)],
    )
    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["compute_seconds"],
        timestamps=[MAR + timedelta(days=1)],
        value="120",
    )
    with time_machine.travel(now, tick=False):
        body = api("read").get("/api/v1/customers/acme/usage").json()
    [window] = body["windows"]
    assert window["plan"] == "pro" and window["currency"] == "USD"
    assert window["period_start"].startswith("2026-03-01")
    assert window["period_end"].startswith("2026-04-01")
    quantities = {line["metric"]: line["quantity"] for line in window["lines"]}
    assert quantities == {None: "1", "api_calls": "10", "compute_seconds": "120"}
    # 1000 base + 10 x 0.5 + (100 x 1 + 20 x 0.5)
    assert window["amount"] == 1000 + 5 + 110


@pytest.mark.django_db
def test_usage_so_far_counts_distinct_values_as_invoicing_does() -> None:
    from datetime import UTC, datetime

    from billing.usage import usage_between
    from ingest.models import UsageEvent
    from tests.factories import CustomerFactory, MetricFactory

    customer = CustomerFactory()
    users = MetricFactory(code="mau", aggregation="unique_count", field="user_id")
    at = datetime(2026, 11, 2, tzinfo=UTC)
    for n, distinct in enumerate(["u1", "u2", "u1", ""]):
        UsageEvent.objects.create(
            idempotency_key=f"k{n}",
            customer=customer,
            metric=users,
            timestamp=at,
            distinct_value=distinct,
            payload_hash="x",
        )
    quantities = usage_between(
        customer_id=customer.pk,
        metric_aggregations={users.pk: "unique_count"},
        start=datetime(2026, 11, 1, tzinfo=UTC),
        end=datetime(2026, 12, 1, tzinfo=UTC),
    )
    assert quantities[users.pk] == 2


def test_an_invoice_shows_what_was_paid_refunded_lost_in_disputes_and_collected(
    api: Callable[..., APIClient], billed: dict[str, Any]
) -> None:
    invoice = Invoice.objects.filter(customer__external_id="acme").order_by("id").first()
    services.invoice_mark_paid(invoice=invoice, actor=None, reason="wire transfer")
    Refund.objects.create(
        stripe_refund_id="re_api",
        charge_id="ch_api",
        customer=invoice.customer,
        invoice=invoice,
        amount=300,
        currency="USD",
        status="succeeded",
    )
    Dispute.objects.create(
        stripe_dispute_id="dp_api",
        charge_id="ch_api",
        customer=invoice.customer,
        invoice=invoice,
        amount=200,
        currency="USD",
        status="lost",
    )
    with transaction.atomic():
        invoice_cash_refresh(invoice=Invoice.objects.select_for_update().get(pk=invoice.pk))
    body = api("read").get(f"/api/v1/invoices/{invoice.number}").json()
    assert (body["total"], body["amount_paid"]) == (invoice.total, invoice.total)
    assert (body["amount_refunded"], body["amount_disputed"]) == (300, 200)
    assert body["amount_collected"] == invoice.total - 500


def test_a_credit_is_granted_over_the_api_only_in_the_customers_currency(
    api: Callable[..., APIClient], catalog: dict[str, Any]
) -> None:
    url = "/api/v1/customers/acme/credits"
    grant = {"amount": 250, "reason_code": "refund_as_credit", "reason": "credit, not a refund"}
    assert api("read").post(url, grant, format="json").status_code == 403

    refused = api("write").post(url, {**grant, "currency": "XYZ"}, format="json")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "credit_currency_mismatch"
    assert error["details"] == {"currency": "XYZ", "customer_currency": "USD"}
    assert "USD" in error["message"]

    cash = api("write").post(url, {**grant, "reason_code": "refund"}, format="json")
    assert cash.status_code == 400 and cash.json()["error"]["code"] == "validation_error"
    assert not CreditEntry.objects.exists()

    created = api("write").post(url, grant, format="json")
    assert created.status_code == 201
    assert (created.json()["amount"], created.json()["currency"]) == (250, "USD")
    assert created.json()["reason_code"] == "refund_as_credit"
    entry = AuditEntry.objects.get(action="credit.grant")
    assert entry.actor_label.startswith("api_key:") and entry.reason == "credit, not a refund"


@override_settings(NERUBA_API_DOCS="public")
def test_the_openapi_schema_documents_the_cash_amounts_and_the_credit_grant(
    client: Client,
) -> None:
    schema = json.loads(client.get("/openapi.json").content)
    invoice = schema["components"]["schemas"]["InvoiceOutput"]
    for name in ("amount_paid", "amount_refunded", "amount_disputed", "amount_collected"):
        assert invoice["properties"][name]["type"] == "integer", name
    grant = schema["paths"]["/api/v1/customers/{external_id}/credits"]["post"]
    assert "credit_currency_mismatch" in grant["description"]
    assert {"201", "400", "404"} <= set(grant["responses"])
