from __future__ import annotations

from django.contrib import admin

from billing.models import Plan, Price, Subscription
from neruba.admin_actions import AuditedAdminMixin
from neruba.admin_site import console


class PriceInline(admin.TabularInline):
    model = Price
    extra = 0
    raw_id_fields = ["metric"]


@admin.register(Plan, site=console)
class PlanAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["code", "name", "currency", "interval", "base_amount"]
    list_filter = ["interval", "currency"]
    search_fields = ["code", "name"]
    inlines = [PriceInline]


@admin.register(Subscription, site=console)
class SubscriptionAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["customer", "plan", "started_at", "ended_at"]
    list_filter = ["plan"]
    list_select_related = ["customer", "plan"]
    raw_id_fields = ["customer"]
    search_fields = ["customer__external_id", "customer__name"]
    show_full_result_count = False
