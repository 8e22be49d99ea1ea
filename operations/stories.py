"""What a record's console page tells besides its fields: the invoice's money story (lines,
payment, refunds, disputes, credits, Stripe events, provider sync, what it supersedes), the
billing run's windows and invoices, the window's invoices and findings, and for every record
the audit timeline that Django's empty *History* never had. Reads only; each list is bounded.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Model, Q, Sum

from billing.models import (
    BillingRun,
    BillingWindow,
    CreditEntry,
    Dispute,
    DriftFinding,
    Invoice,
    ProviderSync,
    Refund,
)
from neruba import audit
from neruba.models import AuditEntry
from neruba.money import money
from webhooks.models import StripeEvent

LIMIT = 50

# How an invoice got paid, read from the audit entry that changed its status.
PAID_BY = {
    "invoice.mark_paid": "marked paid by hand in the console",
    "invoice.payment_status": "updated from the payment provider",
}


def timeline(*, obj: Model, extra: Q | None = None) -> list[AuditEntry]:
    """Audit entries about ``obj`` (and ``extra``), newest first."""
    match = Q(target_type=obj._meta.label_lower, target_id=audit.public_id(obj))
    if extra is not None:
        match |= extra
    return list(AuditEntry.objects.filter(match).order_by("-created_at", "-id")[:LIMIT])


def _how_paid(invoice: Invoice, entries: list[AuditEntry]) -> str:
    if invoice.status != Invoice.Status.PAID:
        return ""
    for entry in entries:
        after = entry.after or {}
        if after.get("status") == "paid" or entry.action == "invoice.mark_paid":
            how = PAID_BY.get(entry.action, entry.action)
            if entry.actor_label in ("", "system"):
                who = "the system"
                if "reconcil" in (entry.reason or "").lower():
                    how = "corrected by the reconciliation sweep"
                elif (
                    "webhook" in (entry.reason or "").lower()
                    or "stripe" in (entry.reason or "").lower()
                ):
                    how = "from a Stripe webhook"
            else:
                who = entry.actor_label
            return f"{how} ({who}, {entry.created_at:%Y-%m-%d %H:%M} UTC): {entry.reason}"
    if invoice.stripe_events.filter(type="invoice.paid").exists():
        return "from Stripe's invoice.paid webhook"
    return "paid (no audit entry names how)"


def invoice_story(*, invoice: Invoice) -> dict[str, Any]:
    cur = invoice.currency
    entries = timeline(obj=invoice)
    credits = list(
        CreditEntry.objects.filter(invoice=invoice).select_related("actor").order_by("created_at")
    )
    refunds = list(Refund.objects.filter(invoice=invoice).order_by("created_at")[:LIMIT])
    disputes = list(Dispute.objects.filter(invoice=invoice).order_by("created_at")[:LIMIT])
    events = list(
        StripeEvent.objects.filter(invoice=invoice)
        .defer("raw_body", "payload", "headers")
        .order_by("created", "id")[:LIMIT]
    )
    syncs = list(ProviderSync.objects.filter(invoice=invoice).order_by("id")[:LIMIT])
    window_invoices = list(
        Invoice.objects.filter(window_id=invoice.window_id).order_by("issued_at", "id")[:LIMIT]
    )
    findings = list(DriftFinding.objects.filter(window_id=invoice.window_id).order_by("-id")[:20])
    return {
        "summary": [
            (
                "Status",
                invoice.status + (f" ({invoice.kind})" if invoice.kind != "regular" else ""),
            ),
            ("Subtotal", money(invoice.subtotal, cur)),
            ("Credits applied", money(-invoice.credits_applied, cur)),
            ("Total", money(invoice.total, cur)),
            ("How it was paid", _how_paid(invoice, entries) or "not paid"),
            *([("Refunded", money(sum(r.amount for r in refunds), cur))] if refunds else []),
            *([("Disputed", money(sum(d.amount for d in disputes), cur))] if disputes else []),
        ],
        "credits": credits,
        "refunds": refunds,
        "disputes": disputes,
        "stripe_events": events,
        "syncs": syncs,
        "window_invoices": window_invoices,
        "findings": findings,
        "timeline": entries,
    }


def run_story(*, run: BillingRun) -> dict[str, Any]:
    invoices = run.invoices.select_related("customer").order_by("number")
    per_currency = list(
        invoices.order_by().values("currency").annotate(n=Count("id"), total=Sum("total"))
    )
    windows = (
        BillingWindow.objects.filter(claimed_by_run=run)
        .select_related("subscription__customer", "subscription__plan")
        .order_by("period_end", "id")
    )
    return {
        "dry_run": run.dry_run,
        "totals": [
            {
                "currency": row["currency"],
                "n": row["n"],
                "total": money(row["total"], row["currency"]),
            }
            for row in per_currency
        ],
        "invoices": list(invoices[:LIMIT]),
        "invoice_count": invoices.count(),
        "windows": list(windows[:LIMIT]),
        "window_count": windows.count(),
        "failed_windows": list(windows.filter(status=BillingWindow.Status.FAILED)[:LIMIT]),
        "errors": run.errors or [],
        "timeline": timeline(obj=run),
    }


def window_story(*, window: BillingWindow) -> dict[str, Any]:
    return {
        "invoices": list(
            Invoice.objects.filter(window=window)
            .select_related("supersedes")
            .order_by("issued_at", "id")
        ),
        "findings": list(DriftFinding.objects.filter(window=window).order_by("-id")[:20]),
        "timeline": timeline(obj=window),
    }


def dispute_story(*, dispute: Dispute) -> dict[str, Any]:
    """A dispute's Stripe events (created, updated, closed) and the evidence deadline they
    carry (``evidence_details.due_by``)."""
    from datetime import UTC, datetime

    events = list(
        StripeEvent.objects.filter(object_id=dispute.stripe_dispute_id).order_by("created", "id")[
            :LIMIT
        ]
    )
    due = None
    for event in reversed(events):
        obj = ((event.payload or {}).get("data") or {}).get("object") or {}
        stamp = (obj.get("evidence_details") or {}).get("due_by")
        if stamp:
            due = datetime.fromtimestamp(int(stamp), tz=UTC)
            break
    return {
        "stripe_events": events,
        "evidence_due": due,
        "amount": money(dispute.amount, dispute.currency),
        "timeline": timeline(obj=dispute),
    }
