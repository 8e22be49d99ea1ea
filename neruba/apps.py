from __future__ import annotations

from django.apps import AppConfig


class NerubaConfig(AppConfig):
    name = "neruba"
    verbose_name = "Neruba kernel"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from neruba import (
            lookups,  # noqa: F401 - registers the field__any lookup
            schema,  # noqa: F401 - registers the OpenAPI auth extension
        )
