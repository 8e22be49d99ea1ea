"""Reruns: re-pricing a billed window from the events stored now, without rewriting history."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing import messages
from billing.drafts import InvoiceDraft, LineDraft, WindowRow
from billing.exceptions import InvoiceStateInvalid
from billing.ledger import credit_grant
from billing.models import BillingRun, BillingWindow, CreditEntry, Invoice, ProviderSync, ReasonCode
from billing.pricing import decimal_str
from billing.services.invoicing import UNPAID, _invoices_write, window_draft
from billing.services.outbox import _enqueue_syncs
from neruba import audit


@dataclass
class RerunResult:
    """What a rerun found (and, when applied, did). ``action``: ``supersede`` (void the unpaid
    invoice and issue a new one), ``credit`` (paid, over-billed), ``supplementary`` (paid,
    under-billed), ``invoice`` (never billed), ``none`` (no amount differs: nothing is voided,
    issued or credited)."""

    window: BillingWindow
    invoice: Invoice | None
    action: str
    old_lines: list[dict[str, Any]]
    new_lines: list[dict[str, Any]]
    old_subtotal: int
    new_subtotal: int
    delta: int
    applied: bool = False
    created: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "window": self.window.pk,
            "invoice": self.invoice.number if self.invoice else None,
            "action": self.action,
            "old_subtotal": self.old_subtotal,
            "new_subtotal": self.new_subtotal,
            "delta": self.delta,
            "old_lines": self.old_lines,
            "new_lines": self.new_lines,
            "applied": self.applied,
            "created": self.created,
        }

    ACTION_WORDS = {
        "supersede": "The unpaid invoice is voided and a new invoice supersedes it",
        "credit": "The paid invoice stands; the over-billed difference is credited",
        "supplementary": "The paid invoice stands; a supplementary invoice bills the difference",
        "invoice": "The window was never billed; an invoice is issued",
        "none": "Nothing changes: the window prices the same",
    }

    @property
    def currency(self) -> str:
        if self.invoice is not None:
            return self.invoice.currency
        return self.window.subscription.plan.currency

    def to_preview(self) -> Any:
        """The confirmation page's tables: each line before -> after, the subtotal, what is
        voided or issued. Amounts through the one money formatter."""
        from neruba.money import money, quantity
        from neruba.previews import Preview, PreviewTable

        cur = self.currency
        old = {line["description"]: line for line in self.old_lines}
        new = {line["description"]: line for line in self.new_lines}
        rows = []
        for key in list(dict.fromkeys([*old, *new])):
            a, b = old.get(key), new.get(key)
            delta = (b["amount"] if b else 0) - (a["amount"] if a else 0)
            rows.append(
                [
                    key,
                    quantity(a["quantity"]) if a else "—",
                    quantity(b["quantity"]) if b else "—",
                    money(a["amount"], cur) if a else "—",
                    money(b["amount"], cur) if b else "—",
                    money(delta, cur, signed=True),
                ]
            )
        number = self.invoice.number if self.invoice else "—"
        will = []
        if self.action == "supersede":
            will = [f"void {number}", "issue a new invoice that supersedes it"]
        elif self.action == "credit":
            will = [f"grant a correction credit of {money(-self.delta, cur)} linked to {number}"]
        elif self.action == "supplementary":
            will = [f"issue a supplementary invoice of {money(self.delta, cur)} for {number}"]
        elif self.action == "invoice":
            will = ["issue the window's invoice"]
        if self.created:
            will.append(f"created: {', '.join(self.created)}")
        return Preview(
            summary=f"{self.ACTION_WORDS.get(self.action, self.action)}"
            f"{'' if self.applied else ' (dry run: nothing written yet)'}.",
            facts=[
                ("window", f"{self.window.pk} ({self.window})"),
                ("invoice", number),
                ("will", "; ".join(will) or "nothing"),
            ],
            tables=[
                PreviewTable(
                    caption="Invoice lines, now and after the rerun",
                    headers=[
                        "Line",
                        "Qty now",
                        "Qty after",
                        "Amount now",
                        "Amount after",
                        "Change",
                    ],
                    rows=rows,
                    footer=[
                        "Subtotal",
                        "",
                        "",
                        money(self.old_subtotal, cur),
                        money(self.new_subtotal, cur),
                        money(self.delta, cur, signed=True),
                    ],
                )
            ],
            tone="ok" if self.action != "none" else "warn",
        )

    def render(self) -> str:
        rows = [
            f"window {self.window.pk} ({self.window}) invoice "
            f"{self.invoice.number if self.invoice else '-'}: {self.action}, "
            f"subtotal {self.old_subtotal} -> {self.new_subtotal} (delta {self.delta:+d})"
        ]
        old = {line["description"]: line for line in self.old_lines}
        new = {line["description"]: line for line in self.new_lines}
        for key in list(dict.fromkeys([*old, *new])):
            a, b = old.get(key), new.get(key)
            rows.append(
                f"  {key}: qty {a['quantity'] if a else '-'} -> {b['quantity'] if b else '-'}, "
                f"amount {a['amount'] if a else '-'} -> {b['amount'] if b else '-'}"
            )
        return "\n".join(rows)


def _line_dicts(invoice: Invoice) -> list[dict[str, Any]]:
    return [
        {
            "metric": line.metric.code if line.metric else None,
            "description": line.description,
            "quantity": decimal_str(line.quantity),
            "unit_amount": decimal_str(line.unit_amount),
            "amount": line.amount,
        }
        for line in invoice.lines.select_related("metric")
    ]


def _amounts(lines: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return sorted((line["metric"] or line["description"], line["amount"]) for line in lines)


def _billed_so_far(*, invoice: Invoice) -> int:
    """What the customer owes for the window after earlier adjustments: the paid invoice, plus
    supplementary invoices, minus rerun correction credits. Makes a repeated rerun a no-op."""
    window = invoice.window
    supplementary = (
        Invoice.objects.filter(window=window, kind=Invoice.Kind.SUPPLEMENTARY)
        .exclude(status=Invoice.Status.VOID)
        .aggregate(total=Sum("subtotal"))["total"]
        or 0
    )
    credited = (
        CreditEntry.objects.filter(
            invoice=invoice, kind=CreditEntry.Kind.GRANT, source_key__startswith="rerun:"
        ).aggregate(total=Sum("amount"))["total"]
        or 0
    )
    return invoice.subtotal + int(supplementary) - int(credited)


def invoice_rerun(
    *,
    actor: audit.Actor,
    reason: str,
    invoice: Invoice | None = None,
    window: BillingWindow | None = None,
    dry_run: bool = True,
) -> RerunResult:
    """Re-prices a window from the events stored now, without rewriting history.

    Unpaid (finalized, payment_failed): void it, give back the credits it consumed, and issue a
    superseding invoice. Paid: a ``correction`` credit for over-billing, a supplementary
    invoice for under-billing. Never billed: bill it. Dry run (the default) only returns the
    diff. Applied reruns are audited in the transaction that makes the change."""
    if invoice is None and window is None:
        raise InvoiceStateInvalid("Give an invoice or a window.")
    if invoice is not None:
        invoice = Invoice.objects.select_related("customer").get(pk=invoice.pk)  # fresh status
        window = invoice.window
    assert window is not None
    window = BillingWindow.objects.select_related(
        "subscription__plan", "subscription__customer"
    ).get(pk=window.pk)
    if invoice is None:
        invoice = (
            Invoice.objects.filter(window=window, kind=Invoice.Kind.REGULAR)
            .exclude(status=Invoice.Status.VOID)
            .first()
        )
    elif invoice.status == Invoice.Status.VOID or invoice.kind != Invoice.Kind.REGULAR:
        raise InvoiceStateInvalid(
            "Only a live regular invoice can be rerun.", details={"invoice": invoice.number}
        )
    draft = window_draft(window=window)
    result = _rerun_diff(window=window, invoice=invoice, draft=draft)
    if dry_run or result.action == "none":
        return result
    if not reason.strip():
        raise InvoiceStateInvalid("A reason is required.", details={"reason": "required"})
    with transaction.atomic():
        run = BillingRun.objects.create(
            trigger=BillingRun.Trigger.RERUN,
            holder=audit.actor_label(actor),
            as_of=timezone.now(),
            actor=actor if getattr(actor, "is_authenticated", False) else None,
            scanned=1,
        )
        result.created = _rerun_apply(
            result=result, draft=draft, run=run, actor=actor, reason=reason
        )
        run.status = BillingRun.Status.SUCCEEDED
        run.invoiced = 0 if result.action == "credit" else 1
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "invoiced", "finished_at"])
        result.applied = True
        audit.record(
            actor=actor,
            action="invoice.rerun",
            target=invoice or window,
            customer=window.subscription.customer,
            reason=reason,
            before={"invoice": invoice.number if invoice else None, "lines": result.old_lines},
            after=result.as_dict(),
        )
    return result


def _rerun_diff(
    *, window: BillingWindow, invoice: Invoice | None, draft: InvoiceDraft
) -> RerunResult:
    """What a rerun would do: the window's lines now against what was billed, and the action."""
    new_lines = [line.as_dict() for line in draft.lines]
    if invoice is None:
        return RerunResult(
            window, None, "invoice", [], new_lines, 0, draft.subtotal, draft.subtotal
        )
    old_lines = _line_dicts(invoice)
    if invoice.status in UNPAID:
        old = invoice.subtotal
        # Only money is a difference worth a void: a quantity that moved without moving
        # any amount (inside a free tier, below a cent) re-issues the same invoice for
        # nothing, and the customer gets an "invoice corrected" for an identical total.
        changed = _amounts(old_lines) != _amounts(new_lines)
        action = "supersede" if changed else "none"
    elif invoice.status == Invoice.Status.PAID:
        old = _billed_so_far(invoice=invoice)
        delta = draft.subtotal - old
        action = "credit" if delta < 0 else "supplementary" if delta > 0 else "none"
    else:
        raise InvoiceStateInvalid(
            "An uncollectible invoice is settled; issue a credit instead.",
            details={"invoice": invoice.number, "status": invoice.status},
        )
    return RerunResult(
        window, invoice, action, old_lines, new_lines, old, draft.subtotal, draft.subtotal - old
    )


