from __future__ import annotations

from billing.models.catalog import Interval, Plan, Price, Subscription
from billing.models.drift import DriftFinding
from billing.models.invoices import Invoice, InvoiceCounter, InvoiceLine, ProviderSync
from billing.models.ledger import GRANTABLE, CreditEntry, Dispute, ReasonCode, Refund
from billing.models.payments import PaymentCharge, PaymentFinding
from billing.models.runs import BillingRun, BillingShard, BillingWindow

__all__ = [
    "GRANTABLE",
    "BillingRun",
    "BillingShard",
    "BillingWindow",
    "CreditEntry",
    "Dispute",
    "DriftFinding",
    "Interval",
    "Invoice",
    "InvoiceCounter",
    "InvoiceLine",
    "PaymentCharge",
    "PaymentFinding",
    "Plan",
    "Price",
    "ProviderSync",
    "ReasonCode",
    "Refund",
    "Subscription",
]
