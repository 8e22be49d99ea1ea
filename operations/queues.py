"""The home page as a work queue: what needs *this* person now.

Each ``QueueRow`` is one line of the queue: who it is for (the permission that lets them act on
it), how many items wait, how urgent a non-zero count is, and the filtered list that holds them.
Other apps' rows are added by appending a ``QueueRow`` to ``QUEUE`` (or calling
``queue_register``): the home page renders whatever is registered, in order, for users who hold
the row's permission. Counts are bounded (``CAP``) so the home page never runs a full count
over a big table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import F, Max, Q, QuerySet
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from billing.models import (
    BillingRun,
    Dispute,
    DriftFinding,
    Invoice,
    PaymentFinding,
    ProviderSync,
    Subscription,
)
from billing.periods import periods_between
from billing.services import UNPAID, billing_cutoff, windows_due
from ingest.models import IngestRejection
from neruba.models import SchedulerLock
from webhooks.models import StripeEvent
from webhooks.selectors import outbound_backlog

CAP = 1000


def capped(queryset: QuerySet[Any], cap: int = CAP) -> int:
    """``COUNT`` of at most ``cap + 1`` rows: "1000+" is as actionable as the exact number."""
    return queryset.order_by().values("pk")[: cap + 1].count()


def _url(name: str, query: str = "") -> str | None:
    if name == "runbooks":
        return reverse("runbook", args=["webhooks"]) + "#signature-failures"
    try:
        return reverse(f"admin:{name}") + query
    except NoReverseMatch:
        return None


@dataclass
class QueueRow:
    key: str
    label: str
    # Who acts on it: the row shows for users holding any of these permissions.
    permissions: tuple[str, ...]
    count: Callable[[datetime], int]
    url_name: str
    query: str = ""
    # "alert" (red when non-zero), "warn" (amber when non-zero) or "info".
    severity: str = "warn"
    hint: str = ""

    def visible_to(self, user: Any) -> bool:
        return any(user.has_perm(p) for p in self.permissions)


def windows_unbilled(now: datetime) -> int:
    """Closed windows past the grace period with no live invoice, counting those no scan has
    written as rows yet: while the scheduler is down nothing creates them, and that is exactly
    when this number matters."""
    cutoff = billing_cutoff(as_of=now)
    rows = capped(windows_due(cutoff=cutoff))
    if rows > CAP:
        return rows
    missing = 0
    lagging = (
        Subscription.objects.filter(started_at__lt=cutoff)
        .annotate(last_end=Max("windows__period_end"))
        .filter(Q(last_end__isnull=True) | Q(last_end__lt=cutoff))
        # An ended subscription whose last window reaches its end has nothing left to bill.
        .filter(Q(ended_at__isnull=True) | Q(last_end__isnull=True) | Q(last_end__lt=F("ended_at")))
        .values_list("started_at", "ended_at", "plan__interval", "last_end")
    )
    for started_at, ended_at, interval, last_end in lagging[:CAP].iterator():
        missing += sum(
            1
            for _ in periods_between(
                interval=interval,
                started_at=started_at,
                ended_at=ended_at,
                since=last_end or started_at,
                through=cutoff,
            )
        )
        if rows + missing > CAP:
            break
    return rows + missing


def last_scan(now: datetime) -> BillingRun | None:
    """The last real (not dry-run) billing scan that finished without failures."""
    return (
        BillingRun.objects.filter(dry_run=False, status=BillingRun.Status.SUCCEEDED)
        .exclude(finished_at__isnull=True)
        .order_by("-finished_at", "-id")
        .first()
    )


def _awaiting_payment(now: datetime) -> int:
    after = timedelta(seconds=settings.NERUBA["NERUBA_RECONCILE_AFTER"])
    return capped(Invoice.objects.filter(status__in=UNPAID, issued_at__lt=now - after))


def _expired_locks(now: datetime) -> int:
    return SchedulerLock.objects.exclude(holder="").filter(expires_at__lt=now).count()


QUEUE: list[QueueRow] = [
    QueueRow(
        "dead_webhooks",
        "Dead Stripe events (retrying stopped): replay once fixed",
        ("webhooks.replay_stripeevent",),
        lambda now: capped(StripeEvent.objects.filter(status="dead")),
        "webhooks_stripeevent_changelist",
        "?status__exact=dead",
        severity="alert",
    ),
    QueueRow(
        "failed_webhooks",
        "Failed Stripe events (retrying with backoff)",
        ("webhooks.replay_stripeevent",),
        lambda now: capped(StripeEvent.objects.filter(status="failed")),
        "webhooks_stripeevent_changelist",
        "?status__exact=failed",
    ),
    QueueRow(
        "open_rejections",
        "Open ingest rejections: replay once fixed, or dismiss with a reason",
        ("ingest.replay_ingestrejection",),
        lambda now: capped(IngestRejection.objects.filter(status="open")),
        "ingest_ingestrejection_changelist",
        "?status__exact=open",
    ),
    QueueRow(
        "usage_findings",
        "Open usage drift findings: resolve or ignore",
        ("billing.resolve_driftfinding",),
        lambda now: capped(DriftFinding.objects.filter(status="open", kind="usage")),
        "billing_driftfinding_changelist",
        "?status__exact=open&kind__exact=usage",
    ),
    QueueRow(
        "payment_findings",
        "Open reconciliation findings (Stripe disagrees): settle there, then ignore",
        ("billing.resolve_driftfinding",),
        lambda now: capped(DriftFinding.objects.filter(status="open", kind="payment")),
        "billing_driftfinding_changelist",
        "?status__exact=open&kind__exact=payment",
    ),
    QueueRow(
        "over_returned_charges",
        "Open payment findings: charges that returned more than they collected",
        ("billing.resolve_paymentfinding",),
        lambda now: capped(PaymentFinding.objects.filter(status="open")),
        "billing_paymentfinding_changelist",
        "?status__exact=open",
        severity="alert",
    ),
    QueueRow(
        "awaiting_payment",
        "Invoices awaiting payment past NERUBA_RECONCILE_AFTER",
        ("billing.mark_invoice_paid",),
        _awaiting_payment,
        "billing_invoice_changelist",
        "?status__exact=finalized&o=-9",
        severity="info",
    ),
    QueueRow(
        "open_disputes",
        "Open disputes (evidence may be due)",
        ("billing.resolve_driftfinding", "billing.issue_credit"),
        lambda now: capped(
            Dispute.objects.exclude(status__in=["won", "lost", "warning_closed", "charge_refunded"])
        ),
        "billing_dispute_changelist",
        "",
    ),
    QueueRow(
        "windows_unbilled",
        "Billing windows due but not billed",
        # Operations runs the scans (support and finance see the red banner instead).
        ("operations.view_heartbeat",),
        windows_unbilled,
        "billing_billingwindow_changelist",
        "?status__exact=pending",
        severity="alert",
        hint="Windows closed past the grace period with no live invoice, including those no "
        "scan has written yet (the scheduler makes them).",
    ),
    QueueRow(
        "provider_outbox",
        "Invoices waiting to be sent to the payment provider",
        ("billing.view_providersync",),
        lambda now: capped(ProviderSync.objects.exclude(status=ProviderSync.Status.SENT)),
        "billing_providersync_changelist",
        "?status__exact=pending",
    ),
    QueueRow(
        "expired_locks",
        "Expired scheduler locks still held",
        ("neruba.release_schedulerlock",),
        _expired_locks,
        "neruba_schedulerlock_changelist",
        "",
    ),
]


ACCEPTED_RECEIPTS = ("stored", "duplicate")


def _refused_receipts(now: datetime) -> int:
    from operations.metrics import webhook_receipts

    return sum(n for result, n in webhook_receipts().items() if result not in ACCEPTED_RECEIPTS)


QUEUE.append(
    QueueRow(
        "refused_webhooks",
        "Refused Stripe webhook requests (bad signature, too old, …) since the web processes "
        "started",
        ("webhooks.replay_stripeevent",),
        _refused_receipts,
        "runbooks",
        "",
        severity="alert",
        hint="Refused requests store nothing; after a secret rotation this is the only sign. "
        "See the counts by result on /metrics.",
    )
)


def _outbound_waiting(now: datetime) -> int:
    counts = outbound_backlog(now=now)["counts"]
    return sum(counts[s] for s in ("pending", "sending", "failed"))


def _outbound_dead(now: datetime) -> int:
    return outbound_backlog(now=now)["counts"]["dead"]


QUEUE.extend(
    [
        QueueRow(
            "outbound_waiting",
            "Outbound webhooks waiting or retrying (the endpoint page says why)",
            ("webhooks.replay_outbounddelivery",),
            _outbound_waiting,
            "webhooks_outbounddelivery_changelist",
            "?status__exact=failed",
        ),
        QueueRow(
            "outbound_dead",
            "Dead outbound webhooks (retrying stopped): replay once the receiver is fixed",
            ("webhooks.replay_outbounddelivery",),
            _outbound_dead,
            "webhooks_outbounddelivery_changelist",
            "?status__exact=dead",
            severity="alert",
        ),
    ]
)


def queue_register(row: QueueRow) -> None:
    """For other apps' rows (e.g. outbound webhook backlogs); replaces a row with its key."""
    QUEUE[:] = [r for r in QUEUE if r.key != row.key] + [row]


