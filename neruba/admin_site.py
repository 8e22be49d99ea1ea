"""The operator console: a customised Django admin site."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.admin import AdminSite
from django.http import HttpRequest
from django.template.response import TemplateResponse

IndexProvider = Callable[[HttpRequest], dict[str, Any]]


class NerubaConsole(AdminSite):
    site_header = "Neruba console"
    site_title = "Neruba"
    index_title = "Console home"
    enable_nav_sidebar = True
    index_template = "admin/neruba_index.html"

    def __init__(self, name: str = "admin") -> None:
        super().__init__(name)
        self._index_providers: list[IndexProvider] = []

    def register_index_provider(self, provider: IndexProvider) -> None:
        """Apps above the kernel add their panels to the home page without the kernel
        importing them (``operations`` registers the dashboard in its AppConfig.ready)."""
        if provider not in self._index_providers:
            self._index_providers.append(provider)

    def index(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> TemplateResponse:
        context = dict(extra_context or {})
        for provider in self._index_providers:
            context.update(provider(request))
        return super().index(request, context)


console = NerubaConsole(name="admin")
