"""Usage drift: what invoices charged for against what the stored events add up to now, and the
resolution of what differs.

A window drifts when events land after it was invoiced (late events, replays of rejected
items). The sweep re-aggregates windows with billing's own aggregation (``billing.usage``, one
GROUP BY per chunk of windows) and prices the difference with ``billing.pricing``. It records
one open ``DriftFinding`` per window, metric and kind (a partial unique constraint) and updates
that row when the numbers move again, so repeating the sweep adds nothing.

Incremental by default: only the windows touched by late events received since ``since`` are
re-aggregated (the partial index on ``received_at`` where ``late``). A full pass re-checks every
invoiced window that can still receive events; it also catches events that raced the invoice's
commit and were not flagged late.

What a window was billed for is the live invoice's line quantity, or, once a finding on that
invoice was settled by a credit, a supplementary invoice or an ignore, the quantity that
finding accepted (the invoice's lines are history and never change).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from billing import messages
from billing.exceptions import FindingNotOpen, ResolutionInvalid
from billing.models import BillingWindow, DriftFinding, Invoice, InvoiceLine, Price
from billing.pricing import amount_round, decimal_str, price_amount
from billing.selectors import prices_by_plan
from billing.services.invoicing import UNPAID
from billing.services.reruns import RerunResult, invoice_rerun
from billing.usage import WindowRef, usage_for_windows
from ingest.models import Backfill, Metric
from neruba import audit
from neruba.errors import ValidationFailed
from neruba.fencing import fenced, lease_renew
from neruba.locks import Lease

USAGE = "usage"
PAYMENT = "payment"
CHUNK = 1000
SETTLED = (DriftFinding.Status.RESOLVED, DriftFinding.Status.IGNORED)

# Windows that late events received since %s fall into, and those whose events were voided or
# amended since then while their period was invoiced (an amendment's own row is a late event
# too). Driven from the changes: the partial indexes on received_at WHERE late and on the
# corrections' created_at WHERE late keep this proportional to what changed.
_LATE_WINDOWS_SQL = """
SELECT DISTINCT w.id
FROM (
  SELECT e.customer_id, e.timestamp FROM ingest_usageevent e
  WHERE e.late AND e.received_at >= %s
  UNION ALL
  SELECT e.customer_id, e.timestamp FROM ingest_eventcorrection c
  JOIN ingest_usageevent e ON e.id = c.excluded_id
  WHERE c.late AND c.created_at >= %s
) e
JOIN billing_subscription s ON s.customer_id = e.customer_id
JOIN billing_billingwindow w
  ON w.subscription_id = s.id
 AND e.timestamp >= w.period_start
 AND e.timestamp < w.period_end
"""


# The invoiced windows a backfill's late events fell into: late events received since it opened
# (the partial index on received_at WHERE late), narrowed to its batches.
_BACKFILL_WINDOWS_SQL = """
SELECT DISTINCT w.id
FROM ingest_usageevent e
JOIN billing_subscription s ON s.customer_id = e.customer_id
JOIN billing_billingwindow w
  ON w.subscription_id = s.id
 AND e.timestamp >= w.period_start
 AND e.timestamp < w.period_end
WHERE e.late AND e.received_at >= %s
  AND e.batch_id IN (SELECT b.id FROM ingest_ingestbatch b WHERE b.backfill_id = %s)
