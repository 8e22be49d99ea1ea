"""``manage.py benchmark webhooks`` end to end at a small size (the rates need the full size):
first deliveries and redeliveries alternate by round, and the run reports their ratio."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from neruba.models import Customer
from webhooks.models import StripeEvent

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_the_webhooks_benchmark_reports_first_deliveries_and_cheaper_redeliveries() -> None:
    out = StringIO()
    try:
        call_command(
            "benchmark",
            "webhooks",
            *("--events", "90", "--clients", "2", "--workers", "1", "--threads", "2"),
            *("--rounds", "3"),
            stdout=out,
        )
    except CommandError as exc:  # a missed rate at this size is expected, not a failure here
        assert "target was missed" in str(exc)
    text = out.getvalue()
    assert "in 3 rounds" in text
    assert "{'stored': 90}, 90 rows" in text
    assert "{'duplicate': 90}" in text
    ratio = re.search(r"redelivery: \d+ events/s = ([\d.]+) x a first delivery", text)
    assert ratio is not None and float(ratio.group(1)) > 0
    assert not StripeEvent.objects.exists() and not Customer.objects.exists()
