"""Webhook test helpers: signed deliveries of real Stripe shapes, and invoices made with the ORM
(billing's invoice services are written separately; these tests only need the rows)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

from django.test import Client

from billing.models import BillingWindow, Invoice
from neruba.models import Customer
from tests import factories
from webhooks.samples import event_body, sign, stripe_event, stripe_object

SECRET = "whsec_test_primary_secret_a1b2"
OLD_SECRET = "whsec_test_rotated_out_secret_c3d4"
URL = "/webhooks/stripe"

_numbers = itertools.count(1)


def post(client: Client, body: bytes, signature: str | None) -> Any:
    extra = {} if signature is None else {"HTTP_STRIPE_SIGNATURE": signature}
    return client.post(URL, data=body, content_type="application/json", **extra)


def delivery(
    obj: dict[str, Any],
    *,
    type: str,
    id: str | None = None,
    created: int | None = None,
    secret: str = SECRET,
    timestamp: int | None = None,
) -> tuple[bytes, str]:
    """(body, Stripe-Signature) for ``obj`` wrapped in an event envelope."""
    event = stripe_event(obj, type=type, id=id or f"evt_test_{next(_numbers)}", created=created)
    body = event_body(event)
    return body, sign(body, secret, timestamp)


def invoice_event(
    invoice: Invoice, *, type: str, id: str | None = None, created: int | None = None, **fields: Any
) -> tuple[bytes, str]:
    obj = stripe_object(
        "invoice",
        id=invoice.provider_invoice_id or "in_unknown",
        customer=invoice.customer.stripe_customer_id or "cus_QXg1o8vcGmoR32",
        **fields,
    )
    return delivery(obj, type=type, id=id, created=created)


def make_invoice(
    *,
    customer: Customer | None = None,
    provider_invoice_id: str = "",
    status: str = Invoice.Status.FINALIZED,
    total: int = 5000,
) -> Invoice:
    n = next(_numbers)
    customer = customer or factories.CustomerFactory(
        external_id=f"wh-cust-{n}", stripe_customer_id=f"cus_test_{n}"
    )
    subscription = factories.SubscriptionFactory(customer=customer)
    start = datetime(2026, 1, 1, tzinfo=UTC).replace(month=1 + n % 12)
    end = start.replace(day=28)
    window = BillingWindow.objects.create(
        subscription=subscription, period_start=start, period_end=end
    )
    return Invoice.objects.create(
        number=f"NRB-WH-{n:05d}",
        customer=customer,
        subscription=subscription,
        window=window,
        status=status,
        currency="USD",
        period_start=start,
        period_end=end,
        subtotal=total,
        total=total,
        provider="stripe",
        provider_invoice_id=provider_invoice_id or f"in_test_{n}",
    )


def payload(body: bytes) -> dict[str, Any]:
    return json.loads(body)
