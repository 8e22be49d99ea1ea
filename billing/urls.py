from __future__ import annotations

from django.urls import path

from billing import apis

urlpatterns = [
    path("plans", apis.PlanListApi.as_view(), name="plan-list"),
    path("subscriptions", apis.SubscriptionListApi.as_view(), name="subscription-list"),
    path("invoices", apis.InvoiceListApi.as_view(), name="invoice-list"),
    path("invoices/<str:number>", apis.InvoiceDetailApi.as_view(), name="invoice-detail"),
    path(
        "customers/<str:external_id>/credits",
        apis.CustomerCreditsApi.as_view(),
        name="customer-credits",
    ),
    path(
        "customers/<str:external_id>/usage", apis.CustomerUsageApi.as_view(), name="customer-usage"
    ),
]
