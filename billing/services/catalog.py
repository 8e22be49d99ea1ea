"""Catalog writes: plans, prices and subscriptions."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q

from billing.exceptions import CurrencyMismatch, SubscriptionExternalIdTaken, SubscriptionOverlap
from billing.models import Plan, Price, Subscription
from billing.pricing import tiers_validate
from ingest.models import Metric
from neruba import audit
from neruba.errors import ValidationFailed
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


def subscription_check(
    *,
    customer: Customer,
    plan: Plan,
    started_at: datetime,
    ended_at: datetime | None = None,
    exclude_pk: int | None = None,
) -> None:
    """The rules every subscription obeys: the plan's currency is the customer's, and one
    customer never has two overlapping subscriptions to the same plan."""
    if customer.currency != plan.currency:
        raise CurrencyMismatch(details={"customer": customer.currency, "plan": plan.currency})
    overlap = Subscription.objects.filter(customer=customer, plan=plan).filter(
        Q(ended_at__isnull=True) | Q(ended_at__gt=started_at)
    )
    if ended_at is not None:
        overlap = overlap.filter(started_at__lt=ended_at)
    if exclude_pk is not None:
        overlap = overlap.exclude(pk=exclude_pk)
    if overlap.exists():
        raise SubscriptionOverlap(details={"customer": customer.external_id, "plan": plan.code})


def subscription_create(
    *,
    customer: Customer,
    plan: Plan,
    started_at: datetime,
    ended_at: datetime | None = None,
    external_id: str | None = None,
    actor: audit.Actor | ApiKey = None,
    reason: str = "",
) -> Subscription:
    """``external_id`` (optional, unique) is the client's own id for the subscription: usage
    sent through the Lago-compatible surface names it as ``external_subscription_id``."""
    external_id = external_id or None  # "" is no id, not a second unique value
    try:
        with transaction.atomic():
            # Lock the customer row so two concurrent creations cannot both pass the overlap
            # check.
            Customer.objects.select_for_update().filter(pk=customer.pk).first()
            subscription_check(
                customer=customer, plan=plan, started_at=started_at, ended_at=ended_at
            )
            subscription = Subscription.objects.create(
                customer=customer,
                plan=plan,
                started_at=started_at,
                ended_at=ended_at,
                external_id=external_id,
            )
            audit.record(
                actor=actor,
                action="subscription.create",
                target=subscription,
                customer=customer,
                reason=reason,
                after={
                    "plan": plan.code,
                    "started_at": started_at,
                    "ended_at": ended_at,
                    "external_id": external_id,
                },
            )
    except IntegrityError:
        # Only the unique external id can collide here (the overlap check ran under the lock).
        raise SubscriptionExternalIdTaken(details={"external_id": external_id}) from None
    return subscription


def subscription_end(
    *, subscription: Subscription, ended_at: datetime | None, actor: audit.Actor, reason: str
) -> Subscription:
    """Sets (or clears) the end of a subscription; the only change allowed once it exists,
    since its windows and invoices depend on the customer, plan and start."""
    with transaction.atomic():
        Customer.objects.select_for_update().filter(pk=subscription.customer_id).first()
        locked = Subscription.objects.select_for_update().get(pk=subscription.pk)
        if ended_at is not None and ended_at <= locked.started_at:
            raise ValidationFailed(
                "The end must be after the start.", details={"ended_at": ended_at.isoformat()}
            )
        subscription_check(
            customer=locked.customer,
            plan=locked.plan,
            started_at=locked.started_at,
            ended_at=ended_at,
            exclude_pk=locked.pk,
        )
        before = {"ended_at": locked.ended_at}
        locked.ended_at = ended_at
        locked.save(update_fields=["ended_at"])
        audit.record(
            actor=actor,
            action="subscription.end",
            target=locked,
            customer=locked.customer,
            reason=reason,
            before=before,
            after={"ended_at": ended_at},
        )
    return locked


def metric_for_code(code: str) -> Metric:
    return Metric.objects.get(code=code)
