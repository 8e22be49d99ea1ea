"""The console home: readiness, runs and locks, outcomes over 24 hours, backlogs, runbooks.
Each panel shows only what the user may see."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Sum
from django.db.models.functions import TruncHour
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.safestring import mark_safe

from billing.models import BillingRun
from ingest.models import IngestBatch
from neruba.models import AuditEntry, SchedulerLock
from operations.charts import stacked_bars
from operations.health import beat_active, readiness
from operations.queues import scan_age, work_queue
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


# Where each role starts its day: (permission that lets the user act, label, admin url name,
# query). A shortcut shows only to users who can do what it offers, not merely see the list.
SHORTCUTS = [
    ("neruba.view_customer", "Customers (the hub page for each)", "neruba_customer_changelist", ""),
    (
        "ingest.replay_ingestrejection",
        "Open ingest rejections to replay or dismiss",
        "ingest_ingestrejection_changelist",
        "?status__exact=open",
    ),
    (
        "billing.issue_credit",
        "Credit ledger (filter, export)",
        "billing_creditentry_changelist",
        "",
    ),
    (
        "neruba.export_auditentry",
        "Audit log (filter, export)",
        "neruba_auditentry_changelist",
        "",
    ),
    (
        "billing.mark_invoice_paid",
        "Invoices with totals per status",
        "billing_invoice_changelist",
        "",
    ),
    (
        "billing.resolve_driftfinding",
        "Open drift findings to resolve",
        "billing_driftfinding_changelist",
        "?status__exact=open",
    ),
    (
        "webhooks.replay_stripeevent",
        "Dead Stripe events to replay",
        "webhooks_stripeevent_changelist",
        "?status__exact=dead",
    ),
    (
        "billing.view_billingrun",
        "Billing runs (real runs only)",
        "billing_billingrun_changelist",
        "?dry_run__exact=0",
    ),
    ("neruba.release_schedulerlock", "Release stale locks", "neruba_schedulerlock_changelist", ""),
]

# Which runbook section explains a failing readiness check.
CHECK_RUNBOOKS = {
    "scheduler": ("billing-runs", "scheduler-heartbeat"),
    "database": ("incident-triage", "readiness"),
    "migrations": ("migrations", ""),
    "broker": ("incident-triage", "readiness"),
    "settings": ("incident-triage", "readiness"),
}


def _shortcuts(user: Any) -> list[dict[str, Any]]:
    return [
        {"label": label, "url": url}
        for perm, label, name, query in SHORTCUTS
        if user.has_perm(perm) and (url := _admin_url(name, query=query))
    ]


def _banner(ok: bool, checks: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The red banner: which checks fail and where their runbook section is."""
    failing = [(name, c) for name, c in checks.items() if not c.get("ok")]
    if ok and not failing:
        return None
    items = []
    for name, check in failing:
        slug, anchor = CHECK_RUNBOOKS.get(name, ("incident-triage", "readiness"))
        url = reverse("runbook", args=[slug]) + (f"#{anchor}" if anchor else "")
        items.append({"name": name, "detail": check.get("detail", ""), "url": url})
    state = "NOT READY" if not ok else "DEGRADED"
    return {"state": state, "items": items}


def _recent_actions(user: Any) -> list[AuditEntry]:
    """The audit log's last entries: every guarded action, not only the admin's adds."""
    if user.has_perm("neruba.view_auditentry"):
        entries = AuditEntry.objects.all()
    else:
        entries = AuditEntry.objects.filter(actor_id=user.pk)
    return list(entries.select_related("customer").order_by("-created_at", "-id")[:10])


def dashboard_context(request: HttpRequest) -> dict[str, Any]:
    user = request.user
    if not getattr(user, "is_staff", False):
        return {}
    now = timezone.now()
    status, checks = readiness()
    context: dict[str, Any] = {
        "dashboard": True,
        "ready": status == "ready",
        "readiness": status,
        "beat_active": beat_active(),
        "checks": checks,
        "banner": _banner(status != "not_ready", checks),
        "queue": work_queue(user=user, now=now),
        "runbooks": runbook_list(),
        "shortcuts": _shortcuts(user),
        "can_explain": user.has_perm("ingest.view_usageevent"),
        "recent_actions": _recent_actions(user),
        "audit_url": _admin_url("neruba_auditentry_changelist")
        if user.has_perm("neruba.view_auditentry")
        else None,
    }
    if user.has_perm("billing.view_billingrun"):
        # Dry runs write nothing: they are listed apart so "invoiced 7" never reads as real.
        runs = list(BillingRun.objects.filter(dry_run=False).order_by("-started_at")[:5])
        dry_runs = list(BillingRun.objects.filter(dry_run=True).order_by("-started_at")[:3])
        for run in [*runs, *dry_runs]:
            run.console_url = _admin_url("billing_billingrun_change", run.pk)
        context["runs"] = runs
        context["dry_runs"] = dry_runs
        if user.has_perm("operations.view_heartbeat"):
            context["scan_age"] = scan_age(now)
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
    if user.has_perm("webhooks.replay_stripeevent"):
        # Which signing secrets this deployment checks (index and last four), so a rotation
        # can be compared with Stripe's dashboard without a shell.
        secrets = settings.NERUBA["STRIPE_WEBHOOK_SECRETS"] or []
        context["webhook_secrets"] = [f"secret#{n + 1} …{s[-4:]}" for n, s in enumerate(secrets)]
    if user.has_perm("webhooks.view_stripeevent"):
        context["webhook_chart"] = mark_safe(_webhook_chart(now))  # noqa: S308
    return context
