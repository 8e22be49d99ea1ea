"""Billing write operations, one module per concern:

- ``catalog``: plans, prices and subscriptions;
- ``invoicing``: window rows, which windows are due, gapless numbers, the invoice writer;
- ``scan``: the leased billing scan over every due window;
- ``reruns``: re-pricing a billed window (void and supersede, credit, supplement);
- ``credits``: an offline payment, a finance-issued credit;
- ``outbox``: sending the payment-provider outbox.

Callers keep importing from ``billing.services``; the names below are that public surface.
Invoice drafts (what a window would bill) live in ``billing.drafts``, next to pricing."""

from __future__ import annotations

from billing.drafts import InvoiceDraft, LineDraft, WindowRow, invoice_draft
from billing.services.catalog import (
    metric_for_code,
    plan_create,
    subscription_check,
    subscription_create,
    subscription_end,
)
from billing.services.credits import credit_issue, invoice_mark_paid
from billing.services.invoicing import (
    UNPAID,
    Issued,
    billing_cutoff,
    period_end_of,
    window_bill,
    window_draft,
    windows_due,
    windows_generate,
)
from billing.services.outbox import SYNC_MAX_ATTEMPTS, provider_sync_send
from billing.services.reruns import RerunResult, invoice_rerun
from billing.services.scan import (
    BILLING_LOCK,
    DEFAULT_BATCH,
    DEFAULT_CHUNK,
    SHARD_UNFINISHED,
    billing_scan,
)

__all__ = [
    "BILLING_LOCK",
    "DEFAULT_BATCH",
    "DEFAULT_CHUNK",
    "SHARD_UNFINISHED",
    "SYNC_MAX_ATTEMPTS",
    "UNPAID",
    "InvoiceDraft",
    "Issued",
    "LineDraft",
    "RerunResult",
    "WindowRow",
    "billing_cutoff",
    "billing_scan",
    "credit_issue",
    "invoice_draft",
    "invoice_mark_paid",
    "invoice_rerun",
    "metric_for_code",
    "period_end_of",
    "plan_create",
    "provider_sync_send",
    "subscription_check",
    "subscription_create",
    "subscription_end",
    "window_bill",
    "window_draft",
    "windows_due",
    "windows_generate",
]
