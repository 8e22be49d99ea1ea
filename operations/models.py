from __future__ import annotations

from django.db import models
from django.utils import timezone


class Heartbeat(models.Model):
    """Last sign of life of a background process (beat, worker); readiness reads it."""

    name = models.CharField(max_length=50, unique=True)
    seen_at = models.DateTimeField(default=timezone.now)
    detail = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return f"{self.name} @ {self.seen_at:%Y-%m-%d %H:%M:%S}"


class SweepRun(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        LOCK_HELD = "lock_held"

    sweep = models.CharField(max_length=50, db_index=True)
    trigger = models.CharField(max_length=20)
    dry_run = models.BooleanField(default=False)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    findings = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.sweep} {self.status}"
