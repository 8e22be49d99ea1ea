"""The composition root: the only kernel module that may import the apps."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from neruba.admin_site import console
from neruba.errors import api_not_found
from operations import views as ops_views
from operations.metrics import metrics_view

admin.autodiscover()

api_v1 = [
    path("", include("neruba.api_urls")),
    path("", include("ingest.urls")),
    path("", include("billing.urls")),
    # Last: any other /api/v1/ path answers the JSON error envelope, DEBUG or not.
    re_path(r"^.*$", api_not_found),
]

urlpatterns = [
    path("healthz", ops_views.healthz, name="healthz"),
    path("readyz", ops_views.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("openapi.json", ops_views.openapi_schema, name="openapi-schema"),
    path("docs", ops_views.docs, name="docs"),
    path("webhooks/", include("webhooks.urls")),
    path("api/v1/", include(api_v1)),
    # Drop-in ingest for clients written against OpenMeter's or Lago's API.
    path("compat/", include("ingest.compat_urls")),
    path("console/", include("operations.urls")),
    path("admin/", console.urls),
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
]

handler404 = "neruba.errors.handler404"
handler500 = "neruba.errors.handler500"
