from __future__ import annotations

from django.urls import path

from neruba import apis

urlpatterns = [
    path("customers", apis.CustomerListApi.as_view(), name="customer-list"),
    path("customers/<str:external_id>", apis.CustomerDetailApi.as_view(), name="customer-detail"),
]
