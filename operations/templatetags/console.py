"""Template helpers for the console pages."""

from __future__ import annotations

from typing import Any

from django import template
from django.db.models import Model
from django.urls import NoReverseMatch, reverse

from neruba.money import money, quantity

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
    """Minor units as an amount: ``1250|minor:"USD"`` -> $12.50 (through ``neruba.money``)."""
    return money(amount, currency or "USD")


@register.filter
def signed_minor(amount: Any, currency: str) -> str:
    """A delta: ``1500|signed_minor:"USD"`` -> +$15.00."""
    return money(amount, currency or "USD", signed=True)


@register.filter
def qty(value: Any) -> str:
    """A quantity without storage noise (``1.0000000000`` -> 1)."""
    return quantity(value)
