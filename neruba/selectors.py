from __future__ import annotations

from django.db.models import QuerySet

from neruba.exceptions import CustomerNotFound
from neruba.models import Customer


def customer_get(*, external_id: str) -> Customer:
    try:
        return Customer.objects.get(external_id=external_id)
    except Customer.DoesNotExist:
        raise CustomerNotFound(details={"external_id": external_id}) from None


def customer_list() -> QuerySet[Customer]:
    return Customer.objects.all()
