"""The customer page as the hub: everything about one customer, one page, bounded queries.

Each list is the newest ``limit`` rows through an index on the customer (or its external id for
ingest rejections, which may name a customer that does not exist yet) and links to the full,
filtered list; nothing counts a big table. The one panel whose cost grows with the customer's
traffic, usage so far in the open window (an aggregate over every event in it), is billing's
``usage_current`` served as its own fragment (``customer_usage``), so a big customer's page
does not wait for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db.models import Model

from billing.models import CreditEntry, Dispute, Invoice, PaymentFinding, Refund, Subscription
from billing.selectors import cash_totals, credit_balances
from ingest.models import EventCorrection, IngestRejection, UsageEvent
from neruba.models import AuditEntry, Customer, SupportNote
from webhooks.models import StripeEvent

LIMIT = 10


@dataclass
class Section:
    key: str
    title: str
    rows: list[Any]
    full_list: tuple[str, str] | None = None  # (admin url name, query string)
    limit: int = LIMIT

    @property
    def truncated(self) -> bool:
        return len(self.rows) > self.limit

    @property
    def shown(self) -> list[Any]:
        return self.rows[: self.limit]


@dataclass
class CustomerHub:
    customer: Customer
    balances: dict[str, int]
    # Cash on the customer's invoices per currency (paid, refunded, disputed, collected): money
    # that moved on the card, shown apart from the spendable credit balance.
    cash: list[dict[str, Any]] = field(default_factory=list)
    sections: dict[str, Section] = field(default_factory=dict)


def _newest(qs: Any, limit: int) -> list[Any]:
    # One row past the limit tells "there is more" without a COUNT.
    return list(qs[: limit + 1])


def customer_hub(*, customer: Customer, limit: int = LIMIT) -> CustomerHub:
    by_pk = f"?customer__id__exact={customer.pk}"
    hub = CustomerHub(
        customer=customer,
        balances=credit_balances(customer=customer),
        cash=cash_totals(customer=customer),
    )
    specs: list[tuple[str, str, Any, tuple[str, str] | None]] = [
        (
            "subscriptions",
            "Subscriptions",
            Subscription.objects.filter(customer=customer).select_related("plan"),
            ("billing_subscription_changelist", f"?q={customer.external_id}"),
        ),
        (
            "invoices",
            "Invoices",
            Invoice.objects.filter(customer=customer).order_by("-issued_at", "-id"),
            ("billing_invoice_changelist", by_pk),
        ),
        (
            "credits",
            "Credit ledger",
            CreditEntry.objects.filter(customer=customer)
            .select_related("invoice", "actor")
            .order_by("-created_at", "-id"),
            ("billing_creditentry_changelist", by_pk),
        ),
        (
            "refunds",
            "Refunds",
            Refund.objects.filter(customer=customer).select_related("invoice").order_by("-id"),
            ("billing_refund_changelist", by_pk),
        ),
        (
            "disputes",
            "Disputes",
            Dispute.objects.filter(customer=customer).select_related("invoice").order_by("-id"),
            ("billing_dispute_changelist", by_pk),
        ),
        (
            "payment_findings",
            "Payment findings (charges that returned more than they collected)",
            PaymentFinding.objects.filter(customer=customer)
            .select_related("invoice")
            .order_by("-created_at", "-id"),
            ("billing_paymentfinding_changelist", by_pk),
        ),
        (
            "events",
            "Recent usage events",
            UsageEvent.objects.filter(customer=customer)
            .select_related("metric")
            .order_by("-timestamp"),
            ("ingest_usageevent_changelist", by_pk),
        ),
        (
            "corrections",
            "Usage corrections",
            EventCorrection.objects.filter(event__customer=customer)
            .select_related("event__metric")
            .order_by("-created_at", "-id"),
            ("ingest_eventcorrection_changelist", f"?q={customer.external_id}"),
        ),
        (
            "rejections",
            "Recent ingest rejections",
            IngestRejection.objects.filter(customer_ref=customer.external_id).order_by(
                "-created_at", "-id"
            ),
            ("ingest_ingestrejection_changelist", f"?customer_ref={customer.external_id}"),
        ),
        (
            "webhooks",
            "Stripe webhook events",
            StripeEvent.objects.filter(customer=customer)
            .defer("raw_body", "payload", "headers")
            .order_by("-received_at", "-id"),
            ("webhooks_stripeevent_changelist", by_pk),
        ),
        (
            "audit",
            "Audit trail",
            AuditEntry.objects.filter(customer=customer).order_by("-created_at", "-id"),
            ("neruba_auditentry_changelist", by_pk),
        ),
    ]
    for key, title, qs, full_list in specs:
        hub.sections[key] = Section(key, title, _newest(qs, limit), full_list, limit)
    return hub


def notes_for(*, target: Model, limit: int = 50) -> list[SupportNote]:
    """Notes on one record, newest first (a customer's page also shows notes on its records)."""
    if isinstance(target, Customer):
        qs = SupportNote.objects.filter(customer=target)
    else:
        qs = SupportNote.objects.filter(
            content_type=ContentType.objects.get_for_model(target), object_id=str(target.pk)
        )
    return list(qs.select_related("author", "content_type").order_by("-created_at", "-id")[:limit])
