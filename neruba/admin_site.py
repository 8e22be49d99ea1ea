"""The operator console: a customised Django admin site."""

from __future__ import annotations

from django.contrib.admin import AdminSite


class NerubaConsole(AdminSite):
    site_header = "Neruba console"
    site_title = "Neruba"
    index_title = "Operations"
    enable_nav_sidebar = True


console = NerubaConsole(name="admin")
