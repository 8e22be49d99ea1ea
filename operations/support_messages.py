"""Ready-to-send support replies, filled from the records.

The texts live here and only here: the customer and invoice pages render them, and
``docs/runbooks/support-templates.md`` is generated from this registry (``runbook_markdown``;
a test keeps the file in step).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

from billing.ledger import credit_balance
from billing.models import CreditEntry, Dispute, Invoice, Refund
from neruba.models import Customer
from neruba.money import money

REASON_WORDS = {
    "goodwill": "a goodwill gesture",
    "correction": "a billing correction",
    "refund_as_credit": "account credit instead of a refund to your card",
}
# Only spendable grants are credit. Legacy grants from Stripe refunds and disputes were
# reversed (cash went back to the card); no reply may present them as credit.
CREDIT_REASONS = tuple(REASON_WORDS)
DISPUTE_OPEN_WORDS = {"won": "won", "warning_closed": "closed", "prevented": "closed"}


@dataclass(frozen=True)
class SupportTemplate:
    key: str
    title: str
    text: str

    def render(self, **values: Any) -> str:
        return self.text.format(**values)


@dataclass(frozen=True)
class SupportMessage:
    template: SupportTemplate
    body: str
    source: Any


TEMPLATES: dict[str, SupportTemplate] = {
    t.key: t
    for t in (
        SupportTemplate(
            "credit_issued",
            "Credit issued",
            "Hello {name}, we have added a credit of {amount} {currency} to your account "
            "({reason}). It will be applied automatically to your next invoice. Your credit "
            "balance is now {balance} {currency}.",
        ),
        SupportTemplate(
            "refund_processed",
            "Refund processed",
            "Hello {name}, refund processed: {amount} {currency} back to your card for invoice "
            "{invoice_number}. Depending on your bank it can take 5–10 business days to "  # noqa: RUF001
            "appear on your statement.",
        ),
        SupportTemplate(
            "dispute_opened",
            "Dispute opened",
            "Hello {name}, we have been notified of a dispute on invoice {invoice_number} for "
            "{amount} {currency}. If this was unintended, please reply and we will help "
            "resolve it.",
        ),
        SupportTemplate(
            "dispute_lost",
            "Dispute closed: lost",
            "Hello {name}, dispute closed: lost. Your card issuer returned {amount} {currency} "
            "for invoice {invoice_number} to your card; that payment is reversed and nothing "
            "further comes back to you for it.",
        ),
        SupportTemplate(
            "dispute_closed",
            "Dispute closed in our favour",
            "Hello {name}, dispute closed: {outcome}. The payment of {amount} {currency} for "
            "invoice {invoice_number} stands and nothing was returned to your card for it.",
        ),
        SupportTemplate(
            "invoice_corrected",
            "Invoice corrected",
            "Hello {name}, we found an error on invoice {old_number} and issued {new_number} in "
            "its place (new total {total} {currency}). The original invoice is void; no action "
            "is needed.",
        ),
    )
}


def _credit(entry: CreditEntry) -> SupportMessage:
    customer = entry.customer
    return SupportMessage(
        TEMPLATES["credit_issued"],
        TEMPLATES["credit_issued"].render(
            name=customer.name,
            amount=money(entry.amount, entry.currency),
            currency=entry.currency,
            reason=REASON_WORDS.get(entry.reason_code, entry.reason_code),
            balance=money(
                credit_balance(customer=customer, currency=entry.currency), entry.currency
            ),
        ),
        entry,
    )


def _stripe_case(key: str, record: Refund | Dispute, customer: Customer) -> SupportMessage:
    """A refund or a dispute: both name the invoice (or the charge) and the amount. Cash on the
    card, never credit: no reply for them mentions a balance or a next invoice."""
    return SupportMessage(
        TEMPLATES[key],
        TEMPLATES[key].render(
            name=customer.name,
            amount=money(record.amount, record.currency),
            currency=record.currency.upper(),
            invoice_number=record.invoice.number if record.invoice else record.charge_id,
            outcome=DISPUTE_OPEN_WORDS.get(record.status, record.status),
        ),
        record,
    )


def _dispute_case(dispute: Dispute, customer: Customer) -> SupportMessage:
    if dispute.status == "lost":
        return _stripe_case("dispute_lost", dispute, customer)
    if dispute.status in DISPUTE_OPEN_WORDS:
        return _stripe_case("dispute_closed", dispute, customer)
    return _stripe_case("dispute_opened", dispute, customer)


def _corrected(invoice: Invoice) -> SupportMessage:
    assert invoice.supersedes is not None
    return SupportMessage(
        TEMPLATES["invoice_corrected"],
        TEMPLATES["invoice_corrected"].render(
            name=invoice.customer.name,
            old_number=invoice.supersedes.number,
            new_number=invoice.number,
            total=money(invoice.total, invoice.currency),
            currency=invoice.currency,
        ),
        invoice,
    )


def messages_for_customer(*, customer: Customer) -> list[SupportMessage]:
    """One message per case, from the customer's latest record of that kind."""
    out = []
    credit = (
        CreditEntry.objects.filter(
            customer=customer, kind=CreditEntry.Kind.GRANT, reason_code__in=CREDIT_REASONS
        )
        .select_related("customer")
        .order_by("-created_at", "-id")
        .first()
    )
    if credit is not None:
        out.append(_credit(credit))
    refund = (
        Refund.objects.filter(customer=customer, status="succeeded")
        .select_related("invoice")
        .order_by("-id")
        .first()
    )
    if refund is not None:
        out.append(_stripe_case("refund_processed", refund, customer))
    dispute = (
        Dispute.objects.filter(customer=customer).select_related("invoice").order_by("-id").first()
    )
    if dispute is not None:
        out.append(_dispute_case(dispute, customer))
    corrected = (
        Invoice.objects.filter(customer=customer, supersedes__isnull=False)
        .select_related("customer", "supersedes")
        .order_by("-issued_at", "-id")
        .first()
    )
    if corrected is not None:
        out.append(_corrected(corrected))
    return out


