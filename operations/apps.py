from __future__ import annotations

from django.apps import AppConfig


class OperationsConfig(AppConfig):
    name = "operations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from neruba.admin_site import console
        from operations.dashboard import dashboard_context

        console.register_index_provider(dashboard_context)
