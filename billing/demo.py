"""Demo invoices: past windows billed through the same scan service beat uses. Idempotent: when
every closed window is invoiced already, no scan (and no run row) is made."""

from __future__ import annotations

from billing import services
from billing.models import BillingRun


def seed_invoices() -> dict[str, int]:
    cutoff = services.billing_cutoff()
    services.windows_generate(through=cutoff)
    if not services.windows_due(cutoff=cutoff).exists():
        return {"invoices": 0}
    run = services.billing_scan(trigger=BillingRun.Trigger.COMMAND)
    return {"invoices": run.invoiced, "invoice_failures": run.failed}
