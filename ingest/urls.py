from __future__ import annotations

from django.urls import path

from ingest import apis

urlpatterns = [
    path("metrics", apis.MetricListApi.as_view(), name="metric-list"),
    path("events", apis.EventIngestApi.as_view(), name="event-ingest"),
    # Keys are the client's: they may contain slashes.
    path("events/<path:idempotency_key>", apis.EventDetailApi.as_view(), name="event-detail"),
]
