"""The operational endpoints at the site root: probes, metrics, the OpenAPI schema and its docs.

Mounted by the composition root (``neruba.urls``) by string, so the kernel imports no console
module; the URL names stay global (no namespace) as before."""

from __future__ import annotations

from django.urls import path

from operations import views
from operations.metrics import metrics_view

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("openapi.json", views.openapi_schema, name="openapi-schema"),
    path("docs", views.docs, name="docs"),
]
