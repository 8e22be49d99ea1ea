from __future__ import annotations

from billing.models.catalog import Interval, Plan, Price, Subscription
from billing.models.drift import DriftFinding
from billing.models.invoices import Invoice, InvoiceCounter, InvoiceLine, ProviderSync
from billing.models.ledger import CreditEntry, Dispute, ReasonCode, Refund
from billing.models.runs import BillingRun, BillingShard, BillingWindow

__all__ = [
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
    "Plan",
    "Price",
    "ProviderSync",
    "ReasonCode",
    "Refund",
    "Subscription",
]
