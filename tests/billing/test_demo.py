from __future__ import annotations

from typing import Any

import pytest

from billing.demo import seed_invoices
from billing.models import BillingRun, Invoice

pytestmark = pytest.mark.django_db


def test_demo_invoices_bill_past_windows_once(catalog: dict[str, Any]) -> None:
    first = seed_invoices()
    assert first["invoices"] >= 1 and first["invoice_failures"] == 0
    runs = BillingRun.objects.count()
    count = Invoice.objects.count()
    assert seed_invoices()["invoices"] == 0
    assert Invoice.objects.count() == count
    assert BillingRun.objects.count() == runs
