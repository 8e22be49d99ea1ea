"""The console's global search: one box in the header for the identifiers people are handed.

A customer (external id prefix, name or email, Stripe customer id), an invoice (number, any
prefix of it, or just its digits), an idempotency key (prefix, stored or rejected), and Stripe
ids (event, charge, invoice, refund, dispute). Every lookup is served by an index: prefixes are
range scans on the unique btree (``key >= q AND key < next(q)``), which every collation's index
can answer, unlike ``LIKE 'q%'`` outside the C collation; only the customer name and email are
matched by substring, on the customers table, which stays small next to events and invoices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Model, Q, QuerySet
from django.urls import NoReverseMatch, reverse

from billing.models import Dispute, Invoice, InvoiceCounter, Refund
from ingest.models import EventKey, IngestRejection, UsageEvent
from neruba.models import Customer
from neruba.money import money
from webhooks.models import StripeEvent

LIMIT = 10


@dataclass
class Hit:
    label: str
    detail: str
    url: str


@dataclass
class Group:
    title: str
    hits: list[Hit] = field(default_factory=list)
    more: bool = False


def _after(prefix: str) -> str:
    """The smallest string greater than every string that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def prefix_filter(column: str, prefix: str) -> Q:
    # The range makes it an index scan; startswith keeps it exact under any collation.
    return Q(**{f"{column}__gte": prefix, f"{column}__lt": _after(prefix)}) & Q(
        **{f"{column}__startswith": prefix}
    )


def _url(obj: Model) -> str:
    opts = obj._meta
    try:
        return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    except NoReverseMatch:
        return ""


def _take(queryset: QuerySet[Any]) -> tuple[list[Any], bool]:
    rows = list(queryset[: LIMIT + 1])
    return rows[:LIMIT], len(rows) > LIMIT


def events_by_key_prefix(q: str, *, limit: int = LIMIT + 1) -> Q:
    """The events whose idempotency key starts with ``q``: the key registry (its primary key
    is the key) answers the prefix by index, and each event is then read by id and timestamp,
    which names its one partition on PostgreSQL."""
    keys = list(
        EventKey.objects.filter(prefix_filter("idempotency_key", q))
        .order_by("idempotency_key")
        .values_list("event_id", "timestamp")[:limit]
    )
    if not keys:
        return Q(pk__in=[])
    match = Q()
    for event_id, timestamp in keys:
        match |= Q(pk=event_id, timestamp=timestamp)
    return match


def _invoice_numbers(q: str) -> Q:
    match = Q(number=q) | prefix_filter("number", q)
    digits = q.lstrip("0")
    if re.fullmatch(r"\d{1,9}", q) and digits:
        # "96" or "000096": the number in each year's series (NER-2026-000096).
        names = InvoiceCounter.objects.values_list("name", flat=True)
        match |= Q(number__in=[f"{name}-{int(digits):06d}" for name in names])
    return match


def invoice_match(q: str) -> Q:
    """An invoice list search: number (any prefix, or just its digits), customer external id,
    provider invoice id; all exact or prefix on indexed columns."""
    return _invoice_numbers(q) | Q(provider_invoice_id=q) | Q(customer__external_id=q)


