"""The composition root: the only kernel module that names the apps, and only as strings
(``include("app.urls")``, handler paths), so the kernel imports no app module."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from neruba.admin_site import console
from neruba.errors import api_not_found

admin.autodiscover()

api_v1 = [
    path("", include("neruba.api_urls")),
    path("", include("ingest.urls")),
    path("", include("billing.urls")),
    path("", include("webhooks.api_urls")),
    # Last: any other /api/v1/ path answers the JSON error envelope, DEBUG or not.
    re_path(r"^.*$", api_not_found),
]

urlpatterns = [
    # Probes, /metrics, the OpenAPI schema and docs (operations.root_urls).
    path("", include("operations.root_urls")),
    path("webhooks/", include("webhooks.urls")),
    path("api/v1/", include(api_v1)),
    # Drop-in ingest for clients written against OpenMeter's or Lago's API.
    path("compat/", include("ingest.compat_urls")),
    path("console/", include("operations.urls")),
    path("admin/", console.urls),
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
]

handler403 = "operations.console_views.permission_denied"
handler404 = "neruba.errors.handler404"
handler500 = "neruba.errors.handler500"
