"""Billing windows and the invoice writer: window rows (one raw INSERT per batch on
PostgreSQL), which windows are due, gapless numbers, and ``_invoices_write`` (the COPY writer)
that every billing path goes through."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, models
from django.db.models import Exists, F, Max, OuterRef, Q, QuerySet, Sum
from django.utils import timezone

from billing import messages
from billing.drafts import InvoiceDraft, WindowRow, invoice_draft, metric_aggregations, window_ref
from billing.models import (
    BillingRun,
    BillingWindow,
    CreditEntry,
    Invoice,
    InvoiceCounter,
    InvoiceLine,
    Plan,
    ProviderSync,
    ReasonCode,
    Subscription,
)
from billing.periods import period_next, periods_between
from billing.pricing import credits_applicable
from billing.selectors import prices_by_plan
from billing.services.outbox import _enqueue_syncs
from billing.usage import usage_for_windows
from ingest import services as ingest_services
from neruba.fencing import fenced
from neruba.locks import Lease
from neruba.models import Customer

UNPAID = (Invoice.Status.FINALIZED, Invoice.Status.PAYMENT_FAILED)


def _grace() -> timedelta:
    return timedelta(seconds=settings.NERUBA["NERUBA_BILLING_GRACE"])


def billing_cutoff(*, as_of: datetime | None = None) -> datetime:
    """Windows ending at or before this are due: ``as_of`` (default now) minus the grace."""
    return (as_of or timezone.now()) - _grace()


def windows_generate(*, through: datetime) -> int:
    """Creates the closed windows (``period_end <= through``) of every subscription that are not
    rows yet. Idempotent: the unique (subscription, period_start) drops concurrent duplicates."""
    subscriptions = (
        Subscription.objects.filter(started_at__lt=through)
        .annotate(last_end=Max("windows__period_end"))
        .filter(Q(last_end__isnull=True) | Q(last_end__lt=through))
        .values_list("id", "started_at", "ended_at", "plan__interval", "last_end")
    )
    pending: list[tuple[int, datetime, datetime]] = []
    created = 0
    for sub_id, started_at, ended_at, interval, last_end in subscriptions.iterator(2000):
        if last_end is not None and ended_at is not None and last_end >= ended_at:
            continue
        pending.extend(
            (sub_id, start, end)
            for start, end in periods_between(
                interval=interval,
                started_at=started_at,
                ended_at=ended_at,
                since=last_end or started_at,
                through=through,
            )
        )
        if len(pending) >= 5000:
            created += _windows_insert(pending)
            pending = []
    if pending:
        created += _windows_insert(pending)
    return created


_WINDOWS_INSERT = """
INSERT INTO billing_billingwindow
  (subscription_id, period_start, period_end, status, last_error, created_at)
