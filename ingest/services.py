"""Ingest write operations."""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from ingest.exceptions import MetricExists
from ingest.models import Aggregation, InvoicedWatermark, Metric
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


def invoiced_watermark_advance(*, customer_id: int, through: datetime) -> None:
    """Moves the customer's watermark forward (never back). Called by billing in the invoice's
    transaction, so an event ingested after the commit sees it and is flagged late."""
    updated = InvoicedWatermark.objects.filter(
        customer_id=customer_id, invoiced_through__lt=through
    ).update(invoiced_through=through, updated_at=timezone.now())
    if not updated and not InvoicedWatermark.objects.filter(customer_id=customer_id).exists():
        try:
            with transaction.atomic():
                InvoicedWatermark.objects.create(customer_id=customer_id, invoiced_through=through)
        except IntegrityError:
            InvoicedWatermark.objects.filter(
                customer_id=customer_id, invoiced_through__lt=through
            ).update(invoiced_through=through, updated_at=timezone.now())
