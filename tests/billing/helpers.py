"""Billing test helpers: usage events written straight to the table (test data, not a mock)."""

from __future__ import annotations

import itertools
from datetime import datetime
from decimal import Decimal

from ingest.models import Metric, UsageEvent
from neruba.models import Customer

_keys = itertools.count()


def add_events(
    *,
    customer: Customer,
    metric: Metric,
    timestamps: list[datetime],
    value: Decimal | int | str | None = None,
    distinct: str = "",
) -> None:
    UsageEvent.objects.bulk_create(
        [
            UsageEvent(
                idempotency_key=f"evt-{next(_keys)}-{customer.pk}-{metric.pk}",
                customer=customer,
                metric=metric,
                timestamp=ts,
                value=None if value is None else Decimal(str(value)),
                distinct_value=distinct,
                payload_hash="x" * 64,
            )
            for ts in timestamps
        ]
    )