SELECT s, ps, pe, 'pending', '', now()
FROM unnest(%s::bigint[], %s::timestamptz[], %s::timestamptz[]) AS t(s, ps, pe)
ON CONFLICT (subscription_id, period_start) DO NOTHING
"""


def _windows_insert(rows: list[tuple[int, datetime, datetime]]) -> int:
    """One statement per batch on PostgreSQL (the ORM spends a millisecond a row here)."""
    if connection.vendor != "postgresql":
        windows = [
            BillingWindow(subscription_id=s, period_start=a, period_end=b) for s, a, b in rows
        ]
        return len(BillingWindow.objects.bulk_create(windows, ignore_conflicts=True))
    subs, starts, ends = (list(column) for column in zip(*rows, strict=True))
    with connection.cursor() as cursor:
        cursor.execute(_WINDOWS_INSERT, [subs, starts, ends])
        return cursor.rowcount


def period_end_of(*, interval: str, start: datetime) -> datetime:
    return period_next(interval=interval, start=start)


def _live_invoice(window_ref: Any) -> Exists:
    return Exists(
        Invoice.objects.filter(window=window_ref, kind=Invoice.Kind.REGULAR).exclude(
            status=Invoice.Status.VOID
        )
    )


def windows_due(*, cutoff: datetime) -> QuerySet[BillingWindow]:
    """Closed windows past the grace period with no live invoice, oldest first. This, not
    "what is due today", is what makes catch-up after downtime complete.

    A window marked invoiced whose invoice was later voided outside a rerun (in Stripe, by a
    webhook) is not billed again by the scheduler: that takes an explicit rerun."""
    return (
        BillingWindow.objects.filter(period_end__lte=cutoff)
        .exclude(status=BillingWindow.Status.INVOICED)
        .exclude(_live_invoice(OuterRef("pk")))
        .select_related("subscription")
        .order_by("period_end", "id")
    )


_ROW_FIELDS = (
    "id",
    "subscription_id",
    "subscription__customer_id",
    "subscription__plan_id",
    "period_start",
    "period_end",
)


def _window_rows(windows: QuerySet[BillingWindow], plans: dict[int, Plan]) -> list[WindowRow]:
    """The windows as rows, each with its plan from ``plans`` (a handful of plans serve
    thousands of windows; missing ones are loaded)."""
    raw = list(windows.values_list(*_ROW_FIELDS))
    missing = {plan_id for _, _, _, plan_id, _, _ in raw} - plans.keys()
    if missing:
        plans.update(Plan.objects.in_bulk(missing))
    return [
        WindowRow(
            id=pk,
            subscription_id=sub_id,
            customer_id=customer_id,
            plan=plans[plan_id],
            period_start=start,
            period_end=end,
        )
        for pk, sub_id, customer_id, plan_id, start, end in raw
    ]


def window_draft(*, window: BillingWindow) -> InvoiceDraft:
    """Prices one window from the events stored now (used by reruns and previews)."""
    row = WindowRow.of(window)
    prices = prices_by_plan().get(row.plan.pk, [])
    usage = usage_for_windows(windows=[window_ref(row, prices)], aggregations=metric_aggregations())
    return invoice_draft(window=row, usage=usage.get(window.pk, {}), prices=prices)


def _numbers_take(*, count: int, at: datetime) -> list[str]:
    """Gapless numbers: the counter row is locked until the invoice transaction commits, and a
    rollback gives the numbers back."""
    name = f"NER-{at.year}"
    InvoiceCounter.objects.get_or_create(name=name)
    counter = InvoiceCounter.objects.select_for_update().get(name=name)
    first = counter.value + 1
    InvoiceCounter.objects.filter(pk=counter.pk).update(value=F("value") + count)
    return [f"{name}-{n:06d}" for n in range(first, first + count)]


def _numbers_assign(*, invoice_ids: list[int], at: datetime) -> list[str]:
    """Numbers ``invoice_ids`` (written under placeholders) in one UPDATE, in id order."""
    numbers = _numbers_take(count=len(invoice_ids), at=at)
    table = Invoice._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"UPDATE {table} SET number = u.n FROM unnest(%s::bigint[], %s::varchar[]) "  # noqa: S608
                "AS u(i, n) WHERE id = u.i",
                [invoice_ids, numbers],
            )
        else:
            for pk, number in zip(invoice_ids, numbers, strict=True):
                cursor.execute(f"UPDATE {table} SET number = %s WHERE id = %s", [number, pk])  # noqa: S608
    return numbers


def _balances(*, customer_ids: set[int], lock: bool) -> dict[tuple[int, str], int]:
    rows = (
        CreditEntry.objects.filter(customer_id__any=list(customer_ids))
        .values("customer_id", "currency")
        .annotate(total=Sum("amount"))
    )
    balances = {(r["customer_id"], r["currency"]): int(r["total"] or 0) for r in rows}
    positive = {cid for (cid, _), total in balances.items() if total > 0}
    if lock and positive:
        # Consumption must not race another consumption (a rerun) for the same balance.
        list(
            Customer.objects.select_for_update().filter(id__any=sorted(positive)).values_list("id")
        )
        return _balances(customer_ids=positive, lock=False)
    return balances


def _provider_name() -> str:
    return "stripe" if settings.NERUBA.get("STRIPE_SECRET_KEY") else "local"


@dataclass(frozen=True, slots=True)
class Issued:
    """An invoice a billing write created."""

    id: int
    number: str
    total: int


def _rows_insert(*, model: type[models.Model], columns: list[str], rows: list[tuple]) -> list[int]:
    """Inserts plain rows (values in ``columns`` order) and returns their ids in row order.

    On PostgreSQL the ids come from the table's sequence in one query and the rows go in with
    one COPY: a billing pass writes tens of thousands of rows, and building a model instance
    for each (as ``bulk_create`` needs) would cost more than aggregating the usage. Elsewhere
    (SQLite, development and tests) it is ``bulk_create``."""
    if not rows:
        return []
    if connection.vendor != "postgresql":
        objs = model._default_manager.bulk_create(
            [model(**dict(zip(columns, row, strict=True))) for row in rows]
        )
        return [obj.pk for obj in objs]
    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [table, len(rows)],
        )
        ids = [pk for (pk,) in cursor.fetchall()]
        names = ", ".join(connection.ops.quote_name(c) for c in ["id", *columns])
        with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for pk, row in zip(ids, rows, strict=True):
                copy.write_row((pk, *row))
    return ids


_INVOICE_COLUMNS = [
    "number",
    "customer_id",
    "subscription_id",
    "window_id",
    "kind",
    "status",
    "currency",
    "period_start",
    "period_end",
    "subtotal",
    "credits_applied",
    "total",
    "supersedes_id",
    "run_id",
    "issued_at",
    "status_changed_at",
    "provider",
    "provider_invoice_id",
]
_LINE_COLUMNS = ["invoice_id", "metric_id", "description", "quantity", "unit_amount", "amount"]
_SYNC_COLUMNS = [
    "invoice_id",
    "action",
    "status",
    "attempts",
    "next_attempt_at",
    "last_error",
    "created_at",
]


def _invoices_write(
    *,
    drafts: list[InvoiceDraft],
    lease: Lease | None,
    run: BillingRun | None,
    kind: str = "regular",
    supersedes: dict[int, Invoice] | None = None,
    late_numbers: bool = False,
) -> list[Issued]:
    """Writes finalized invoices for ``drafts`` in the caller's transaction (``fenced(lease)``
    when under a lease, which checks the token first and last): gapless numbers, lines, credit
    consumption, the provider outbox row, window status and the ingest watermark. The partial
    unique constraint raises IntegrityError for a window already billed.

    The gapless counter row stays locked from the moment numbers are taken until the commit.
    ``late_numbers`` (shards billed in parallel) takes them last: the invoices are written
    under placeholder numbers, then numbered by one UPDATE just before the commit, so parallel
    shards queue on the counter only for that statement and the commit, not for their whole
    batch."""
    now = timezone.now()
    if late_numbers:
        placeholder = f"~{uuid.uuid4().hex[:24]}"
        numbers = [f"{placeholder}-{i}" for i in range(len(drafts))]
    else:
        numbers = _numbers_take(count=len(drafts), at=now)
    balances = _balances(customer_ids={d.window.customer_id for d in drafts}, lock=True)
    provider = _provider_name()
    run_id = run.pk if run is not None else None
    supersedes = supersedes or {}
    invoices: list[tuple] = []
    consumptions: list[tuple[int, int, str, int]] = []  # (index, customer, currency, amount)
    for index, (draft, number) in enumerate(zip(drafts, numbers, strict=True)):
        window = draft.window
        currency = window.plan.currency
        key = (window.customer_id, currency)
        subtotal = draft.subtotal
        credits = credits_applicable(subtotal=subtotal, balance=balances.get(key, 0))
        if credits:
            balances[key] -= credits
            consumptions.append((index, window.customer_id, currency, credits))
        superseded = supersedes.get(window.id) if window.id is not None else None
        invoices.append(
            (
                number,
                window.customer_id,
                window.subscription_id,
                window.id,
                kind,
                Invoice.Status.FINALIZED.value,
                currency,
                window.period_start,
                window.period_end,
                subtotal,
                credits,
                subtotal - credits,
                superseded.pk if superseded is not None else None,
                run_id,
                now,
                now,
                provider,
                "",
            )
        )
    ids = _rows_insert(model=Invoice, columns=_INVOICE_COLUMNS, rows=invoices)
    _rows_insert(
        model=InvoiceLine,
        columns=_LINE_COLUMNS,
        rows=[
            (
                invoice_id,
                line.metric_id,
                line.description,
                line.quantity,
                line.unit_amount,
                line.amount,
            )
            for invoice_id, draft in zip(ids, drafts, strict=True)
            for line in draft.lines
        ],
    )
    push = ProviderSync.Action.PUSH.value
    pending = ProviderSync.Status.PENDING.value
    sync_ids = _rows_insert(
        model=ProviderSync,
        columns=_SYNC_COLUMNS,
        rows=[(invoice_id, push, pending, 0, now, "", now) for invoice_id in ids],
    )
    if late_numbers:
        numbers = _numbers_assign(invoice_ids=ids, at=now)
        invoices = [(number, *row[1:]) for number, row in zip(numbers, invoices, strict=True)]
    if consumptions:
        CreditEntry.objects.bulk_create(
            [
                CreditEntry(
                    customer_id=customer_id,
                    currency=currency,
                    amount=-amount,
                    kind=CreditEntry.Kind.CONSUMPTION,
                    reason_code=ReasonCode.CORRECTION,
                    invoice_id=ids[index],
                    note=f"Applied to {numbers[index]}",
                    created_at=now,
                )
                for index, customer_id, currency, amount in consumptions
            ]
        )
    if kind == Invoice.Kind.REGULAR:
        BillingWindow.objects.filter(pk__any=[d.window.id for d in drafts]).update(
            status=BillingWindow.Status.INVOICED, billed_at=now, claimed_by_run=run, last_error=""
        )
    through: dict[int, datetime] = {}
    for draft in drafts:
        cid, end = draft.window.customer_id, draft.window.period_end
        through[cid] = max(through.get(cid, end), end)
    ingest_services.invoiced_watermarks_advance(through=through)
    _enqueue_syncs(sync_ids)
    # invoice.finalized for integrators: one outbox row in this transaction (neruba.outbox).
    messages.invoices_finalized_published(numbers=numbers)
    return [
        Issued(id=pk, number=row[0], total=row[11]) for pk, row in zip(ids, invoices, strict=True)
    ]


def window_bill(
    *, window: BillingWindow, lease: Lease | None = None, run: BillingRun | None = None
) -> Invoice | None:
    """Bills one window in its own transaction. Returns ``None`` when it already has a live
    invoice (the partial unique constraint decided, whatever the lock said)."""
    draft = window_draft(window=window)
    try:
        with fenced(lease):
            issued = _invoices_write(drafts=[draft], lease=lease, run=run)[0]
    except IntegrityError:
        return None
    return Invoice.objects.get(pk=issued.id)
