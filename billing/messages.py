"""What billing tells integrators: the outbound message for each fact, in its transaction.

Every function here is called inside the service's own ``transaction.atomic()`` right after the
write it reports, and hands the kernel outbox (``neruba.outbox``) the public API shape of the
object. Billing never imports ``webhooks``: delivery is the outbox's subscriber's business.
"""

from __future__ import annotations

from typing import Any

from billing.models import BillingRun, CreditEntry, DriftFinding, Invoice
from billing.pricing import decimal_str
from neruba import outbox

# Invoice status -> the message type that reports reaching it.
STATUS_TYPES = {
    Invoice.Status.PAID: "invoice.paid",
    Invoice.Status.PAYMENT_FAILED: "invoice.payment_failed",
    Invoice.Status.VOID: "invoice.voided",
}

TYPES = (
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.voided",
    "credit.granted",
    "drift_finding.opened",
    "payment_finding.opened",
    "billing_run.failed",
)


def invoice_data(invoice: Invoice) -> dict[str, Any]:
    from billing.apis import InvoiceOutput  # the API's own shape, not a second rendering

    return dict(InvoiceOutput(invoice).data)


def invoice_status_published(*, invoice: Invoice) -> None:
    """After an invoice's status changed (paid, payment failed, voided)."""
    type = STATUS_TYPES.get(invoice.status)
    if type is not None and outbox.wanted(type):
        outbox.publish(type=type, data=invoice_data(invoice))


def invoices_finalized_published(*, numbers: list[str]) -> None:
    """A billing batch's new invoices: one outbox batch row of their numbers, rendered into
    messages after commit by ``render_invoices_finalized``."""
    outbox.publish_many(type="invoice.finalized", refs=numbers)


def render_invoices_finalized(numbers: list[str]) -> dict[str, dict[str, Any]]:
    """The API shape of each invoice as it was finalized. Rendered after commit: by then a
    payment may have arrived, so the fields a payment changes are given their value at
    finalization (the invoice is otherwise immutable), and later facts have messages of their
    own (``invoice.paid`` …)."""
    invoices = Invoice.objects.filter(number__in=numbers).select_related("customer")
    invoices = invoices.prefetch_related("lines__metric")
    rendered = {}
    for inv in invoices:
        data = invoice_data(inv)
        data["status"] = Invoice.Status.FINALIZED.value
        for cash in _CASH_FIELDS & data.keys():
            data[cash] = 0
        rendered[inv.number] = data
    return rendered


# What payments, refunds and disputes change on an invoice (zero when it is finalized).
_CASH_FIELDS = {"amount_paid", "amount_refunded", "amount_disputed", "amount_collected"}


def credit_granted_published(*, entry: CreditEntry) -> None:
    if not outbox.wanted("credit.granted"):
        return
    outbox.publish(
        type="credit.granted",
        data={
            "id": entry.pk,
            "customer": entry.customer.external_id,
            "currency": entry.currency,
            "amount": entry.amount,
            "kind": entry.kind,
            "reason_code": entry.reason_code,
            "invoice": entry.invoice.number if entry.invoice_id else None,
            "note": entry.note,
            "created_at": entry.created_at,
        },
    )


def finding_data(finding: DriftFinding) -> dict[str, Any]:
    invoice = finding.invoice
    window = finding.window
    return {
        "id": finding.pk,
        "kind": finding.kind,
        "status": finding.status,
        "customer": window.subscription.customer.external_id,
        "invoice": invoice.number if invoice is not None else None,
        "period_start": window.period_start,
        "period_end": window.period_end,
        "metric": finding.metric.code if finding.metric_id else None,
        "invoiced_quantity": decimal_str(finding.invoiced_quantity),
        "actual_quantity": decimal_str(finding.actual_quantity),
        "delta_amount": finding.delta_amount,
        "detail": finding.detail,
        "created_at": finding.created_at,
    }


def drift_findings_opened_published(*, finding_ids: list[int]) -> None:
    outbox.publish_many(type="drift_finding.opened", refs=finding_ids)


def render_drift_findings(ids: list[int]) -> dict[int, dict[str, Any]]:
    findings = DriftFinding.objects.filter(pk__in=ids).select_related(
        "invoice", "metric", "window__subscription__customer"
    )
    return {f.pk: finding_data(f) for f in findings}


def register() -> None:
    outbox.renderer_register(type="invoice.finalized", render=render_invoices_finalized)
    outbox.renderer_register(type="drift_finding.opened", render=render_drift_findings)


def over_return_data(finding: Any) -> dict[str, Any]:
    """A ``PaymentFinding`` (a charge that returned more than it collected)."""
    return {
        "id": finding.pk,
        "kind": "over_returned",
        "status": finding.status,
        "customer": finding.customer.external_id if finding.customer_id else None,
        "invoice": finding.invoice.number if finding.invoice_id else None,
        "charge": finding.charge.charge_id,
        "currency": finding.currency,
        "collected": finding.collected,
        "refunded": finding.refunded,
        "disputed": finding.disputed,
        "returned": finding.returned,
        "detail": finding.detail,
        "created_at": finding.created_at,
    }


def payment_finding_opened_published(*, finding: Any, data: dict[str, Any] | None = None) -> None:
    """In the transaction that opens a payment finding: a charge that returned more than it
    collected (``PaymentFinding``, with ``data=over_return_data(finding)``) or a provider
    mismatch found by reconciliation (a ``DriftFinding`` of kind ``payment``)."""
    if not outbox.wanted("payment_finding.opened"):
        return
    outbox.publish(type="payment_finding.opened", data=data or finding_data(finding))


def billing_run_failed_published(*, run: BillingRun) -> None:
    """A run that ended ``failed`` or ``partial`` (some windows failed)."""
    if run.dry_run or run.status not in (BillingRun.Status.FAILED, BillingRun.Status.PARTIAL):
        return
    if not outbox.wanted("billing_run.failed"):
        return
    outbox.publish(
        type="billing_run.failed",
        data={
            "id": run.pk,
            "trigger": run.trigger,
            "status": run.status,
            "as_of": run.as_of,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "scanned": run.scanned,
            "invoiced": run.invoiced,
            "already_invoiced": run.already_invoiced,
            "failed": run.failed,
            "errors": list(run.errors or [])[:20],
        },
    )