def messages_for_invoice(*, invoice: Invoice) -> list[SupportMessage]:
    """The cases that concern this invoice: its credits, refunds, disputes and correction."""
    customer = invoice.customer
    out = [
        _credit(entry)
        for entry in CreditEntry.objects.filter(
            invoice=invoice, kind=CreditEntry.Kind.GRANT, reason_code__in=CREDIT_REASONS
        )
        .select_related("customer")
        .order_by("-created_at", "-id")[:3]
    ]
    out += [
        _stripe_case("refund_processed", r, customer)
        for r in Refund.objects.filter(invoice=invoice, status="succeeded").select_related(
            "invoice"
        )[:3]
    ]
    out += [
        _dispute_case(d, customer)
        for d in Dispute.objects.filter(invoice=invoice).select_related("invoice")[:3]
    ]
    successor = (
        Invoice.objects.filter(supersedes=invoice).select_related("customer", "supersedes").first()
    )
    if invoice.supersedes_id is not None:
        out.append(_corrected(invoice))
    elif successor is not None:
        out.append(_corrected(successor))
    return out


RUNBOOK_HEADER = """# Support replies

Templates for common cases. The console fills them from the records on the customer and
invoice pages (the texts live in `operations/support_messages.py`; this page is generated
from it). Here they are with their placeholders.
"""


def runbook_markdown() -> str:
    """``docs/runbooks/support-templates.md``, generated from ``TEMPLATES``."""
    parts = [RUNBOOK_HEADER]
    for template in TEMPLATES.values():
        quoted = textwrap.fill(template.text, width=92, initial_indent="> ", subsequent_indent="> ")
        parts.append(f"## {template.title}\n\n{quoted}\n")
    return "\n".join(parts)
