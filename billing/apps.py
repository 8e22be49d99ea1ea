from __future__ import annotations

from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Ingest cannot import billing (the dependency runs the other way), yet a Lago event
        # names a subscription: billing hands ingest the lookup.
        from billing.selectors import subscription_customer_refs
        from ingest.services import customer_ref_resolver_register

        customer_ref_resolver_register(resolver=subscription_customer_refs)
