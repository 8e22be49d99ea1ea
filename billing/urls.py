from __future__ import annotations

from django.urls import path

from billing import apis

urlpatterns = [
    path("plans", apis.PlanListApi.as_view(), name="plan-list"),
    path("subscriptions", apis.SubscriptionListApi.as_view(), name="subscription-list"),
]
