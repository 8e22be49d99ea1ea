"""Repairs the money story on upgrade.

Earlier versions granted spendable credit for every succeeded Stripe refund and every lost
dispute, so the customer was paid back twice (on the card, and again on the next invoice).
This migration:

1. fills the invoices' cash amounts: paid invoices were paid their total; refunded and lost in
   disputes are summed from the refund and dispute rows; collected is the net;
2. records each charge seen in a refund or dispute, and opens a payment finding for every
   charge that returned more than it collected (e.g. refunded, then lost in a dispute);
3. reverses every such grant still standing (net of a reversal an earlier version made when a
   refund failed) with a reversal entry, reason "cash refund recorded on the invoice", and an
   audit entry by the system.

Safe to run twice: a grant already reversed by this migration is skipped (unique source key).
The reverse migration changes nothing: the reversals are history, like every ledger entry.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations
from django.db.models import F, Max, Sum
from django.utils import timezone

REASON = "cash refund recorded on the invoice"


def _sum(qs: Any) -> int:
    return int(qs.aggregate(total=Sum("amount"))["total"] or 0)


def _invoices(apps: Any) -> None:
    invoice_model = apps.get_model("billing", "Invoice")
    refund_model = apps.get_model("billing", "Refund")
    dispute_model = apps.get_model("billing", "Dispute")
    invoice_model.objects.filter(status="paid").update(
        amount_paid=F("total"), amount_collected=F("total")
    )
    touched = set(
        refund_model.objects.exclude(invoice=None).values_list("invoice_id", flat=True)
    ) | set(dispute_model.objects.exclude(invoice=None).values_list("invoice_id", flat=True))
    for invoice in invoice_model.objects.filter(pk__in=sorted(touched)):
        refunded = _sum(refund_model.objects.filter(invoice=invoice, status="succeeded"))
        disputed = _sum(dispute_model.objects.filter(invoice=invoice, status="lost"))
        invoice.amount_refunded, invoice.amount_disputed = refunded, disputed
        invoice.amount_collected = invoice.amount_paid - refunded - disputed
        invoice.save(update_fields=["amount_refunded", "amount_disputed", "amount_collected"])


def _charges(apps: Any) -> None:
    from billing.payments import over_return_detail

    invoice_model = apps.get_model("billing", "Invoice")
    refund_model = apps.get_model("billing", "Refund")
    dispute_model = apps.get_model("billing", "Dispute")
    charge_model = apps.get_model("billing", "PaymentCharge")
    finding_model = apps.get_model("billing", "PaymentFinding")
    audit_model = apps.get_model("neruba", "AuditEntry")
    charge_ids = set(refund_model.objects.exclude(charge_id="").values_list("charge_id", flat=True))
    charge_ids |= set(
        dispute_model.objects.exclude(charge_id="").values_list("charge_id", flat=True)
    )
    now = timezone.now()
    for charge_id in sorted(charge_ids):
        refunds = refund_model.objects.filter(charge_id=charge_id)
        disputes = dispute_model.objects.filter(charge_id=charge_id)
        first = refunds.exclude(customer=None).first() or disputes.exclude(customer=None).first()
        invoice_id = (
            refunds.exclude(invoice=None).values_list("invoice_id", flat=True).first()
            or disputes.exclude(invoice=None).values_list("invoice_id", flat=True).first()
        )
        invoice = invoice_model.objects.filter(pk=invoice_id).first() if invoice_id else None
        any_row = refunds.first() or disputes.first()
        currency = (any_row.currency if any_row else "") or (invoice.currency if invoice else "")
        refunded = _sum(refunds.filter(status="succeeded"))
        disputed = _sum(disputes.filter(status="lost"))
        charge, _ = charge_model.objects.get_or_create(
            charge_id=charge_id,
            defaults={
                "customer_id": first.customer_id if first else None,
                "invoice": invoice,
                "currency": currency,
                "amount_refunded": refunded,
                "amount_disputed": disputed,
            },
        )
        if invoice is not None and invoice.amount_paid > 0:
            collected = invoice.amount_paid
        else:
            largest = int(disputes.aggregate(m=Max("amount"))["m"] or 0)
            collected = max(refunded, largest)
        returned = refunded + disputed
        if returned <= collected:
            continue
        if finding_model.objects.filter(charge=charge, status="open").exists():
            continue
        detail = over_return_detail(
            charge_id=charge_id,
            collected=collected,
            refunded=refunded,
            disputed=disputed,
            currency=currency,
        )
        finding = finding_model.objects.create(
            charge=charge,
            customer_id=charge.customer_id,
            invoice=invoice,
            currency=currency,
            collected=collected,
            refunded=refunded,
            disputed=disputed,
            returned=returned,
            detail=detail,
            created_at=now,
            updated_at=now,
        )
        audit_model.objects.create(
            actor_label="system",
            action="payment_finding.open",
            target_type="billing.paymentfinding",
            target_id=str(finding.pk),
            target_repr=f"Payment finding {finding.pk}: {charge_id}",
            customer_id=charge.customer_id,
            reason="migration billing 0006: cash returned on upgrade",
            after={
                "collected": collected,
                "refunded": refunded,
                "disputed": disputed,
                "returned": returned,
                "detail": detail,
            },
        )


def _reversals(apps: Any) -> None:
    entry_model = apps.get_model("billing", "CreditEntry")
    audit_model = apps.get_model("neruba", "AuditEntry")
    grants = entry_model.objects.filter(kind="grant", reason_code__in=["refund", "dispute"])
    for grant in grants.order_by("id"):
        key = f"cash-refund-reversal:{grant.pk}"
        if entry_model.objects.filter(source_key=key).exists():
            continue
        standing = grant.amount + _sum(entry_model.objects.filter(reverses=grant))
        if standing <= 0:
            continue  # already reversed (a refund that failed)
        reversal = entry_model.objects.create(
            customer_id=grant.customer_id,
            currency=grant.currency,
            amount=-standing,
            kind="reversal",
            reason_code=grant.reason_code,
            invoice_id=grant.invoice_id,
            reverses=grant,
            source_key=key,
            note=REASON,
        )
        audit_model.objects.create(
            actor_label="system",
            action="credit.reverse",
            target_type="billing.creditentry",
            target_id=str(reversal.pk),
            target_repr=f"reversal {reversal.amount} {reversal.currency} ({grant.reason_code})",
            customer_id=grant.customer_id,
            reason=REASON,
            before={"grant": grant.pk, "source_key": grant.source_key, "standing": standing},
            after={"amount": reversal.amount, "reverses": grant.pk, "source_key": key},
        )


def forwards(apps: Any, schema_editor: Any) -> None:
    _invoices(apps)
    _charges(apps)
    _reversals(apps)


class Migration(migrations.Migration):
    dependencies = [("billing", "0005_i12_invoice_cash_amounts")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
