"""Template helpers for the console pages."""

from __future__ import annotations

from typing import Any

from django import template
from django.db.models import Model
from django.urls import NoReverseMatch, reverse

from operations.support_messages import money

register = template.Library()


@register.filter
def admin_url(obj: Model | None) -> str:
    """The console change page of a record, or "" when it has none."""
    if obj is None:
        return ""
    opts = obj._meta
    try:
        return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    except NoReverseMatch:
        return ""


@register.filter
def admin_list_url(spec: tuple[str, str] | None) -> str:
    if not spec:
        return ""
    try:
        return reverse(f"admin:{spec[0]}") + spec[1]
    except NoReverseMatch:
        return ""


@register.filter
def minor(amount: Any, currency: str) -> str:
    """Minor units as an amount: ``1250|minor:"USD"`` -> 12.50."""
    if amount is None:
        return "—"
    return money(int(amount), currency or "USD")