def _rerun_apply(
    *, result: RerunResult, draft: InvoiceDraft, run: BillingRun, actor: audit.Actor, reason: str
) -> list[str]:
    """Makes the change ``result`` describes, in the caller's transaction; returns what it
    created."""
    window, invoice, old = result.window, result.invoice, result.old_subtotal
    if result.action == "invoice":
        created = _invoices_write(drafts=[draft], lease=None, run=run)
        return [created[0].number]
    elif result.action == "supersede":
        assert invoice is not None
        old_invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if old_invoice.status not in UNPAID:
            raise InvoiceStateInvalid(
                "The invoice changed state meanwhile.",
                details={"invoice": invoice.number, "status": old_invoice.status},
            )
        _invoice_void(invoice=old_invoice)
        created = _invoices_write(
            drafts=[draft], lease=None, run=run, supersedes={window.pk: old_invoice}
        )
        return [created[0].number]
    elif result.action == "credit":
        assert invoice is not None
        entry, _ = credit_grant(
            customer=invoice.customer,
            amount=-result.delta,
            reason_code=ReasonCode.CORRECTION,
            actor=actor,
            reason=reason,
            currency=invoice.currency,
            invoice=invoice,
            source_key=f"rerun:{invoice.number}:{old}:{draft.subtotal}",
            extra={"rerun": True},
        )
        return [f"credit {entry.pk}"]
    else:  # supplementary
        assert invoice is not None
        supplement = InvoiceDraft(
            window=WindowRow.of(window),
            lines=[
                LineDraft(
                    metric_id=None,
                    metric_code="",
                    description=f"Correction to {invoice.number}",
                    quantity=Decimal(1),
                    unit_amount=Decimal(result.delta),
                    amount=result.delta,
                )
            ],
        )
        created = _invoices_write(
            drafts=[supplement], lease=None, run=run, kind=Invoice.Kind.SUPPLEMENTARY
        )
        return [created[0].number]


def _invoice_void(*, invoice: Invoice) -> None:
    """Voids a locked, unpaid invoice in the caller's transaction: credits it consumed go back to
    the ledger as reversal entries, and a void is queued for the provider."""
    now = timezone.now()
    invoice.status = Invoice.Status.VOID
    invoice.voided_at = now
    invoice.status_changed_at = now
    invoice.save(update_fields=["status", "voided_at", "status_changed_at"])
    for consumption in CreditEntry.objects.filter(
        invoice=invoice, kind=CreditEntry.Kind.CONSUMPTION
    ):
        CreditEntry.objects.create(
            customer_id=consumption.customer_id,
            currency=consumption.currency,
            amount=-consumption.amount,
            kind=CreditEntry.Kind.REVERSAL,
            reason_code=ReasonCode.CORRECTION,
            invoice=invoice,
            reverses=consumption,
            note=f"{invoice.number} voided",
        )
    sync, _ = ProviderSync.objects.get_or_create(invoice=invoice, action=ProviderSync.Action.VOID)
    _enqueue_syncs([sync.pk])
    messages.invoice_status_published(invoice=invoice)
