"""The ``field__any`` lookup: same rows as ``field__in``, on every database."""

from __future__ import annotations

import pytest

from neruba.models import Customer
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


def test_any_matches_in_for_ids_and_foreign_keys() -> None:
    customers = [CustomerFactory(external_id=f"any-{n}") for n in range(5)]
    wanted = [customers[0].pk, customers[3].pk, 10**9]
    by_any = set(Customer.objects.filter(pk__any=wanted).values_list("pk", flat=True))
    by_in = set(Customer.objects.filter(pk__in=wanted).values_list("pk", flat=True))
    assert by_any == by_in == {customers[0].pk, customers[3].pk}


def test_any_of_nothing_matches_nothing() -> None:
    CustomerFactory(external_id="any-none")
    assert not Customer.objects.filter(pk__any=[]).exists()
    assert Customer.objects.exclude(pk__any=[]).count() == Customer.objects.count()


def test_any_on_a_foreign_key_column() -> None:
    from billing.models import CreditEntry

    first, second = CustomerFactory(external_id="any-a"), CustomerFactory(external_id="any-b")
    for customer in (first, second):
        CreditEntry.objects.create(
            customer=customer, currency="USD", amount=100, kind="grant", reason_code="goodwill"
        )
    rows = CreditEntry.objects.filter(customer_id__any=[second.pk])
    assert [r.customer_id for r in rows] == [second.pk]
