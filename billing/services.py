"""Billing write operations (catalog for now; runs, invoices and credits follow)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Q

from billing.exceptions import CurrencyMismatch, SubscriptionOverlap
from billing.models import Plan, Price, Subscription
from billing.pricing import tiers_validate
from ingest.models import Metric
from neruba import audit
from neruba.models import ApiKey, Customer


def plan_create(
    *,
    code: str,
    name: str,
    currency: str,
    interval: str,
    base_amount: int,
    prices: list[dict[str, Any]],
    actor: audit.Actor = None,
) -> Plan:
    """Creates a plan with its prices. Each price: ``metric`` (a Metric), ``model``,
    ``unit_amount`` and, for graduated prices, ``tiers``."""
    with transaction.atomic():
        plan = Plan.objects.create(
            code=code,
            name=name,
            currency=currency.upper(),
            interval=interval,
            base_amount=base_amount,
        )
        for spec in prices:
            tiers = tiers_validate(spec["tiers"]) if spec.get("model") == "graduated" else []
            Price.objects.create(
                plan=plan,
                metric=spec["metric"],
                model=spec.get("model", "per_unit"),
                unit_amount=Decimal(str(spec.get("unit_amount", "0"))),
                tiers=tiers,
            )
        audit.record(
            actor=actor,
            action="plan.create",
            target=plan,
            after={
                "code": code,
                "currency": plan.currency,
                "interval": interval,
                "base_amount": base_amount,
                "prices": [{"metric": p["metric"].code, "model": p.get("model")} for p in prices],
            },
        )
    return plan


def subscription_create(
    *,
    customer: Customer,
    plan: Plan,
    started_at: datetime,
    ended_at: datetime | None = None,
    actor: audit.Actor | ApiKey = None,
) -> Subscription:
    if customer.currency != plan.currency:
        raise CurrencyMismatch(details={"customer": customer.currency, "plan": plan.currency})
    with transaction.atomic():
        # Lock the customer row so two concurrent creations cannot both pass the overlap check.
        Customer.objects.select_for_update().filter(pk=customer.pk).first()
        overlap = Subscription.objects.filter(customer=customer, plan=plan).filter(
            Q(ended_at__isnull=True) | Q(ended_at__gt=started_at)
        )
        if ended_at is not None:
            overlap = overlap.filter(started_at__lt=ended_at)
        if overlap.exists():
            raise SubscriptionOverlap(details={"customer": customer.external_id, "plan": plan.code})
        subscription = Subscription.objects.create(
            customer=customer, plan=plan, started_at=started_at, ended_at=ended_at
        )
        audit.record(
            actor=actor,
            action="subscription.create",
            target=subscription,
            customer=customer,
            after={"plan": plan.code, "started_at": started_at, "ended_at": ended_at},
        )
    return subscription


def metric_for_code(code: str) -> Metric:
    return Metric.objects.get(code=code)
