""" "Why wasn't this billed?": the chain from an idempotency key to an invoice line.

Each step says what the records show (stored or rejected, customer and metric matched, the
subscription active at the event's timestamp, its window, the invoice and line, or the late flag
and the drift finding it raised) and the first broken link is the answer. Reads only: every
query is bounded by the key, the customer or the window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Model, Q

from billing.models import (
    BillingWindow,
    Dispute,
    DriftFinding,
    Invoice,
    PaymentFinding,
    Price,
    Refund,
    Subscription,
)
from billing.periods import period_current
from ingest.models import IngestRejection, UsageEvent
from ingest.selectors import counting_row, event_history
from ingest.services import rejection_replay
from neruba.money import money, quantity

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"


@dataclass
class Step:
    title: str
    status: str
    detail: str
    record: Model | None = None


@dataclass
class Explanation:
    idempotency_key: str
    verdict: str = ""
    billed: bool = False
    event: UsageEvent | None = None
    rejections: list[IngestRejection] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)

    def add(self, title: str, status: str, detail: str, record: Model | None = None) -> None:
        self.steps.append(Step(title, status, detail, record))

    def stop(self, verdict: str) -> Explanation:
        self.verdict = self.verdict or verdict
        return self


def _at(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if value else "—"


def _rejections(explanation: Explanation) -> Explanation:
    """No stored event: the rejections say why, and whether the cause is fixed now."""
    latest = explanation.rejections[-1]
    for rejection in explanation.rejections:
        explanation.add(
            f"Rejected ({rejection.outcome}) at {_at(rejection.created_at)}",
            FAIL,
            f"{rejection.error_code}: {rejection.error_message} — rejection is {rejection.status}"
            f", replayed {rejection.replay_attempts} time(s).",
            rejection,
        )
    if latest.status != IngestRejection.Status.REPLAYED and latest.outcome == "failed":
        # The answer is the replay's own dry run, so the explainer and the Replay button can
        # never disagree (a too-old event stays too old whatever is fixed).
        replay = rejection_replay(rejection=latest, actor=None, reason="", dry_run=True)
        works = replay.outcome in ("replay", "duplicate")
        explanation.add(
            "Can it be replayed now?",
            OK if works else WARN,
            f"A replay now {replay.describe().rstrip('.')}. "
            + (
                "Replay the rejection from its page."
                if works
                else "Fix the cause first, or dismiss the rejection with a reason if it "
                "cannot be fixed."
            ),
            latest,
        )
    return explanation.stop(
        f"Not billed: the event was rejected ({latest.error_code}: {latest.error_message}) "
        "and never stored."
    )


def _subscription_at(event: UsageEvent) -> Subscription | None:
    return (
        Subscription.objects.filter(customer_id=event.customer_id, started_at__lte=event.timestamp)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=event.timestamp))
        .select_related("plan")
        .order_by("-started_at", "-id")
        .first()
    )


def _cash_steps(explanation: Explanation, invoice: Invoice) -> None:
    """What happened to the money of the invoice that billed the event: paid, refunded, lost in
    disputes, collected. A refund or a lost dispute is cash back on the card, never credit."""
    cur = invoice.currency
    if invoice.amount_paid or invoice.amount_refunded or invoice.amount_disputed:
        explanation.add(
            "Payment",
            OK if invoice.amount_collected >= 0 else WARN,
            f"Invoice {invoice.number}: charged {money(invoice.total, cur)}, paid "
            f"{money(invoice.amount_paid, cur)}, refunded {money(invoice.amount_refunded, cur)}, "
            f"lost in disputes {money(invoice.amount_disputed, cur)}, collected "
            f"{money(invoice.amount_collected, cur)}.",
            invoice,
        )
    for refund in Refund.objects.filter(invoice=invoice).order_by("id")[:10]:
        if refund.status == "succeeded":
            words = f"refund processed: {money(refund.amount, refund.currency)} back to the card"
        else:
            words = f"refund {refund.status}: nothing went back to the card"
        explanation.add(f"Refund {refund.stripe_refund_id}", INFO, f"{words}.", refund)
    for dispute in Dispute.objects.filter(invoice=invoice).order_by("id")[:10]:
        if dispute.status == "lost":
            words = (
                f"dispute closed: lost; {money(dispute.amount, dispute.currency)} went back "
                "to the card"
            )
        elif dispute.closed_at is not None:
            words = f"dispute closed: {dispute.status}; the payment stands"
        else:
            words = f"dispute {dispute.status}"
        explanation.add(f"Dispute {dispute.stripe_dispute_id}", INFO, f"{words}.", dispute)
    for finding in PaymentFinding.objects.filter(invoice=invoice).order_by("id")[:10]:
        explanation.add(
            f"Payment finding #{finding.pk}",
            WARN if finding.status == PaymentFinding.Status.OPEN else INFO,
            f"{finding.detail} ({finding.status}).",
            finding,
        )


def _invoice_steps(
    explanation: Explanation, event: UsageEvent, window: BillingWindow
) -> Explanation:
    invoice = (
        Invoice.objects.filter(window=window, kind=Invoice.Kind.REGULAR)
        .exclude(status=Invoice.Status.VOID)
        .first()
    )
    if invoice is None:
        explanation.add(
            "Invoice",
            WARN,
            "No live invoice for this window yet; the next billing run picks it up "
            "(every closed window with no live invoice is billed).",
            window,
        )
        return explanation.stop("Not billed yet: the window has no live invoice.")
    line = invoice.lines.filter(metric_id=event.metric_id).first()
    # A late event arrived after its window was invoiced: only an invoice issued after it (a
    # rerun's) can count it.
    counted = not event.late or event.received_at < invoice.issued_at
    if counted and line is not None:
        explanation.add(
            "Invoice line",
            OK,
            f"Invoice {invoice.number} ({invoice.status}), line “{line.description}”: quantity "
            f"{quantity(line.quantity)}, amount {money(line.amount, invoice.currency)}.",
            invoice,
        )
        explanation.billed = True
        _cash_steps(explanation, invoice)
        if not event.late:
            return explanation.stop(f"Billed on invoice {invoice.number}.")
    elif counted:
        explanation.add(
            "Invoice line",
            WARN,
            f"Invoice {invoice.number} has no line for {event.metric.code}.",
            invoice,
        )
    else:
        explanation.add(
            "Invoice",
            WARN,
            f"Invoice {invoice.number} was issued at {_at(invoice.issued_at)}, before the event "
            f"arrived ({_at(event.received_at)}): it is not counted there.",
            invoice,
        )
    if not event.late:
        return explanation.stop(f"Invoice {invoice.number} does not include this event.")
    explanation.add(
        "Late",
        WARN,
        "The event arrived after its window was invoiced (late flag set at ingest); the drift "
        "sweep re-checks the window and records the difference as a finding.",
        event,
    )
    for extra in Invoice.objects.filter(window=window, kind=Invoice.Kind.SUPPLEMENTARY).exclude(
        status=Invoice.Status.VOID
    ):
        explanation.add(
            f"Supplementary invoice {extra.number}",
            INFO,
            f"{extra.status}, total {money(extra.total, extra.currency)}: billed the "
            "difference found after the window's invoice was paid.",
            extra,
        )
    finding = (
        DriftFinding.objects.filter(window=window)
        .filter(Q(metric_id=event.metric_id) | Q(metric__isnull=True))
        .order_by("-created_at", "-id")
        .first()
    )
    if finding is None:
        explanation.add(
            "Drift finding",
            INFO,
            "No drift finding for this window and metric yet: the next drift sweep raises one.",
            window,
        )
        if explanation.billed:
            return explanation.stop(
                f"Billed on invoice {invoice.number}, issued after the event arrived late."
            )
        return explanation.stop(
            f"Late: arrived after invoice {invoice.number}; no drift finding raised yet."
        )
    is_open = finding.status == DriftFinding.Status.OPEN
    resolution = (
        ""
        if is_open
        else f", {finding.resolution} by {finding.resolved_by} — {finding.resolution_reason}"
    )
    explanation.add(
        f"Drift finding #{finding.pk}",
        WARN if is_open else OK,
        f"{finding.status}: invoiced {quantity(finding.invoiced_quantity)} vs actual "
        f"{quantity(finding.actual_quantity)} (delta "
        f"{money(finding.delta_amount, invoice.currency, signed=True)}){resolution}.",
        finding,
    )
    state = finding.status + ("" if is_open else f" ({finding.resolution})")
    if explanation.billed:
        # A rerun voided the invoice the event missed and issued this one, which counts it.
        return explanation.stop(
            f"Billed on invoice {invoice.number} after a rerun: the event arrived late; drift "
            f"finding #{finding.pk} is {state}."
        )
    return explanation.stop(
        f"Late: arrived after invoice {invoice.number}; drift finding #{finding.pk} is {state}."
    )


def _correction_steps(
    explanation: Explanation, event: UsageEvent, corrections: list[dict[str, Any]]
) -> UsageEvent | None:
    """One step per void or amendment; returns the row counted for the key now (``None`` once
    voided)."""
    for c in corrections:
        before, after = c["before"], c["after"]
        if c["kind"] == "void":
            detail = (
                f"by {c['actor']}: “{c['reason']}”. Value {before.get('value') or '—'} no longer "
                "counts in any aggregation."
            )
        else:
            detail = (
                f"by {c['actor']}: “{c['reason']}”. Properties {before.get('properties')} → "
                f"{after.get('properties')}; value {before.get('value') or '—'} → "
                f"{after.get('value') or '—'} (counted as event {c['replacement_event_id']})."
            )
        if c["invoiced_period"]:
            detail += " Its period was already invoiced: the drift sweep re-checks the window."
        title = "Voided" if c["kind"] == "void" else "Amended"
        explanation.add(f"{title} at {_at(c['at'])}", WARN, detail, event)
    return counting_row(event=event)


def _voided(explanation: Explanation, event: UsageEvent, last: dict[str, Any]) -> Explanation:
    finding = (
        DriftFinding.objects.filter(
            window__subscription__customer_id=event.customer_id,
            window__period_start__lte=event.timestamp,
            window__period_end__gt=event.timestamp,
            metric_id=event.metric_id,
        )
        .order_by("-created_at", "-id")
        .first()
    )
    tail = ""
    if finding is not None:
        tail = f"; drift finding #{finding.pk} is {finding.status}"
    elif last["invoiced_period"]:
        tail = "; its window was invoiced, the next drift sweep raises a finding"
    return explanation.stop(
        f"Voided at {_at(last['at'])} by {last['actor']} (“{last['reason']}”): no longer "
        f"billed{tail}."
    )


def explain_key(*, idempotency_key: str) -> Explanation:
    """The billing chain for one idempotency key; ``verdict`` is the one-line answer."""
    explanation = Explanation(idempotency_key=idempotency_key)
    found = event_history(idempotency_key=idempotency_key)
    if found is None:
        explanation.add(
            "Received?",
            FAIL,
            "No stored event and no rejection has this key: the client never sent it, sent it "
            "with another key, or its rejection was pruned by retention.",
        )
        return explanation.stop("Never received.")
    explanation.rejections = list(
        IngestRejection.objects.filter(idempotency_key=idempotency_key).order_by("created_at", "id")
    )
    event: UsageEvent | None = found["event"]
    archived = found.get("archived")
    if event is None and archived is not None:
        explanation.add(
            "Stored",
            INFO,
            f"Event {archived['event_id']} (timestamp {_at(archived['timestamp'])}) was stored "
            f"and its month {archived['month']} archived on {_at(archived['archived_at'])}: it "
            "left the live event store (export: "
            f"{archived['path'] or 'not kept'}). The key stays taken.",
        )
        return explanation.stop(f"Archived with month {archived['month']}.")
    if event is None:
        return _rejections(explanation)
    explanation.event = event
    how = f"replay of rejection {event.rejection_id}" if event.rejection_id else "accepted"
    explanation.add(
        "Stored",
        OK,
        f"Event {event.pk} ({how}), received {_at(event.received_at)}, timestamp "
        f"{_at(event.timestamp)}, source {event.source}. Duplicates since: "
        f"{found['duplicate_count']}.",
        event,
    )
    for rejection in explanation.rejections:
        explanation.add(
            f"Also seen as {rejection.outcome}",
            INFO,
            f"{_at(rejection.created_at)}: {rejection.error_code} — {rejection.error_message}",
            rejection,
        )
    counted = _correction_steps(explanation, event, found["corrections"])
    if counted is None:
        return _voided(explanation, event, found["corrections"][-1])
    explanation.add(
        "Customer and metric",
        OK,
        f"customer {event.customer.external_id}, metric {event.metric.code} "
        f"({event.metric.aggregation}); value "
        + (quantity(counted.value) if counted.value is not None else "—")
        + (f" (amended; counted as event {counted.pk})" if counted.pk != event.pk else "")
        + ".",
        event.customer,
    )
    subscription = _subscription_at(event)
    if subscription is None:
        explanation.add(
            "Subscription",
            FAIL,
            f"No subscription of {event.customer.external_id} was active at "
            f"{_at(event.timestamp)}: usage outside a subscription is never billed.",
            event.customer,
        )
        return explanation.stop("Not billed: no subscription was active at the event's time.")
    priced = Price.objects.filter(plan_id=subscription.plan_id, metric_id=event.metric_id).exists()
    explanation.add(
        "Subscription",
        OK if priced else FAIL,
        f"On plan {subscription.plan.code} since {_at(subscription.started_at)}"
        + (f" until {_at(subscription.ended_at)}" if subscription.ended_at else "")
        + ("" if priced else f"; the plan has no price for {event.metric.code}")
        + ".",
        subscription,
    )
    if not priced:
        return explanation.stop(
            f"Not billed: plan {subscription.plan.code} does not price {event.metric.code}."
        )
    window = BillingWindow.objects.filter(
        subscription=subscription,
        period_start__lte=event.timestamp,
        period_end__gt=event.timestamp,
    ).first()
    if window is None:
        bounds = period_current(
            interval=subscription.plan.interval,
            started_at=subscription.started_at,
            ended_at=subscription.ended_at,
            at=event.timestamp,
        )
        end = bounds[1] if bounds else None
        explanation.add(
            "Billing window",
            INFO,
            f"The window has not been opened for billing yet: it closes at {_at(end)} and is "
            f"billed after the grace period "
            f"({settings.NERUBA['NERUBA_BILLING_GRACE']} s).",
            subscription,
        )
        return explanation.stop("Not billed yet: its billing window has not closed.")
    explanation.add(
        "Billing window",
        OK if window.status == BillingWindow.Status.INVOICED else WARN,
        f"{_at(window.period_start)} to {_at(window.period_end)}, status {window.status}"
        + (f" (last error: {window.last_error})" if window.last_error else "")
        + ".",
        window,
    )
    return _invoice_steps(explanation, event, window)


def explanation_dict(explanation: Explanation) -> dict[str, Any]:
    """Plain data, for tests and any future API."""
    return {
        "idempotency_key": explanation.idempotency_key,
        "verdict": explanation.verdict,
        "billed": explanation.billed,
        "steps": [
            {"title": s.title, "status": s.status, "detail": s.detail} for s in explanation.steps
        ],
    }