def console_search(*, q: str, user: Any) -> list[Group]:
    """The matches the user may see, grouped by record type, at most ``LIMIT`` per group."""
    q = q.strip()
    if not q:
        return []
    groups: list[Group] = []

    if user.has_perm("neruba.view_customer"):
        match = prefix_filter("external_id", q) | Q(stripe_customer_id=q)
        if len(q) >= 3:
            match |= Q(name__icontains=q) | Q(email__icontains=q)
        rows, more = _take(Customer.objects.filter(match).order_by("external_id"))
        groups.append(
            Group(
                "Customers",
                [
                    Hit(
                        c.external_id, f"{c.name} · {c.email or 'no email'} · {c.currency}", _url(c)
                    )
                    for c in rows
                ],
                more,
            )
        )

    if user.has_perm("billing.view_invoice"):
        rows, more = _take(
            Invoice.objects.filter(_invoice_numbers(q) | Q(provider_invoice_id=q))
            .select_related("customer")
            .order_by("number")
        )
        groups.append(
            Group(
                "Invoices",
                [
                    Hit(
                        i.number,
                        f"{i.customer.external_id} · {i.status} · {money(i.total, i.currency)} · "
                        f"{i.period_start:%Y-%m-%d}",
                        _url(i),
                    )
                    for i in rows
                ],
                more,
            )
        )

    if user.has_perm("ingest.view_usageevent"):
        rows, more = _take(
            UsageEvent.objects.filter(events_by_key_prefix(q))
            .select_related("customer", "metric")
            .order_by("idempotency_key")
        )
        hits = [
            Hit(
                e.idempotency_key,
                f"{e.customer.external_id} · {e.metric.code} · {e.timestamp:%Y-%m-%d %H:%M} UTC",
                _url(e),
            )
            for e in rows
        ]
        if rows:
            hits.insert(
                0,
                Hit(
                    f"Why wasn't {rows[0].idempotency_key} billed?",
                    "the explainer",
                    reverse("explain") + "?key=" + rows[0].idempotency_key,
                ),
            )
        groups.append(Group("Usage events", hits, more))

    if user.has_perm("ingest.view_ingestrejection"):
        rows, more = _take(
            IngestRejection.objects.filter(prefix_filter("idempotency_key", q)).order_by(
                "idempotency_key", "-id"
            )
        )
        groups.append(
            Group(
                "Ingest rejections",
                [
                    Hit(
                        r.idempotency_key or "(no key)",
                        f"{r.outcome} · {r.error_code} · {r.status}",
                        _url(r),
                    )
                    for r in rows
                ],
                more,
            )
        )

    if user.has_perm("webhooks.view_stripeevent"):
        rows, more = _take(
            StripeEvent.objects.filter(Q(stripe_id=q) | Q(object_id=q))
            .defer("raw_body", "payload", "headers")
            .order_by("-received_at")
        )
        groups.append(
            Group(
                "Stripe events",
                [Hit(e.stripe_id, f"{e.type} · {e.status} · {e.object_id}", _url(e)) for e in rows],
                more,
            )
        )

    if user.has_perm("billing.view_refund") or user.has_perm("billing.view_dispute"):
        hits = []
        if user.has_perm("billing.view_refund"):
            for r in Refund.objects.filter(Q(stripe_refund_id=q) | Q(charge_id=q))[:LIMIT]:
                hits.append(
                    Hit(
                        r.stripe_refund_id,
                        f"refund · {r.status} · {money(r.amount, r.currency)}",
                        _url(r),
                    )
                )
        if user.has_perm("billing.view_dispute"):
            for d in Dispute.objects.filter(Q(stripe_dispute_id=q) | Q(charge_id=q))[:LIMIT]:
                hits.append(
                    Hit(
                        d.stripe_dispute_id,
                        f"dispute · {d.status} · {money(d.amount, d.currency)}",
                        _url(d),
                    )
                )
        groups.append(Group("Refunds and disputes", hits))

    return [g for g in groups if g.hits]


def customer_suggestions(*, q: str, limit: int = 10) -> list[dict[str, str]]:
    """Customers for a form's autocomplete: external id prefix first, then name or email."""
    q = q.strip()
    if not q:
        return []
    rows = list(
        Customer.objects.filter(prefix_filter("external_id", q)).order_by("external_id")[:limit]
    )
    if len(rows) < limit and len(q) >= 2:
        seen = {c.pk for c in rows}
        rows += [
            c
            for c in Customer.objects.filter(Q(name__icontains=q) | Q(email__icontains=q)).order_by(
                "external_id"
            )[: limit * 2]
            if c.pk not in seen
        ][: limit - len(rows)]
    return [{"external_id": c.external_id, "name": c.name, "currency": c.currency} for c in rows]
