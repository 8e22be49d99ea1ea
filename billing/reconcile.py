"""Payment reconciliation: invoices pushed to Stripe with no payment outcome after
``NERUBA_RECONCILE_AFTER`` are fetched from Stripe and brought in step.

This is the answer to a webhook that never arrived (an endpoint down for longer than Stripe
retries, a secret rotated too early, an event lost in a dead letter). What Stripe reports is
applied through the same service the webhook handlers call (``billing.payments``), so the
order-safety rules hold: a paid invoice never moves back. What cannot be brought in step
automatically (Stripe no longer knows the invoice, it is still a draft, the amounts differ)
becomes a ``DriftFinding`` of kind ``payment`` for an operator.

Stripe calls happen outside any transaction; each write re-checks the sweep's lease first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from billing import messages
from billing.models import DriftFinding, Invoice
from billing.payments import invoice_payment_status_record
from billing.providers import PaymentProvider, StripeProvider, provider_get
from billing.services.invoicing import UNPAID
from neruba.fencing import fenced, lease_renew
from neruba.locks import Lease

PAYMENT = "payment"
CHUNK = 200
# Stripe's invoice statuses that are a payment outcome, and ours for them.
OUTCOMES = {
    "paid": Invoice.Status.PAID,
    "void": Invoice.Status.VOID,
    "uncollectible": Invoice.Status.UNCOLLECTIBLE,
}
_TRANSITIONS = {"paid": "paid_at", "void": "voided_at", "uncollectible": "marked_uncollectible_at"}


@dataclass
class Remote:
    """The provider's view of one invoice."""

    status: str
    occurred_at: datetime | None = None
    amount_due: int | None = None
    missing: bool = False


def remote_invoice(*, provider: PaymentProvider, invoice: Invoice) -> Remote:
    """Fetches the invoice from the provider (the Stripe SDK for Stripe)."""
    if isinstance(provider, StripeProvider):
        try:
            obj = provider.client.v1.invoices.retrieve(invoice.provider_invoice_id).to_dict()
        except stripe.InvalidRequestError as exc:
            if getattr(exc, "http_status", None) == 404:
                return Remote(status="", missing=True)
            raise
        transitions = obj.get("status_transitions") or {}
        stamp = transitions.get(_TRANSITIONS.get(obj.get("status") or "", ""))
        return Remote(
            status=str(obj.get("status") or ""),
            occurred_at=datetime.fromtimestamp(stamp, tz=UTC) if isinstance(stamp, int) else None,
            amount_due=obj.get("amount_due") if isinstance(obj.get("amount_due"), int) else None,
        )
    return Remote(status=provider.fetch_invoice_status(invoice) or "")


def invoices_to_reconcile(*, now: datetime) -> Any:
    """Invoices at Stripe still waiting for a payment outcome after the reconcile delay."""
    cutoff = now - timedelta(seconds=settings.NERUBA["NERUBA_RECONCILE_AFTER"])
    return (
        Invoice.objects.filter(provider="stripe", status__in=UNPAID)
        .exclude(provider_invoice_id="")
        .filter(
            Q(status_changed_at__lte=cutoff)
            | Q(status_changed_at__isnull=True, issued_at__lte=cutoff)
        )
        .select_related("customer")
        .order_by("id")
    )


def _finding_upsert(
    *, invoice: Invoice, detail: str, now: datetime, counts: dict[str, int]
) -> None:
    """One open payment finding per window (metric is NULL, which a unique constraint cannot
    compare, so the lookup is explicit; the sweep's lease keeps it single-writer)."""
    existing = DriftFinding.objects.filter(
        window_id=invoice.window_id, kind=PAYMENT, status=DriftFinding.Status.OPEN
    ).first()
    if existing is None:
        finding = DriftFinding.objects.create(
            kind=PAYMENT,
            window_id=invoice.window_id,
            invoice=invoice,
            detail=detail,
            created_at=now,
            invoiced_quantity=0,
            actual_quantity=0,
            delta_amount=0,
        )
        messages.payment_finding_opened_published(finding=finding)
        counts["findings"] += 1
    elif existing.detail != detail or existing.invoice_id != invoice.pk:
        DriftFinding.objects.filter(pk=existing.pk).update(detail=detail, invoice=invoice)
        counts["updated"] += 1