def work_queue(*, user: Any, now: datetime | None = None) -> list[dict[str, Any]]:
    """The rows this user can act on, each with its count, tone and link."""
    now = now or timezone.now()
    rows = []
    for row in QUEUE:
        if not row.visible_to(user):
            continue
        n = row.count(now)
        tone = row.severity if n else "clear"
        rows.append(
            {
                "key": row.key,
                "label": row.label,
                "count": f"{CAP}+" if n > CAP else str(n),
                "n": n,
                "tone": tone,
                "url": _url(row.url_name, row.query),
                "hint": row.hint,
            }
        )
    return rows


def scan_age(now: datetime | None = None) -> dict[str, Any] | None:
    """The age of the last successful real scan, for the home page (None: none yet)."""
    now = now or timezone.now()
    run = last_scan(now)
    if run is None:
        return {"run": None, "text": "no successful billing scan yet", "stale": True}
    age = now - run.finished_at
    interval = settings.NERUBA["NERUBA_BILLING_SCAN_INTERVAL"]
    minutes = int(age.total_seconds() // 60)
    text = f"{minutes} min ago" if minutes < 120 else f"{minutes // 60} h ago"
    return {
        "run": run,
        "text": f"last successful scan: run #{run.pk}, {text}",
        # Three missed scans is more than a hiccup.
        "stale": age.total_seconds() > 3 * interval + 60,
    }
