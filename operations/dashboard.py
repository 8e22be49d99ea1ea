"""The console home: readiness, runs and locks, outcomes over 24 hours, backlogs, runbooks.
Each panel shows only what the user may see."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Count, Sum
from django.db.models.functions import TruncHour
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.safestring import mark_safe

from billing.models import BillingRun, DriftFinding, PaymentFinding
from ingest.models import IngestBatch, IngestRejection
from neruba.models import SchedulerLock
from operations.charts import stacked_bars
from operations.health import readiness
from operations.runbooks import runbook_list
from operations.sweeps import sweep_summary, sweeps_latest
from webhooks.models import StripeEvent

INGEST_OUTCOMES = ("accepted", "duplicate", "conflict", "failed", "replay")
WEBHOOK_OUTCOMES = ("processed", "ignored", "failed", "dead", "received")


def _hours(now: Any) -> list[Any]:
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    return [start + timedelta(hours=i) for i in range(24)]


def _ingest_chart(now: Any) -> str:
    hours = _hours(now)
    rows = (
        IngestBatch.objects.filter(received_at__gte=hours[0])
        .annotate(hour=TruncHour("received_at"))
        .values("hour")
        .annotate(**{o: Sum(o) for o in INGEST_OUTCOMES})
    )
    by_hour = {row["hour"]: row for row in rows}
    series = {o: [int((by_hour.get(h) or {}).get(o) or 0) for h in hours] for o in INGEST_OUTCOMES}
    return stacked_bars(
        [f"{h:%H}:00" for h in hours], series, title="Ingest outcomes per hour, last 24 hours"
    )


def _webhook_chart(now: Any) -> str:
    hours = _hours(now)
    rows = (
        StripeEvent.objects.filter(received_at__gte=hours[0])
        .annotate(hour=TruncHour("received_at"))
        .values("hour", "status")
        .annotate(n=Count("id"))
    )
    counts: dict[tuple[Any, str], int] = {(r["hour"], r["status"]): r["n"] for r in rows}
    series = {s: [counts.get((h, s), 0) for h in hours] for s in WEBHOOK_OUTCOMES}
    return stacked_bars(
        [f"{h:%H}:00" for h in hours],
        series,
        title="Stripe events per hour by status, last 24 hours",
    )


def _admin_url(name: str, *args: Any, query: str = "") -> str | None:
    """The console URL, or None while that model has no console page."""
    try:
        return reverse(f"admin:{name}", args=args) + query
    except NoReverseMatch:
        return None


def _backlog(user: Any) -> list[dict[str, Any]]:
    """Counts that need a person, each linking to its filtered list."""
    items = []
    if user.has_perm("webhooks.view_stripeevent"):
        for status in ("failed", "dead"):
            items.append(
                {
                    "label": f"{status.title()} webhook events",
                    "count": StripeEvent.objects.filter(status=status).count(),
                    "url": _admin_url(
                        "webhooks_stripeevent_changelist", query=f"?status__exact={status}"
                    ),
                }
            )
    if user.has_perm("ingest.view_ingestrejection"):
        items.append(
            {
                "label": "Open ingest rejections",
                "count": IngestRejection.objects.filter(status="open").count(),
                "url": _admin_url("ingest_ingestrejection_changelist", query="?status__exact=open"),
            }
        )
    if user.has_perm("billing.view_driftfinding"):
        items.append(
            {
                "label": "Open drift findings",
                "count": DriftFinding.objects.filter(status="open").count(),
                "url": _admin_url("billing_driftfinding_changelist", query="?status__exact=open"),
            }
        )
    if user.has_perm("billing.view_paymentfinding"):
        # Charges that returned more than they collected: finance settles them with Stripe.
        items.append(
            {
                "label": "Open payment findings (over-returned charges)",
                "count": PaymentFinding.objects.filter(status="open").count(),
                "url": _admin_url("billing_paymentfinding_changelist", query="?status__exact=open"),
            }
        )
    return items


# Where each role starts its day: (permission, label, admin url name, query).
SHORTCUTS = [
    ("neruba.view_customer", "Customers (the hub page for each)", "neruba_customer_changelist", ""),
    (
        "ingest.view_ingestrejection",
        "Open ingest rejections to replay",
        "ingest_ingestrejection_changelist",
        "?status__exact=open",
    ),
    (
        "billing.view_creditentry",
        "Credit ledger (filter, export)",
        "billing_creditentry_changelist",
        "",
    ),
    ("neruba.view_auditentry", "Audit log (filter, export)", "neruba_auditentry_changelist", ""),
    ("billing.view_invoice", "Invoices with totals per status", "billing_invoice_changelist", ""),
    (
        "billing.view_driftfinding",
        "Open drift findings to resolve",
        "billing_driftfinding_changelist",
        "?status__exact=open",
    ),
    (
        "webhooks.view_stripeevent",
        "Dead Stripe events to replay",
        "webhooks_stripeevent_changelist",
        "?status__exact=dead",
    ),
    ("neruba.view_schedulerlock", "Release stale locks", "neruba_schedulerlock_changelist", ""),
]


def _shortcuts(user: Any) -> list[dict[str, Any]]:
    return [
        {"label": label, "url": url}
        for perm, label, name, query in SHORTCUTS
        if user.has_perm(perm) and (url := _admin_url(name, query=query))
    ]


def dashboard_context(request: HttpRequest) -> dict[str, Any]:
    user = request.user
    if not getattr(user, "is_staff", False):
        return {}
    now = timezone.now()
    ok, checks = readiness()
    context: dict[str, Any] = {
        "dashboard": True,
        "ready": ok,
        "checks": checks,
        "backlog": _backlog(user),
        "runbooks": runbook_list(),
        "shortcuts": _shortcuts(user),
        "can_explain": user.has_perm("ingest.view_usageevent"),
    }
    if user.has_perm("billing.view_billingrun"):
        runs = list(BillingRun.objects.order_by("-started_at")[:5])
        for run in runs:
            run.console_url = _admin_url("billing_billingrun_change", run.pk)
        context["runs"] = runs
    if user.has_perm("operations.view_sweeprun") or user.has_perm("billing.view_driftfinding"):
        sweeps = sweeps_latest()
        for sweep in sweeps:
            sweep.summary = sweep_summary(sweep)
            sweep.console_url = _admin_url("operations_sweeprun_change", sweep.pk)
        context["sweeps"] = sweeps
    if user.has_perm("neruba.view_schedulerlock") or user.has_perm("billing.view_billingrun"):
        context["locks"] = list(SchedulerLock.objects.all()[:10])
        context["now"] = now
    if user.has_perm("ingest.view_ingestbatch"):
        context["ingest_chart"] = mark_safe(_ingest_chart(now))  # noqa: S308 - built by us, escaped
    if user.has_perm("webhooks.view_stripeevent"):
        context["webhook_chart"] = mark_safe(_webhook_chart(now))  # noqa: S308
    return context
