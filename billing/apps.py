from __future__ import annotations

from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from billing import messages

        # Renders the messages of facts billing publishes in batches (see neruba.outbox).
        messages.register()
