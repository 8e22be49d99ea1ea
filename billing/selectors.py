from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from billing.exceptions import PlanNotFound
from billing.models import Plan, Price, Subscription


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
