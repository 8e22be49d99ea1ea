from __future__ import annotations

from django.contrib import admin

from ingest.models import Metric
from neruba.admin_actions import AuditedAdminMixin
from neruba.admin_site import console


@admin.register(Metric, site=console)
class MetricAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["code", "name", "aggregation", "field", "created_at"]
    list_filter = ["aggregation"]
    search_fields = ["code", "name"]
