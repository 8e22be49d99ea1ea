from __future__ import annotations

from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Ingest never imports billing: a closed backfill is announced by a signal, and billing
        # answers it with drift findings for the invoiced windows the backfill touched.
        from billing.drift import drift_on_backfill_closed
        from ingest.backfills import backfill_closed

        backfill_closed.connect(drift_on_backfill_closed, dispatch_uid="billing.drift.backfill")
