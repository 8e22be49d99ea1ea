"""``/compat/…``: the OpenMeter- and Lago-compatible ingest surfaces, at the paths their clients
build from a base URL."""

from __future__ import annotations

from django.urls import path

from ingest import compat_apis

urlpatterns = [
    path(
        "openmeter/api/v1/events",
        compat_apis.OpenMeterEventsApi.as_view(),
        name="compat-openmeter-events",
    ),
    path("lago/api/v1/events", compat_apis.LagoEventApi.as_view(), name="compat-lago-event"),
    path(
        "lago/api/v1/events/batch",
        compat_apis.LagoEventBatchApi.as_view(),
        name="compat-lago-events-batch",
    ),
]