def _findings_close(*, invoice: Invoice, now: datetime, why: str) -> int:
    return DriftFinding.objects.filter(
        window_id=invoice.window_id, kind=PAYMENT, status=DriftFinding.Status.OPEN
    ).update(status=DriftFinding.Status.RESOLVED, resolved_at=now, resolution_reason=why)


def _mismatch(invoice: Invoice, remote: Remote) -> str:
    """Why the invoice cannot be brought in step automatically, or "" when it can (or is)."""
    if remote.missing:
        return f"Stripe has no invoice {invoice.provider_invoice_id} for {invoice.number}."
    if remote.status == "draft":
        return (
            f"Stripe invoice {invoice.provider_invoice_id} for {invoice.number} is still a "
            "draft: it was never finalized, so it cannot be paid."
        )
    if remote.status not in OUTCOMES and remote.status != "open":
        return f"Stripe reports an unknown status {remote.status!r} for {invoice.number}."
    if remote.amount_due is not None and remote.amount_due != invoice.total:
        return (
            f"Stripe invoice {invoice.provider_invoice_id} asks {remote.amount_due} but "
            f"{invoice.number} totals {invoice.total} {invoice.currency}."
        )
    return ""


def reconciliation_sweep(
    *,
    lease: Lease | None,
    now: datetime | None = None,
    dry_run: bool = False,
    provider: PaymentProvider | None = None,
    on_progress: Callable[[dict[str, int]], None] | None = None,
) -> dict[str, int]:
    """Brings unpaid Stripe invoices older than ``NERUBA_RECONCILE_AFTER`` in step with Stripe.

    1. Select the invoices (provider stripe, a Stripe id, finalized or payment_failed since
       before the cutoff), oldest first.
    2. Fetch each from Stripe, outside any transaction.
    3. A payment outcome (paid, void, uncollectible) is applied with
       ``invoice_payment_status_record`` in a fenced transaction, audited as reconciliation;
       a mismatch is recorded as (or updates) the window's open payment finding.

    Counts: ``checked``, ``corrected``, ``open`` (Stripe agrees nothing happened yet),
    ``findings`` (new), ``updated``, ``errors`` (fetch failed; retried next sweep)."""
    now = now or timezone.now()
    counts = dict.fromkeys(("checked", "corrected", "open", "findings", "updated", "errors"), 0)
    provider = provider or provider_get()
    if provider.name != "stripe":
        return counts  # nothing to ask: without Stripe keys invoices are settled by hand
    last = 0
    while True:
        invoices = list(invoices_to_reconcile(now=now).filter(pk__gt=last)[:CHUNK])
        if not invoices:
            return counts
        last = invoices[-1].pk
        for invoice in invoices:
            lease_renew(lease)
            counts["checked"] += 1
            try:
                remote = remote_invoice(provider=provider, invoice=invoice)
            except stripe.StripeError:
                counts["errors"] += 1
                continue
            _reconcile_one(
                invoice=invoice, remote=remote, lease=lease, now=now, dry_run=dry_run, counts=counts
            )
        if on_progress is not None:
            on_progress(counts)


def _reconcile_one(
    *,
    invoice: Invoice,
    remote: Remote,
    lease: Lease | None,
    now: datetime,
    dry_run: bool,
    counts: dict[str, int],
) -> None:
    mismatch = _mismatch(invoice, remote)
    if mismatch:
        if dry_run:
            known = DriftFinding.objects.filter(
                window_id=invoice.window_id, kind=PAYMENT, status=DriftFinding.Status.OPEN
            ).exists()
            counts["updated" if known else "findings"] += 1
            return
        with fenced(lease):
            _finding_upsert(invoice=invoice, detail=mismatch, now=now, counts=counts)
        return
    if remote.status == "open":
        counts["open"] += 1
        return
    counts["corrected"] += 1
    if dry_run:
        return
    with fenced(lease):
        invoice_payment_status_record(
            invoice=invoice,
            status=OUTCOMES[remote.status],
            occurred_at=remote.occurred_at or now,
            provider_invoice_id=invoice.provider_invoice_id,
            source=f"reconciliation: Stripe reports {invoice.provider_invoice_id} {remote.status}",
            details={"reconciled_at": now},
        )
        _findings_close(invoice=invoice, now=now, why=f"In step with Stripe ({remote.status}).")
