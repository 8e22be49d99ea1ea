from __future__ import annotations

from django.urls import path

from ingest import apis

urlpatterns = [
    path("metrics", apis.MetricListApi.as_view(), name="metric-list"),
]
