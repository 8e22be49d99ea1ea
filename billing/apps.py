from __future__ import annotations

from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from billing import messages

        # Renders the messages of facts billing publishes in batches (see neruba.outbox).
        messages.register()

        # Ingest never imports billing: a closed backfill is announced by a signal, and billing
        # answers it with drift findings for the invoiced windows the backfill touched.
        from billing.drift import drift_on_backfill_closed
        from ingest.backfills import backfill_closed

        backfill_closed.connect(drift_on_backfill_closed, dispatch_uid="billing.drift.backfill")

        # Ingest cannot import billing (the dependency runs the other way), yet a Lago event
        # names a subscription: billing hands ingest the lookup.
        from billing.selectors import subscription_customer_refs
        from ingest.services import customer_ref_resolver_register

        customer_ref_resolver_register(resolver=subscription_customer_refs)
