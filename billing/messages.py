"""What billing tells integrators: the outbound message for each fact, in its transaction.

Every function here is called inside the service's own ``transaction.atomic()`` right after the
write it reports, and hands the kernel outbox (``neruba.outbox``) the public API shape of the
object. Billing never imports ``webhooks``: delivery is the outbox's subscriber's business.
"""

from __future__ import annotations

from datetime import datetime
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


def invoices_finalized_published(
    *, invoices: list[dict[str, Any]], customer_ids: list[int], customers: dict[int, str] | None
) -> None:
    """A billing batch's new invoices, built from the rows just written (no re-read): each
    ``invoices`` item already has the API's fields except ``customer``."""
    if not outbox.wanted("invoice.finalized"):
        return
    if customers is None:
        from neruba.models import Customer

        customers = dict(
            Customer.objects.filter(pk__in=set(customer_ids)).values_list("id", "external_id")
        )
    for item, customer_id in zip(invoices, customer_ids, strict=True):
        item["customer"] = customers.get(customer_id)
    outbox.publish_many(type="invoice.finalized", items=invoices)


def invoice_row_data(
    *,
    number: str,
    status: str,
    period_start: datetime,
    period_end: datetime,
    currency: str,
    subtotal: int,
    credits_applied: int,
    total: int,
    lines: list[Any],
) -> dict[str, Any]:
    return {
        "number": number,
        "customer": None,
        "status": status,
        "period_start": period_start,
        "period_end": period_end,
        "currency": currency,
        "subtotal": subtotal,
        "credits_applied": credits_applied,
        "total": total,
        "lines": [
            {
                "metric": line.metric_code or None,
                "description": line.description,
                "quantity": decimal_str(line.quantity),
                "unit_amount": decimal_str(line.unit_amount),
                "amount": line.amount,
            }
            for line in lines
        ],
    }


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
    if not finding_ids or not outbox.wanted("drift_finding.opened"):
        return
    findings = DriftFinding.objects.filter(pk__in=finding_ids).select_related(
        "invoice", "metric", "window__subscription__customer"
    )
    outbox.publish_many(type="drift_finding.opened", items=[finding_data(f) for f in findings])


def payment_finding_opened_published(*, finding: Any, data: dict[str, Any] | None = None) -> None:
    """The hook for payment findings: call it in the transaction that creates one. ``data``
    overrides the shape (a dedicated PaymentFinding model passes its own API shape)."""
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
