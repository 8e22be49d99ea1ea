"""Ingest write operations."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from ingest.exceptions import MetricExists
from ingest.models import Aggregation, Metric
from neruba import audit


def metric_create(
    *, code: str, name: str, aggregation: str, field: str = "", actor: audit.Actor = None
) -> Metric:
    if aggregation not in Aggregation.values:
        from neruba.errors import ValidationFailed

        raise ValidationFailed(details={"aggregation": f"one of {', '.join(Aggregation.values)}"})
    try:
        with transaction.atomic():
            metric = Metric.objects.create(
                code=code, name=name, aggregation=aggregation, field=field
            )
            audit.record(
                actor=actor,
                action="metric.create",
                target=metric,
                after={"code": code, "aggregation": aggregation, "field": field},
            )
    except IntegrityError:
        raise MetricExists(details={"code": code}) from None
    return metric
