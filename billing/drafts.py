"""Invoice drafts: what a window would bill, priced from its usage by ``billing.pricing``.

Reads (usage so far in ``billing.selectors``) and writes (the billing scan, reruns) both price
through here, so the reads never import a service module to build their answer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from billing.models import BillingWindow, Plan, Price
from billing.pricing import amount_round, decimal_str, effective_unit_amount, price_amount
from billing.usage import WindowRef
from ingest.models import Metric


@dataclass
class LineDraft:
    metric_id: int | None
    metric_code: str
    description: str
    quantity: Decimal
    unit_amount: Decimal
    amount: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric_code or None,
            "description": self.description,
            "quantity": decimal_str(self.quantity),
            "unit_amount": decimal_str(self.unit_amount),
            "amount": self.amount,
        }


@dataclass(frozen=True, slots=True)
class WindowRow:
    """What billing needs of a window. A scan handles thousands of windows, so it reads these
    as plain rows instead of building a window and a subscription model instance for each."""

    id: int | None
    subscription_id: int
    customer_id: int
    plan: Plan
    period_start: datetime
    period_end: datetime

    @classmethod
    def of(cls, window: BillingWindow) -> WindowRow:
        subscription = window.subscription
        return cls(
            id=window.pk,
            subscription_id=subscription.pk,
            customer_id=subscription.customer_id,
            plan=subscription.plan,
            period_start=window.period_start,
            period_end=window.period_end,
        )


@dataclass
class InvoiceDraft:
    window: WindowRow
    lines: list[LineDraft]

    @property
    def subtotal(self) -> int:
        return sum(line.amount for line in self.lines)


def metric_aggregations() -> dict[int, str]:
    return dict(Metric.objects.values_list("id", "aggregation"))


def invoice_draft(
    *, window: WindowRow, usage: dict[int, Decimal], prices: list[Price]
) -> InvoiceDraft:
    """Prices one window: the base fee (not prorated for partial first/last windows) and one
    line per priced metric, each rounded half-even once."""
    plan = window.plan
    lines: list[LineDraft] = []
    if plan.base_amount:
        lines.append(
            LineDraft(
                metric_id=None,
                metric_code="",
                description=f"{plan.name} base fee",
                quantity=Decimal(1),
                unit_amount=Decimal(plan.base_amount),
                amount=plan.base_amount,
            )
        )
    for price in prices:
        quantity = usage.get(price.metric_id, Decimal(0))
        exact = price_amount(
            model=price.model, unit_amount=price.unit_amount, tiers=price.tiers, quantity=quantity
        )
        amount = amount_round(exact)
        unit = (
            effective_unit_amount(amount=exact, quantity=quantity)
            if price.model == Price.Model.GRADUATED
            else Decimal(price.unit_amount)
        )
        lines.append(
            LineDraft(
                metric_id=price.metric_id,
                metric_code=price.metric.code,
                description=price.metric.name,
                quantity=quantity,
                unit_amount=unit,
                amount=amount,
            )
        )
    return InvoiceDraft(window=window, lines=lines)


def window_ref(window: WindowRow, prices: list[Price]) -> WindowRef:
    assert window.id is not None
    return WindowRef(
        window_id=window.id,
        customer_id=window.customer_id,
        period_start=window.period_start,
        period_end=window.period_end,
        metric_ids=frozenset(p.metric_id for p in prices),
    )
