from __future__ import annotations

from django.db import models
from django.utils import timezone

from ingest.models import Metric
from neruba.models import Customer


class Interval(models.TextChoices):
    MONTH = "month"
    DAY = "day"


class Plan(models.Model):
    code = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    currency = models.CharField(max_length=3, default="USD")
    interval = models.CharField(max_length=10, choices=Interval.choices, default=Interval.MONTH)
    base_amount = models.BigIntegerField(default=0, help_text="Base fee per window, minor units.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class Price(models.Model):
    class Model(models.TextChoices):
        PER_UNIT = "per_unit"
        GRADUATED = "graduated"

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="prices")
    metric = models.ForeignKey(Metric, on_delete=models.PROTECT, related_name="prices")
    model = models.CharField(max_length=20, choices=Model.choices, default=Model.PER_UNIT)
    unit_amount = models.DecimalField(
        max_digits=20,
        decimal_places=10,
        default=0,
        help_text="Per-unit price in minor units (per_unit model).",
    )
    tiers = models.JSONField(
        default=list,
        blank=True,
        help_text='Graduated tiers: [{"up_to": 1000, "unit_amount": "0.5"}, '
        '{"up_to": null, "unit_amount": "0.2"}], optional "flat_amount" per tier.',
    )

    class Meta:
        ordering = ["plan", "metric"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "metric"], name="one_price_per_metric")
        ]

    def __str__(self) -> str:
        return f"{self.plan.code}/{self.metric.code}"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from billing.pricing import tiers_validate
        from neruba.errors import NerubaError

        if self.model == self.Model.GRADUATED:
            try:
                self.tiers = tiers_validate(self.tiers)
            except NerubaError as exc:
                raise ValidationError({"tiers": f"{exc.message} {exc.details}"}) from exc


class Subscription(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    # The client's own id for the subscription (Lago's external_subscription_id). Optional; when
    # set, unique among subscriptions, so an event naming it reaches exactly one customer.
    external_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["customer", "started_at"])]

    def __str__(self) -> str:
        return f"{self.customer.external_id} on {self.plan.code}"
