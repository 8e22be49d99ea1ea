from __future__ import annotations

from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from webhooks import outbound

        # The kernel outbox asks us whether anyone wants a type, and kicks our fan-out.
        outbound.register()
