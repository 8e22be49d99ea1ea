from __future__ import annotations

from django.urls import path

from operations import console_views

urlpatterns = [
    path("runbooks/", console_views.runbooks_index, name="runbooks"),
    path("runbooks/<slug:slug>", console_views.runbook_detail, name="runbook"),
    path("explain/", console_views.explain, name="explain"),
    path("search/", console_views.search, name="console_search"),
    path(
        "customers/autocomplete/",
        console_views.customer_autocomplete,
        name="customer-autocomplete",
    ),
    path("notes/add/", console_views.note_add, name="note-add"),
    path("customers/<int:pk>/usage/", console_views.customer_usage, name="customer-usage"),
]