"""


def finding_title(finding: DriftFinding) -> str:
    """A finding as finance reads it: what drifted, where, and by how much money."""
    from neruba.money import money

    if finding.kind == PAYMENT:
        number = finding.invoice.number if finding.invoice_id else "an invoice"
        return f"Payment finding #{finding.pk} on {number}"
    currency = (
        finding.invoice.currency
        if finding.invoice_id
        else finding.window.subscription.plan.currency
    )
    metric = finding.metric.code if finding.metric_id else "base fee"
    return (
        f"Usage drift #{finding.pk}: {finding.window.subscription.customer.external_id}, "
        f"{metric}, {money(finding.delta_amount, currency, signed=True)}"
    )


def backfill_window_ids(*, backfill: Backfill) -> list[int]:
    at = connection.ops.adapt_datetimefield_value(backfill.created_at)
    with connection.cursor() as cursor:
        cursor.execute(_BACKFILL_WINDOWS_SQL, [at, backfill.pk])
        return sorted(row[0] for row in cursor.fetchall())


def drift_on_backfill_closed(*, backfill: Backfill, **_: Any) -> tuple[int, int]:
    """Receiver of ``ingest.backfills.backfill_closed``, inside the close's transaction: one
    drift finding per invoiced window and metric the backfill changed (resolved like any other:
    rerun, correction credit or supplementary invoice). Returns (windows, findings opened)."""
    window_ids = backfill_window_ids(backfill=backfill)
    if not window_ids:
        return 0, 0
    try:
        with transaction.atomic():
            counts = usage_drift_sweep(lease=None, window_ids=window_ids)
    except IntegrityError:
        # A drift sweep running now inserted the same open finding first (one open finding per
        # window, metric and kind): checked again, that finding is found and updated instead.
        counts = usage_drift_sweep(lease=None, window_ids=window_ids)
    return counts["windows"], counts["findings"]


def _live_invoices() -> Any:
    return Invoice.objects.filter(kind=Invoice.Kind.REGULAR).exclude(status=Invoice.Status.VOID)


def drift_horizon(*, now: datetime) -> datetime:
    """Windows that ended before this can no longer change: ingest refuses events older than
    ``NERUBA_INGEST_MAX_AGE``. A full pass checks the windows ending after it."""
    return now - timedelta(seconds=settings.NERUBA["NERUBA_INGEST_MAX_AGE"])


def late_window_ids(*, since: datetime) -> list[int]:
    at = connection.ops.adapt_datetimefield_value(since)
    with connection.cursor() as cursor:
        cursor.execute(_LATE_WINDOWS_SQL, [at, at])
        return sorted(row[0] for row in cursor.fetchall())


def _quantity_amount(price: Price | None, quantity: Decimal) -> int:
    if price is None:
        return 0
    return amount_round(
        price_amount(
            model=price.model, unit_amount=price.unit_amount, tiers=price.tiers, quantity=quantity
        )
    )


@dataclass
class _Drift:
    invoice: Invoice
    metric_id: int
    billed: Decimal
    actual: Decimal
    delta: int
    detail: str


def _drifts(invoices: list[Invoice]) -> tuple[list[_Drift], set[tuple[int, int]]]:
    """Per invoice and priced metric, what differs. Also returns every (window, metric) pair
    checked, so open findings that no longer differ can be closed."""
    invoice_ids = [inv.pk for inv in invoices]
    aggregations = dict(Metric.objects.values_list("id", "aggregation"))
    prices = prices_by_plan()
    refs = [
        WindowRef(
            window_id=inv.window_id,
            customer_id=inv.window.subscription.customer_id,
            period_start=inv.window.period_start,
            period_end=inv.window.period_end,
            metric_ids=frozenset(
                p.metric_id for p in prices.get(inv.window.subscription.plan_id, [])
            ),
        )
        for inv in invoices
    ]
    usage = usage_for_windows(windows=refs, aggregations=aggregations)
    lines: dict[tuple[int, int], Decimal] = {}
    for invoice_id, metric_id, quantity in InvoiceLine.objects.filter(
        invoice_id__in=invoice_ids, metric__isnull=False
    ).values_list("invoice_id", "metric_id", "quantity"):
        lines[(invoice_id, metric_id)] = lines.get((invoice_id, metric_id), Decimal(0)) + quantity
    settled: dict[tuple[int, int], Decimal] = {}
    for invoice_id, metric_id, actual in (
        DriftFinding.objects.filter(kind=USAGE, invoice_id__in=invoice_ids, status__in=SETTLED)
        .order_by("resolved_at", "id")
        .values_list("invoice_id", "metric_id", "actual_quantity")
    ):
        settled[(invoice_id, metric_id)] = actual  # the latest settlement wins
    drifts: list[_Drift] = []
    checked: set[tuple[int, int]] = set()
    for invoice in invoices:
        plan_id = invoice.window.subscription.plan_id
        for price in prices.get(plan_id, []):
            key = (invoice.pk, price.metric_id)
            checked.add((invoice.window_id, price.metric_id))
            billed = settled.get(key, lines.get(key, Decimal(0)))
            actual = usage.get(invoice.window_id, {}).get(price.metric_id, Decimal(0))
            if actual == billed:
                continue
            delta = _quantity_amount(price, actual) - _quantity_amount(price, billed)
            drifts.append(
                _Drift(
                    invoice=invoice,
                    metric_id=price.metric_id,
                    billed=billed,
                    actual=actual,
                    delta=delta,
                    detail=(
                        f"{invoice.number} billed {decimal_str(billed)} {price.metric.code}; "
                        f"the events now add up to {decimal_str(actual)} "
                        f"({delta:+d} {invoice.currency} minor units at the current price)"
                    ),
                )
            )
    return drifts, checked


def _record(
    *,
    invoices: list[Invoice],
    drifts: list[_Drift],
    checked: set[tuple[int, int]],
    now: datetime,
    dry_run: bool,
    counts: dict[str, int],
) -> None:
    """Creates new findings, updates open ones whose numbers moved, closes open ones that no
    longer differ (the invoice was rerun by other means). Runs in the caller's fenced
    transaction."""
    window_ids = [inv.window_id for inv in invoices]
    open_findings = {
        (f.window_id, f.metric_id): f
        for f in DriftFinding.objects.select_for_update().filter(
            kind=USAGE, status=DriftFinding.Status.OPEN, window_id__in=window_ids
        )
    }
    found: set[tuple[int, int]] = set()
    new: list[DriftFinding] = []
    for drift in drifts:
        key = (drift.invoice.window_id, drift.metric_id)
        found.add(key)
        existing = open_findings.get(key)
        values = {
            "invoice_id": drift.invoice.pk,
            "invoiced_quantity": drift.billed,
            "actual_quantity": drift.actual,
            "delta_amount": drift.delta,
            "detail": drift.detail,
        }
        if existing is None:
            counts["findings"] += 1
            new.append(
                DriftFinding(
                    kind=USAGE,
                    window_id=drift.invoice.window_id,
                    metric_id=drift.metric_id,
                    created_at=now,
                    **values,
                )
            )
        elif (
            existing.invoice_id != drift.invoice.pk
            or existing.invoiced_quantity != drift.billed
            or existing.actual_quantity != drift.actual
            or existing.delta_amount != drift.delta
        ):
            counts["updated"] += 1
            if not dry_run:
                DriftFinding.objects.filter(pk=existing.pk).update(**values)
    stale = [f.pk for key, f in open_findings.items() if key in checked and key not in found]
    counts["closed"] += len(stale)
    if dry_run:
        return
    DriftFinding.objects.bulk_create(new)
    messages.drift_findings_opened_published(finding_ids=[f.pk for f in new])
    if stale:
        DriftFinding.objects.filter(pk__in=stale).update(
            status=DriftFinding.Status.RESOLVED,
            resolved_at=now,
            resolution_reason="No longer differs: the window's live invoice matches the events.",
        )
    BillingWindow.objects.filter(pk__in=window_ids).update(drift_checked_at=now)


def usage_drift_sweep(
    *,
    lease: Lease | None,
    now: datetime | None = None,
    since: datetime | None = None,
    dry_run: bool = False,
    on_progress: Callable[[dict[str, int]], None] | None = None,
    window_ids: Iterable[int] | None = None,
) -> dict[str, int]:
    """Compares invoiced windows with their events and records drift findings.

    1. Pick the windows: ``window_ids`` when given (a closed backfill's invoiced windows);
       else those touched by late events or corrections at or after ``since`` (incremental),
       or, with ``since=None``, every window with a live invoice ending after the drift
       horizon (full pass).
    2. Per chunk of windows: aggregate usage in one GROUP BY, compare per priced metric.
    3. Write in one transaction per chunk that first re-checks the lease's fencing token.

    Returns counts: ``windows`` checked, ``findings`` (new), ``updated``, ``closed`` and
    ``full`` (1 for a full pass)."""
    now = now or timezone.now()
    counts = {"full": int(since is None), "windows": 0, "findings": 0, "updated": 0, "closed": 0}
    live = _live_invoices().select_related("window__subscription").order_by("id")
    if window_ids is not None:
        counts["full"] = 0
        chunks: Iterable[list[Invoice]] = _chunks_of_ids(live, sorted(window_ids))
    elif since is not None:
        chunks = _chunks_of_ids(live, late_window_ids(since=since))
    else:
        chunks = _chunks_by_keyset(live.filter(period_end__gt=drift_horizon(now=now)))
    for invoices in chunks:
        lease_renew(lease)
        drifts, checked = _drifts(invoices)
        counts["windows"] += len(invoices)
        # A dry run reads in a transaction too: the open findings are read FOR UPDATE.
        with transaction.atomic() if dry_run else fenced(lease):
            _record(
                invoices=invoices,
                drifts=drifts,
                checked=checked,
                now=now,
                dry_run=dry_run,
                counts=counts,
            )
        if on_progress is not None:
            on_progress(counts)
    return counts


def _chunks_of_ids(live: Any, window_ids: list[int]) -> Iterable[list[Invoice]]:
    for start in range(0, len(window_ids), CHUNK):
        invoices = list(live.filter(window_id__in=window_ids[start : start + CHUNK]))
        if invoices:
            yield invoices


def _chunks_by_keyset(live: Any) -> Iterable[list[Invoice]]:
    last = 0
    while True:
        invoices = list(live.filter(pk__gt=last)[:CHUNK])
        if not invoices:
            return
        last = invoices[-1].pk
        yield invoices


# --- resolution ------------------------------------------------------------------------------

ACTIONS = ("rerun", "credit", "supplementary", "ignore")


@dataclass
class Resolution:
    """What resolving a finding did (or, in a dry run, would do)."""

    finding: DriftFinding
    action: str
    applied: bool
    rerun: RerunResult | None = None
    resolved: list[int] = field(default_factory=list)

    def to_preview(self) -> Any:
        from neruba.previews import Preview

        if self.rerun is not None:
            shown = self.rerun.to_preview()
        else:
            shown = Preview(
                summary="The finding is closed as ignored: nothing is billed or credited."
                if self.action == "ignore"
                else self.action
            )
        shown.facts.insert(0, ("finding", finding_title(self.finding)))
        shown.facts.insert(1, ("resolution", self.action))
        if self.resolved:
            shown.facts.append(("findings closed", ", ".join(f"#{n}" for n in self.resolved)))
        if not self.applied:
            shown.notes.append("Dry run: nothing is written until you confirm.")
        return shown

    def render(self) -> str:
        head = (
            f"finding {self.finding.pk} ({self.finding.kind}, window {self.finding.window_id}, "
            f"delta {self.finding.delta_amount:+d}): {self.action}"
            f"{'' if self.applied else ' (dry run)'}"
        )
        rows = [head]
        if self.rerun is not None:
            rows.append(self.rerun.render())
            if self.rerun.action == "none":
                rows.append(
                    "  no amount differs: nothing is voided, issued or credited; the finding "
                    "closes as no change"
                )
            if self.rerun.created:
                rows.append(f"  created: {', '.join(self.rerun.created)}")
        if self.resolved:
            rows.append(f"  findings closed: {', '.join(map(str, self.resolved))}")
        return "\n".join(rows)


def _check_action(finding: DriftFinding, action: str, invoice: Invoice | None) -> None:
    if action not in ACTIONS:
        raise ValidationFailed(
            "Unknown resolution.", details={"action": action, "allowed": list(ACTIONS)}
        )
    if action == "ignore":
        return
    if finding.kind != USAGE:
        raise ResolutionInvalid(
            "A payment finding is settled at the provider; ignore it once it is handled.",
            details={"finding": finding.pk, "kind": finding.kind},
        )
    if invoice is None:
        return  # never billed: the rerun bills the window
    if invoice.status == Invoice.Status.UNCOLLECTIBLE:
        raise ResolutionInvalid(
            "An uncollectible invoice is settled: ignore the finding with a reason.",
            details={"invoice": invoice.number, "status": invoice.status},
        )
    if action == "rerun" and invoice.status not in UNPAID:
        raise ResolutionInvalid(
            "Only an unpaid invoice is rerun; a paid one gets a credit or a supplementary "
            "invoice (action credit).",
            details={"invoice": invoice.number, "status": invoice.status},
        )
    if action in ("credit", "supplementary") and invoice.status != Invoice.Status.PAID:
        raise ResolutionInvalid(
            "Credits and supplementary invoices settle paid invoices; rerun an unpaid one.",
            details={"invoice": invoice.number, "status": invoice.status},
        )


def _window_invoice(window: BillingWindow) -> Invoice | None:
    return _live_invoices().filter(window=window).first()


def finding_resolve(
    *,
    finding: DriftFinding,
    action: str,
    actor: audit.Actor,
    reason: str,
    dry_run: bool = True,
) -> Resolution:
    """Resolves an open finding. Dry run (the default) only shows what would happen.

    - ``rerun`` (unpaid invoice): the window is re-priced from the events stored now; the invoice
      is voided and a superseding one issued (``billing.services.reruns.invoice_rerun``).
    - ``credit`` (paid invoice): the window is re-priced and the difference settled without
      touching the paid invoice: a ``correction`` credit when the customer was over-billed, a
      supplementary invoice when under-billed (``supplementary`` is the same action).
    - ``ignore``: the drift is accepted as it is, with the reason.

    A rerun or credit re-prices the whole window, so every open usage finding of the window is
    resolved with it. The finding, the billing change and the audit entry commit together."""
    if not reason.strip() and not dry_run:
        raise ValidationFailed("A reason is required.", details={"reason": "required"})
    finding = DriftFinding.objects.select_related("window", "invoice").get(pk=finding.pk)
    if finding.status != DriftFinding.Status.OPEN:
        raise FindingNotOpen(details={"finding": finding.pk, "status": finding.status})
    invoice = _window_invoice(finding.window) if finding.kind == USAGE else finding.invoice
    _check_action(finding, action, invoice)
    if action == "ignore":
        if dry_run:
            return Resolution(finding, action, applied=False, resolved=[finding.pk])
    elif dry_run:
        preview = invoice_rerun(
            actor=actor, reason=reason, dry_run=True, invoice=invoice, window=finding.window
        )
        return Resolution(finding, action, applied=False, rerun=preview)
    with transaction.atomic():
        locked = DriftFinding.objects.select_for_update().get(pk=finding.pk)
        if locked.status != DriftFinding.Status.OPEN:
            raise FindingNotOpen(details={"finding": locked.pk, "status": locked.status})
        result = None
        if action == "ignore":
            targets = [locked]
            resolution = DriftFinding.Resolution.IGNORE
            status = DriftFinding.Status.IGNORED
        else:
            result = invoice_rerun(
                actor=actor,
                reason=f"drift finding {locked.pk}: {reason}",
                dry_run=False,
                invoice=invoice,
                window=finding.window,
            )
            resolution = {
                "supersede": DriftFinding.Resolution.RERUN,
                "invoice": DriftFinding.Resolution.RERUN,
                "credit": DriftFinding.Resolution.CREDIT,
                "supplementary": DriftFinding.Resolution.SUPPLEMENTARY,
                "none": DriftFinding.Resolution.NO_CHANGE,
            }[result.action]
            status = DriftFinding.Status.RESOLVED
            targets = list(
                DriftFinding.objects.select_for_update().filter(
                    window=locked.window_id, kind=USAGE, status=DriftFinding.Status.OPEN
                )
            )
        now = timezone.now()
        user = actor if getattr(actor, "is_authenticated", False) else None
        DriftFinding.objects.filter(pk__in=[t.pk for t in targets]).update(
            status=status,
            resolution=resolution,
            resolved_by=user,
            resolved_at=now,
            resolution_reason=reason,
        )
        audit.record(
            actor=actor,
            action="drift_finding.resolve",
            target=locked,
            customer=locked.window.subscription.customer,
            reason=reason,
            before={"status": locked.status, "delta_amount": locked.delta_amount},
            after={
                "status": status,
                "resolution": resolution,
                "findings": [t.pk for t in targets],
                "rerun": result.as_dict() if result is not None else None,
            },
        )
    finding.refresh_from_db()
    return Resolution(finding, action, applied=True, rerun=result, resolved=[t.pk for t in targets])
