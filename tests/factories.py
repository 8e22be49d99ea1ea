"""Test data factories (factory_boy). Services are used where the write has invariants."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import factory
from django.contrib.auth.models import Group, User

from billing.models import Plan, Price, Subscription
from ingest.models import Metric
from neruba.models import Customer


class CustomerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Customer
        django_get_or_create = ("external_id",)

    external_id = factory.Sequence(lambda n: f"cust-{n}")
    name = factory.Sequence(lambda n: f"Customer {n}")
    email = factory.LazyAttribute(lambda o: f"{o.external_id}@example.com")
    currency = "USD"


class MetricFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Metric
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"metric_{n}")
    name = factory.LazyAttribute(lambda o: o.code.replace("_", " ").title())
    aggregation = "count"
    field = ""


class PlanFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Plan
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"plan-{n}")
    name = factory.LazyAttribute(lambda o: o.code.title())
    currency = "USD"
    interval = "month"
    base_amount = 1000


class PriceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Price

    plan = factory.SubFactory(PlanFactory)
    metric = factory.SubFactory(MetricFactory)
    model = "per_unit"
    unit_amount = Decimal("0.5")
    tiers: list[dict[str, Any]] = []


class SubscriptionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Subscription

    customer = factory.SubFactory(CustomerFactory)
    plan = factory.SubFactory(PlanFactory)
    started_at = datetime(2026, 1, 1, tzinfo=UTC)


def console_user(role: str, username: str | None = None, password: str = "pw-Neruba-123") -> User:
    """A staff user in the named group, or a superuser for ``"superuser"``."""
    username = username or f"{role.lower()}-user"
    if role == "superuser":
        return User.objects.create_superuser(
            username=username, password=password, email=f"{username}@example.com"
        )
    user = User.objects.create_user(username=username, password=password, is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    return user


def catalog() -> dict[str, Any]:
    customer = CustomerFactory(external_id="acme", name="Acme")
    calls = MetricFactory(code="api_calls", aggregation="count")
    seconds = MetricFactory(code="compute_seconds", aggregation="sum", field="seconds")
    plan = PlanFactory(code="pro", base_amount=1000)
    PriceFactory(plan=plan, metric=calls, model="per_unit", unit_amount=Decimal("0.5"))
    PriceFactory(
        plan=plan,
        metric=seconds,
        model="graduated",
        unit_amount=Decimal(0),
        tiers=[
            {"up_to": "100", "unit_amount": "1", "flat_amount": 0},
            {"up_to": None, "unit_amount": "0.5", "flat_amount": 0},
        ],
    )
    subscription = SubscriptionFactory(customer=customer, plan=plan)
    return {
        "customer": customer,
        "plan": plan,
        "metrics": {"api_calls": calls, "compute_seconds": seconds},
        "subscription": subscription,
    }


def leases_expire(*names: str) -> int:
    """Ends the named leases (all held ones when none are named) as if their TTL ran out.
    Lease expiry is the database's clock on PostgreSQL, which time-machine does not move."""
    from neruba.models import SchedulerLock

    rows = SchedulerLock.objects.exclude(holder="")
    if names:
        rows = rows.filter(name__in=names)
    return rows.update(expires_at=datetime(2000, 1, 1, tzinfo=UTC))
