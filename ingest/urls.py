from __future__ import annotations

from django.urls import path

from ingest import apis

urlpatterns = [
    path("metrics", apis.MetricListApi.as_view(), name="metric-list"),
    path("events", apis.EventIngestApi.as_view(), name="event-ingest"),
    path("event-voids", apis.EventVoidRangeApi.as_view(), name="event-void-range"),
    path("backfills", apis.BackfillCreateApi.as_view(), name="backfill-create"),
    path("backfills/<str:backfill_id>", apis.BackfillDetailApi.as_view(), name="backfill-detail"),
    path(
        "backfills/<str:backfill_id>/close", apis.BackfillCloseApi.as_view(), name="backfill-close"
    ),
    path("events/<path:idempotency_key>/void", apis.EventVoidApi.as_view(), name="event-void"),
    path("events/<path:idempotency_key>/amend", apis.EventAmendApi.as_view(), name="event-amend"),
    # Keys are the client's: they may contain slashes.
    path("events/<path:idempotency_key>", apis.EventDetailApi.as_view(), name="event-detail"),
]
