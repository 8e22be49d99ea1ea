from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Prefetch, Q, QuerySet, Sum
from django.utils import timezone

from billing.drafts import WindowRow, invoice_draft
from billing.exceptions import InvoiceNotFound, PlanNotFound
from billing.models import (
    CreditEntry,
    Invoice,
    InvoiceLine,
    Plan,
    Price,
    Subscription,
)
from billing.periods import period_current
from billing.usage import usage_between
from neruba.models import Customer


def plan_list() -> QuerySet[Plan]:
    return Plan.objects.prefetch_related(
        Prefetch("prices", queryset=Price.objects.select_related("metric"))
    )


def plan_get(*, code: str) -> Plan:
    try:
        return plan_list().get(code=code)
    except Plan.DoesNotExist:
        raise PlanNotFound(details={"plan": code}) from None


def subscription_list(*, customer_external_id: str | None = None) -> QuerySet[Subscription]:
    qs = Subscription.objects.select_related("customer", "plan")
    if customer_external_id:
        qs = qs.filter(customer__external_id=customer_external_id)
    return qs


def invoice_list(
    *, customer_external_id: str | None = None, status: str | None = None
) -> QuerySet[Invoice]:
    qs = Invoice.objects.select_related("customer").prefetch_related(
        Prefetch("lines", queryset=InvoiceLine.objects.select_related("metric"))
    )
    if customer_external_id:
        qs = qs.filter(customer__external_id=customer_external_id)
    if status:
        qs = qs.filter(status=status)
    return qs


def invoice_get(*, number: str) -> Invoice:
    try:
        return invoice_list().get(number=number)
    except Invoice.DoesNotExist:
        raise InvoiceNotFound(details={"number": number}) from None


def invoice_by_provider_id(*, provider_invoice_id: str) -> Invoice | None:
    """The invoice pushed to the provider under that id (e.g. Stripe's ``in_...``)."""
    if not provider_invoice_id:
        return None
    return Invoice.objects.filter(provider_invoice_id=provider_invoice_id).first()


def credit_balances(*, customer: Customer) -> dict[str, int]:
    rows = (
        CreditEntry.objects.filter(customer=customer)
        .values("currency")
        .annotate(total=Sum("amount"))
        .order_by("currency")
    )
    return {row["currency"]: int(row["total"] or 0) for row in rows}


def cash_totals(*, customer: Customer) -> list[dict[str, Any]]:
    """Per currency, the cash story of the customer's invoices (void ones excluded): charged,
    paid, refunded, lost in disputes and collected net, in minor units. One GROUP BY over the
    customer's invoice index."""
    rows = (
        Invoice.objects.filter(customer=customer)
        .exclude(status=Invoice.Status.VOID)
        .values("currency")
        .annotate(
            charged=Sum("total"),
            paid=Sum("amount_paid"),
            refunded=Sum("amount_refunded"),
            disputed=Sum("amount_disputed"),
            collected=Sum("amount_collected"),
        )
        .order_by("currency")
    )
    keys = ("charged", "paid", "refunded", "disputed", "collected")
    return [{"currency": r["currency"], **{k: int(r[k] or 0) for k in keys}} for r in rows]


def credit_entries(*, customer: Customer) -> QuerySet[CreditEntry]:
    return CreditEntry.objects.filter(customer=customer).select_related("invoice")


@dataclass
class CurrentUsage:
    subscription: Subscription
    period_start: datetime
    period_end: datetime
    lines: list[dict[str, Any]]
    subtotal: int


def usage_current(*, customer: Customer, at: datetime | None = None) -> list[CurrentUsage]:
    """The open window of each active subscription: quantities so far and the amount they
    would bill at (base fee included), aggregated in the database."""
    at = at or timezone.now()
    prices = prices_by_plan()
    out: list[CurrentUsage] = []
    subscriptions = (
        Subscription.objects.filter(customer=customer, started_at__lte=at)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=at))
        .select_related("plan", "customer")
        .order_by("started_at", "id")
    )
    for subscription in subscriptions:
        bounds = period_current(
            interval=subscription.plan.interval,
            started_at=subscription.started_at,
            ended_at=subscription.ended_at,
            at=at,
        )
        if bounds is None:
            continue
        plan_prices = prices.get(subscription.plan_id, [])
        usage = usage_between(
            customer_id=customer.pk,
            metric_aggregations={p.metric_id: p.metric.aggregation for p in plan_prices},
            start=bounds[0],
            end=min(bounds[1], at + timedelta(microseconds=1)),
        )
        window = WindowRow(
            id=None,
            subscription_id=subscription.pk,
            customer_id=customer.pk,
            plan=subscription.plan,
            period_start=bounds[0],
            period_end=bounds[1],
        )
        draft = invoice_draft(window=window, usage=usage, prices=plan_prices)
        out.append(
            CurrentUsage(
                subscription=subscription,
                period_start=bounds[0],
                period_end=bounds[1],
                lines=[line.as_dict() for line in draft.lines],
                subtotal=draft.subtotal,
            )
        )
    return out


def prices_by_plan() -> dict[int, list[Price]]:
    """Every price with its metric, per plan id, in metric-code order (invoice line order)."""
    prices: dict[int, list[Price]] = {}
    for price in Price.objects.select_related("metric").order_by("metric__code"):
        prices.setdefault(price.plan_id, []).append(price)
    return prices


def subscription_customer_refs(external_ids: set[str]) -> dict[str, str]:
    """{subscription external id: its customer's external id} for those of ``external_ids``
    that name a subscription. Registered with ingest (BillingConfig.ready), which resolves a
    Lago event's ``external_subscription_id`` with it in one query per request."""
    if not external_ids:
        return {}
    return dict(
        Subscription.objects.filter(external_id__in=external_ids).values_list(
            "external_id", "customer__external_id"
        )
    )
