"""Billing write operations: catalog, windows and runs, invoices, reruns, credits and the
payment-provider outbox."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Exists, F, Max, OuterRef, Q, QuerySet, Sum
from django.utils import timezone

from billing.exceptions import (
    CurrencyMismatch,
    InvoiceStateInvalid,
    SubscriptionExternalIdTaken,
    SubscriptionOverlap,
)
from billing.ledger import credit_grant
from billing.models import (
    BillingRun,
    BillingWindow,
    CreditEntry,
    Invoice,
    InvoiceCounter,
    InvoiceLine,
    Plan,
    Price,
    ProviderSync,
    ReasonCode,
    Subscription,
)
from billing.payments import invoice_cash_refresh
from billing.periods import period_next, periods_between
from billing.pricing import (
    amount_round,
    credits_applicable,
    decimal_str,
    effective_unit_amount,
    price_amount,
    tiers_validate,
)
from billing.selectors import prices_by_plan
from billing.usage import WindowRef, usage_for_windows
from ingest import services as ingest_services
from ingest.models import Metric
from neruba import audit
from neruba.errors import ValidationFailed
from neruba.locks import (
    Lease,
    LockLost,
    default_holder,
    lock_acquire,
    lock_assert_held,
    lock_heartbeat,
    lock_release,
)
from neruba.metrics import BILLING_RUN_DURATION, BILLING_RUNS, WINDOWS_INVOICED
from neruba.models import ApiKey, Customer

if TYPE_CHECKING:
    from billing.providers import PaymentProvider

logger = logging.getLogger(__name__)


def plan_create(
    *,
    code: str,
    name: str,
    currency: str,
    interval: str,
    base_amount: int,
    prices: list[dict[str, Any]],
    actor: audit.Actor = None,
) -> Plan:
    """Creates a plan with its prices. Each price: ``metric`` (a Metric), ``model``,
    ``unit_amount`` and, for graduated prices, ``tiers``."""
    with transaction.atomic():
        plan = Plan.objects.create(
            code=code,
            name=name,
            currency=currency.upper(),
            interval=interval,
            base_amount=base_amount,
        )
        for spec in prices:
            tiers = tiers_validate(spec["tiers"]) if spec.get("model") == "graduated" else []
            Price.objects.create(
                plan=plan,
                metric=spec["metric"],
                model=spec.get("model", "per_unit"),
                unit_amount=Decimal(str(spec.get("unit_amount", "0"))),
                tiers=tiers,
            )
        audit.record(
            actor=actor,
            action="plan.create",
            target=plan,
            after={
                "code": code,
                "currency": plan.currency,
                "interval": interval,
                "base_amount": base_amount,
                "prices": [{"metric": p["metric"].code, "model": p.get("model")} for p in prices],
            },
        )
    return plan


def subscription_check(
    *,
    customer: Customer,
    plan: Plan,
    started_at: datetime,
    ended_at: datetime | None = None,
    exclude_pk: int | None = None,
) -> None:
    """The rules every subscription obeys: the plan's currency is the customer's, and one
    customer never has two overlapping subscriptions to the same plan."""
    if customer.currency != plan.currency:
        raise CurrencyMismatch(details={"customer": customer.currency, "plan": plan.currency})
    overlap = Subscription.objects.filter(customer=customer, plan=plan).filter(
        Q(ended_at__isnull=True) | Q(ended_at__gt=started_at)
    )
    if ended_at is not None:
        overlap = overlap.filter(started_at__lt=ended_at)
    if exclude_pk is not None:
        overlap = overlap.exclude(pk=exclude_pk)
    if overlap.exists():
        raise SubscriptionOverlap(details={"customer": customer.external_id, "plan": plan.code})


def subscription_create(
    *,
    customer: Customer,
    plan: Plan,
    started_at: datetime,
    ended_at: datetime | None = None,
    external_id: str | None = None,
    actor: audit.Actor | ApiKey = None,
) -> Subscription:
    """``external_id`` (optional, unique) is the client's own id for the subscription: usage
    sent through the Lago-compatible surface names it as ``external_subscription_id``."""
    external_id = external_id or None  # "" is no id, not a second unique value
    try:
        with transaction.atomic():
            # Lock the customer row so two concurrent creations cannot both pass the overlap
            # check.
            Customer.objects.select_for_update().filter(pk=customer.pk).first()
            subscription_check(
                customer=customer, plan=plan, started_at=started_at, ended_at=ended_at
            )
            subscription = Subscription.objects.create(
                customer=customer,
                plan=plan,
                started_at=started_at,
                ended_at=ended_at,
                external_id=external_id,
            )
            audit.record(
                actor=actor,
                action="subscription.create",
                target=subscription,
                customer=customer,
                after={
                    "plan": plan.code,
                    "started_at": started_at,
                    "ended_at": ended_at,
                    "external_id": external_id,
                },
            )
    except IntegrityError:
        # Only the unique external id can collide here (the overlap check ran under the lock).
        raise SubscriptionExternalIdTaken(details={"external_id": external_id}) from None
    return subscription


def subscription_end(
    *, subscription: Subscription, ended_at: datetime | None, actor: audit.Actor, reason: str
) -> Subscription:
    """Sets (or clears) the end of a subscription; the only change allowed once it exists,
    since its windows and invoices depend on the customer, plan and start."""
    with transaction.atomic():
        Customer.objects.select_for_update().filter(pk=subscription.customer_id).first()
        locked = Subscription.objects.select_for_update().get(pk=subscription.pk)
        if ended_at is not None and ended_at <= locked.started_at:
            raise ValidationFailed(
                "The end must be after the start.", details={"ended_at": ended_at.isoformat()}
            )
        subscription_check(
            customer=locked.customer,
            plan=locked.plan,
            started_at=locked.started_at,
            ended_at=ended_at,
            exclude_pk=locked.pk,
        )
        before = {"ended_at": locked.ended_at}
        locked.ended_at = ended_at
        locked.save(update_fields=["ended_at"])
        audit.record(
            actor=actor,
            action="subscription.end",
            target=locked,
            customer=locked.customer,
            reason=reason,
            before=before,
            after={"ended_at": ended_at},
        )
    return locked


def metric_for_code(code: str) -> Metric:
    return Metric.objects.get(code=code)


# --- billing windows, runs and invoices ------------------------------------------------------

BILLING_LOCK = "billing-scan"
SHARD_UNFINISHED = ("pending", "running")
DEFAULT_CHUNK = 10000
DEFAULT_BATCH = 1000


@dataclass
class LineDraft:
    metric_id: int | None
    metric_code: str
    description: str
    quantity: Decimal
    unit_amount: Decimal
    amount: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric_code or None,
            "description": self.description,
            "quantity": decimal_str(self.quantity),
            "unit_amount": decimal_str(self.unit_amount),
            "amount": self.amount,
        }


@dataclass(frozen=True, slots=True)
class WindowRow:
    """What billing needs of a window. A scan handles thousands of windows, so it reads these
    as plain rows instead of building a window and a subscription model instance for each."""

    id: int | None
    subscription_id: int
    customer_id: int
    plan: Plan
    period_start: datetime
    period_end: datetime

    @classmethod
    def of(cls, window: BillingWindow) -> WindowRow:
        subscription = window.subscription
        return cls(
            id=window.pk,
            subscription_id=subscription.pk,
            customer_id=subscription.customer_id,
            plan=subscription.plan,
            period_start=window.period_start,
            period_end=window.period_end,
        )


@dataclass
class InvoiceDraft:
    window: WindowRow
    lines: list[LineDraft]

    @property
    def subtotal(self) -> int:
        return sum(line.amount for line in self.lines)


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


def _aggregations() -> dict[int, str]:
    return dict(Metric.objects.values_list("id", "aggregation"))


def invoice_draft(
    *, window: WindowRow, usage: dict[int, Decimal], prices: list[Price]
) -> InvoiceDraft:
    """Prices one window: the base fee (not prorated for partial first/last windows) and one
    line per priced metric, each rounded half-even once."""
    plan = window.plan
    lines: list[LineDraft] = []
    if plan.base_amount:
        lines.append(
            LineDraft(
                metric_id=None,
                metric_code="",
                description=f"{plan.name} base fee",
                quantity=Decimal(1),
                unit_amount=Decimal(plan.base_amount),
                amount=plan.base_amount,
            )
        )
    for price in prices:
        quantity = usage.get(price.metric_id, Decimal(0))
        exact = price_amount(
            model=price.model, unit_amount=price.unit_amount, tiers=price.tiers, quantity=quantity
        )
        amount = amount_round(exact)
        unit = (
            effective_unit_amount(amount=exact, quantity=quantity)
            if price.model == Price.Model.GRADUATED
            else Decimal(price.unit_amount)
        )
        lines.append(
            LineDraft(
                metric_id=price.metric_id,
                metric_code=price.metric.code,
                description=price.metric.name,
                quantity=quantity,
                unit_amount=unit,
                amount=amount,
            )
        )
    return InvoiceDraft(window=window, lines=lines)


def _window_ref(window: WindowRow, prices: list[Price]) -> WindowRef:
    assert window.id is not None
    return WindowRef(
        window_id=window.id,
        customer_id=window.customer_id,
        period_start=window.period_start,
        period_end=window.period_end,
        metric_ids=frozenset(p.metric_id for p in prices),
    )


def window_draft(*, window: BillingWindow) -> InvoiceDraft:
    """Prices one window from the events stored now (used by reruns and previews)."""
    row = WindowRow.of(window)
    prices = prices_by_plan().get(row.plan.pk, [])
    usage = usage_for_windows(windows=[_window_ref(row, prices)], aggregations=_aggregations())
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


def _enqueue_syncs(sync_ids: list[int]) -> None:
    if not sync_ids:
        return

    def send() -> None:
        from billing import tasks

        tasks.provider_syncs_send.delay(sync_ids)

    transaction.on_commit(send)


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
    """Writes finalized invoices for ``drafts`` in the caller's transaction: fence, gapless
    numbers, lines, credit consumption, the provider outbox row, window status and the ingest
    watermark. The partial unique constraint raises IntegrityError for a window already billed.

    The gapless counter row stays locked from the moment numbers are taken until the commit.
    ``late_numbers`` (shards billed in parallel) takes them last: the invoices are written
    under placeholder numbers, then numbered by one UPDATE just before the commit, so parallel
    shards queue on the counter only for that statement and the commit, not for their whole
    batch."""
    if lease is not None:
        lock_assert_held(lease=lease)
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
        with transaction.atomic():
            issued = _invoices_write(drafts=[draft], lease=lease, run=run)[0]
    except IntegrityError:
        return None
    return Invoice.objects.get(pk=issued.id)


def _runs_abandon(*, current: BillingRun) -> None:
    """Runs still marked running when we hold the lock lost it (killed, stopped): their lease
    expired, so they are over."""
    # A fanned-out run is over when its shards are, whoever holds the scan lease.
    BillingRun.objects.filter(status=BillingRun.Status.RUNNING, dry_run=False).exclude(
        pk=current.pk
    ).exclude(shards__status__in=SHARD_UNFINISHED).update(
        status=BillingRun.Status.ABANDONED, finished_at=timezone.now()
    )


def _window_failed(*, run: BillingRun, window_id: int | None, exc: Exception, record: bool) -> None:
    run.failed += 1
    message = f"{type(exc).__name__}: {exc}"
    if len(run.errors) < 100:
        run.errors.append({"window": window_id, "error": message[:500]})
    if record:
        BillingWindow.objects.filter(pk=window_id).update(
            status=BillingWindow.Status.FAILED, last_error=message[:2000]
        )


def _batch_bill(
    *, run: BillingRun, lease: Lease | None, drafts: list[InvoiceDraft], late_numbers: bool = False
) -> None:
    """Bills a batch of windows in one fenced transaction; if anything in it fails (a window
    billed meanwhile, a bad price) the batch is retried one window per transaction so each
    window gets its own outcome. LockLost is never swallowed: the scan must stop."""
    if len(drafts) > 1:
        try:
            with transaction.atomic():
                invoices = _invoices_write(
                    drafts=drafts, lease=lease, run=run, late_numbers=late_numbers
                )
        except LockLost:
            raise
        except Exception:
            # Retried one window per transaction below, where each outcome is recorded.
            logger.info("billing batch failed; retrying per window", exc_info=True)
        else:
            run.invoiced += len(invoices)
            run.invoiced_amount += sum(i.total for i in invoices)
            WINDOWS_INVOICED.inc(len(invoices))
            return
    for draft in drafts:
        try:
            with transaction.atomic():
                invoice = _invoices_write(
                    drafts=[draft], lease=lease, run=run, late_numbers=late_numbers
                )[0]
        except LockLost:
            raise
        except IntegrityError:
            run.already_invoiced += 1
            continue
        except Exception as exc:  # one bad window must not stop the scan
            _window_failed(run=run, window_id=draft.window.id, exc=exc, record=True)
            continue
        run.invoiced += 1
        run.invoiced_amount += invoice.total
        WINDOWS_INVOICED.inc()


_COUNT_FIELDS = ["scanned", "invoiced", "already_invoiced", "failed", "invoiced_amount", "errors"]


def billing_scan(
    *,
    trigger: str,
    as_of: datetime | None = None,
    actor: audit.Actor = None,
    dry_run: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    batch_size: int = DEFAULT_BATCH,
    on_progress: Callable[[BillingRun], None] | None = None,
) -> BillingRun:
    """Bills every closed window (past the grace period) without a live invoice, oldest first.

    1. Take the ``billing-scan`` lease; if it is held, record a ``lock_held`` run and return.
    2. Create the missing window rows up to ``as_of - grace``.
    3. Per chunk of due windows: aggregate usage in one GROUP BY, price each window.
    4. Per batch: one transaction that re-checks the fencing token before writing; a batch
       that fails is retried one window per transaction. Heartbeat after each batch.
    5. Release the lease and record the outcome.

    Double billing is impossible even if the lock breaks: the partial unique constraint on
    live regular invoices per window turns the second write into ``already_invoiced``.
    A dry run takes no lock and writes nothing but its run row (and window rows)."""
    as_of = as_of or timezone.now()
    cutoff = billing_cutoff(as_of=as_of)
    clock = time.monotonic()
    holder = default_holder()
    user = actor if getattr(actor, "is_authenticated", False) else None
    lease = None if dry_run else lock_acquire(name=BILLING_LOCK, holder=holder)
    if lease is None and not dry_run:
        run = BillingRun.objects.create(
            trigger=trigger,
            holder=holder,
            as_of=as_of,
            status=BillingRun.Status.LOCK_HELD,
            finished_at=timezone.now(),
            actor=user,
        )
        BILLING_RUNS.labels(status=run.status).inc()
        return run
    run = BillingRun.objects.create(
        trigger=trigger,
        holder=holder,
        token=lease.token if lease else None,
        as_of=as_of,
        dry_run=dry_run,
        actor=user,
    )
    try:
        if lease is not None:
            _runs_abandon(current=run)
        windows_generate(through=cutoff)
        prices = prices_by_plan()
        plans: dict[int, Plan] = {}
        aggregations = _aggregations()
        due = windows_due(cutoff=cutoff)
        last: tuple[datetime, int] | None = None
        while True:
            page = due
            if last is not None:
                page = due.filter(Q(period_end__gt=last[0]) | Q(period_end=last[0], id__gt=last[1]))
            chunk = _window_rows(page[:chunk_size], plans)
            if not chunk:
                break
            last = (chunk[-1].period_end, chunk[-1].id)
            usage = usage_for_windows(
                windows=[_window_ref(w, prices.get(w.plan.pk, [])) for w in chunk],
                aggregations=aggregations,
            )
            run.scanned += len(chunk)
            drafts = []
            for w in chunk:
                try:
                    drafts.append(
                        invoice_draft(
                            window=w, usage=usage.get(w.id, {}), prices=prices.get(w.plan.pk, [])
                        )
                    )
                except Exception as exc:  # a bad price fails its window, not the scan
                    _window_failed(run=run, window_id=w.id, exc=exc, record=not dry_run)
            if dry_run:
                run.invoiced += len(drafts)
                run.invoiced_amount += sum(d.subtotal for d in drafts)
                continue
            for start in range(0, len(drafts), batch_size):
                _batch_bill(run=run, lease=lease, drafts=drafts[start : start + batch_size])
                if lease is not None and not lock_heartbeat(lease=lease):
                    raise LockLost(details={"lock": lease.name, "token": lease.token})
                run.save(update_fields=_COUNT_FIELDS)
                if on_progress is not None:
                    on_progress(run)
    except LockLost as exc:
        run.errors.append({"window": None, "error": f"lock lost: {exc.details}"})
        run.status = BillingRun.Status.FAILED
    except Exception as exc:
        run.errors.append({"window": None, "error": f"{type(exc).__name__}: {exc}"[:500]})
        run.status = BillingRun.Status.FAILED
        raise
    finally:
        if run.status == BillingRun.Status.RUNNING:
            if run.failed == 0:
                run.status = BillingRun.Status.SUCCEEDED
            else:
                run.status = BillingRun.Status.PARTIAL if run.invoiced else BillingRun.Status.FAILED
        run.finished_at = timezone.now()
        run.save(update_fields=[*_COUNT_FIELDS, "status", "finished_at"])
        if lease is not None:
            lock_release(lease=lease)
        BILLING_RUNS.labels(status=run.status).inc()
        BILLING_RUN_DURATION.observe(time.monotonic() - clock)
    return run


# --- reruns ------------------------------------------------------------------------------------

UNPAID = (Invoice.Status.FINALIZED, Invoice.Status.PAYMENT_FAILED)


@dataclass
class RerunResult:
    """What a rerun found (and, when applied, did). ``action``: ``supersede`` (void the unpaid
    invoice and issue a new one), ``credit`` (paid, over-billed), ``supplementary`` (paid,
    under-billed), ``invoice`` (never billed), ``none`` (no amount differs: nothing is voided,
    issued or credited)."""

    window: BillingWindow
    invoice: Invoice | None
    action: str
    old_lines: list[dict[str, Any]]
    new_lines: list[dict[str, Any]]
    old_subtotal: int
    new_subtotal: int
    delta: int
    applied: bool = False
    created: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "window": self.window.pk,
            "invoice": self.invoice.number if self.invoice else None,
            "action": self.action,
            "old_subtotal": self.old_subtotal,
            "new_subtotal": self.new_subtotal,
            "delta": self.delta,
            "old_lines": self.old_lines,
            "new_lines": self.new_lines,
            "applied": self.applied,
            "created": self.created,
        }

    def render(self) -> str:
        rows = [
            f"window {self.window.pk} ({self.window}) invoice "
            f"{self.invoice.number if self.invoice else '-'}: {self.action}, "
            f"subtotal {self.old_subtotal} -> {self.new_subtotal} (delta {self.delta:+d})"
        ]
        old = {line["description"]: line for line in self.old_lines}
        new = {line["description"]: line for line in self.new_lines}
        for key in list(dict.fromkeys([*old, *new])):
            a, b = old.get(key), new.get(key)
            rows.append(
                f"  {key}: qty {a['quantity'] if a else '-'} -> {b['quantity'] if b else '-'}, "
                f"amount {a['amount'] if a else '-'} -> {b['amount'] if b else '-'}"
            )
        return "\n".join(rows)


def _line_dicts(invoice: Invoice) -> list[dict[str, Any]]:
    return [
        {
            "metric": line.metric.code if line.metric else None,
            "description": line.description,
            "quantity": decimal_str(line.quantity),
            "unit_amount": decimal_str(line.unit_amount),
            "amount": line.amount,
        }
        for line in invoice.lines.select_related("metric")
    ]


def _amounts(lines: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return sorted((line["metric"] or line["description"], line["amount"]) for line in lines)


def _billed_so_far(*, invoice: Invoice) -> int:
    """What the customer owes for the window after earlier adjustments: the paid invoice, plus
    supplementary invoices, minus rerun correction credits. Makes a repeated rerun a no-op."""
    window = invoice.window
    supplementary = (
        Invoice.objects.filter(window=window, kind=Invoice.Kind.SUPPLEMENTARY)
        .exclude(status=Invoice.Status.VOID)
        .aggregate(total=Sum("subtotal"))["total"]
        or 0
    )
    credited = (
        CreditEntry.objects.filter(
            invoice=invoice, kind=CreditEntry.Kind.GRANT, source_key__startswith="rerun:"
        ).aggregate(total=Sum("amount"))["total"]
        or 0
    )
    return invoice.subtotal + int(supplementary) - int(credited)


def invoice_rerun(
    *,
    actor: audit.Actor,
    reason: str,
    invoice: Invoice | None = None,
    window: BillingWindow | None = None,
    dry_run: bool = True,
) -> RerunResult:
    """Re-prices a window from the events stored now, without rewriting history.

    Unpaid (finalized, payment_failed): void it, give back the credits it consumed, and issue a
    superseding invoice. Paid: a ``correction`` credit for over-billing, a supplementary
    invoice for under-billing. Never billed: bill it. Dry run (the default) only returns the
    diff. Applied reruns are audited in the transaction that makes the change."""
    if invoice is None and window is None:
        raise InvoiceStateInvalid("Give an invoice or a window.")
    if invoice is not None:
        invoice = Invoice.objects.select_related("customer").get(pk=invoice.pk)  # fresh status
        window = invoice.window
    assert window is not None
    window = BillingWindow.objects.select_related(
        "subscription__plan", "subscription__customer"
    ).get(pk=window.pk)
    if invoice is None:
        invoice = (
            Invoice.objects.filter(window=window, kind=Invoice.Kind.REGULAR)
            .exclude(status=Invoice.Status.VOID)
            .first()
        )
    elif invoice.status == Invoice.Status.VOID or invoice.kind != Invoice.Kind.REGULAR:
        raise InvoiceStateInvalid(
            "Only a live regular invoice can be rerun.", details={"invoice": invoice.number}
        )
    draft = window_draft(window=window)
    new_lines = [line.as_dict() for line in draft.lines]
    if invoice is None:
        result = RerunResult(
            window, None, "invoice", [], new_lines, 0, draft.subtotal, draft.subtotal
        )
    else:
        old_lines = _line_dicts(invoice)
        if invoice.status in UNPAID:
            old = invoice.subtotal
            # Only money is a difference worth a void: a quantity that moved without moving
            # any amount (inside a free tier, below a cent) re-issues the same invoice for
            # nothing, and the customer gets an "invoice corrected" for an identical total.
            changed = _amounts(old_lines) != _amounts(new_lines)
            action = "supersede" if changed else "none"
        elif invoice.status == Invoice.Status.PAID:
            old = _billed_so_far(invoice=invoice)
            delta = draft.subtotal - old
            action = "credit" if delta < 0 else "supplementary" if delta > 0 else "none"
        else:
            raise InvoiceStateInvalid(
                "An uncollectible invoice is settled; issue a credit instead.",
                details={"invoice": invoice.number, "status": invoice.status},
            )
        result = RerunResult(
            window, invoice, action, old_lines, new_lines, old, draft.subtotal, draft.subtotal - old
        )
    if dry_run or result.action == "none":
        return result
    if not reason.strip():
        raise InvoiceStateInvalid("A reason is required.", details={"reason": "required"})
    with transaction.atomic():
        run = BillingRun.objects.create(
            trigger=BillingRun.Trigger.RERUN,
            holder=audit.actor_label(actor),
            as_of=timezone.now(),
            actor=actor if getattr(actor, "is_authenticated", False) else None,
            scanned=1,
        )
        if result.action == "invoice":
            created = _invoices_write(drafts=[draft], lease=None, run=run)
            result.created = [created[0].number]
        elif result.action == "supersede":
            assert invoice is not None
            old_invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
            if old_invoice.status not in UNPAID:
                raise InvoiceStateInvalid(
                    "The invoice changed state meanwhile.",
                    details={"invoice": invoice.number, "status": old_invoice.status},
                )
            _invoice_void(invoice=old_invoice)
            created = _invoices_write(
                drafts=[draft], lease=None, run=run, supersedes={window.pk: old_invoice}
            )
            result.created = [created[0].number]
        elif result.action == "credit":
            assert invoice is not None
            entry, _ = credit_grant(
                customer=invoice.customer,
                amount=-result.delta,
                reason_code=ReasonCode.CORRECTION,
                actor=actor,
                reason=reason,
                currency=invoice.currency,
                invoice=invoice,
                source_key=f"rerun:{invoice.number}:{old}:{draft.subtotal}",
                extra={"rerun": True},
            )
            result.created = [f"credit {entry.pk}"]
        else:  # supplementary
            assert invoice is not None
            supplement = InvoiceDraft(
                window=WindowRow.of(window),
                lines=[
                    LineDraft(
                        metric_id=None,
                        metric_code="",
                        description=f"Correction to {invoice.number}",
                        quantity=Decimal(1),
                        unit_amount=Decimal(result.delta),
                        amount=result.delta,
                    )
                ],
            )
            created = _invoices_write(
                drafts=[supplement], lease=None, run=run, kind=Invoice.Kind.SUPPLEMENTARY
            )
            result.created = [created[0].number]
        run.status = BillingRun.Status.SUCCEEDED
        run.invoiced = 0 if result.action == "credit" else 1
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "invoiced", "finished_at"])
        result.applied = True
        audit.record(
            actor=actor,
            action="invoice.rerun",
            target=invoice or window,
            customer=window.subscription.customer,
            reason=reason,
            before={"invoice": invoice.number if invoice else None, "lines": result.old_lines},
            after=result.as_dict(),
        )
    return result


def _invoice_void(*, invoice: Invoice) -> None:
    """Voids a locked, unpaid invoice in the caller's transaction: credits it consumed go back to
    the ledger as reversal entries, and a void is queued for the provider."""
    now = timezone.now()
    invoice.status = Invoice.Status.VOID
    invoice.voided_at = now
    invoice.status_changed_at = now
    invoice.save(update_fields=["status", "voided_at", "status_changed_at"])
    for consumption in CreditEntry.objects.filter(
        invoice=invoice, kind=CreditEntry.Kind.CONSUMPTION
    ):
        CreditEntry.objects.create(
            customer_id=consumption.customer_id,
            currency=consumption.currency,
            amount=-consumption.amount,
            kind=CreditEntry.Kind.REVERSAL,
            reason_code=ReasonCode.CORRECTION,
            invoice=invoice,
            reverses=consumption,
            note=f"{invoice.number} voided",
        )
    sync, _ = ProviderSync.objects.get_or_create(invoice=invoice, action=ProviderSync.Action.VOID)
    _enqueue_syncs([sync.pk])


# --- local provider: mark paid; credits --------------------------------------------------------


def invoice_mark_paid(*, invoice: Invoice, actor: audit.Actor, reason: str) -> Invoice:
    """Records an offline payment (the local provider keeps invoices open until then). Only an
    unpaid invoice can be marked paid; the audit entry commits with the change."""
    if not reason.strip():
        raise InvoiceStateInvalid("A reason is required.", details={"reason": "required"})
    with transaction.atomic():
        row = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if row.status not in UNPAID:
            raise InvoiceStateInvalid(
                "Only a finalized or payment-failed invoice can be marked paid.",
                details={"invoice": row.number, "status": row.status},
            )
        before = row.status
        now = timezone.now()
        row.status = Invoice.Status.PAID
        row.paid_at = now
        row.status_changed_at = now
        row.amount_paid = row.total
        row.save(update_fields=["status", "paid_at", "status_changed_at", "amount_paid"])
        invoice_cash_refresh(invoice=row)
        audit.record(
            actor=actor,
            action="invoice.mark_paid",
            target=row,
            customer=row.customer,
            reason=reason,
            before={"status": before},
            after={"status": row.status, "paid_at": now, "amount_paid": row.amount_paid},
        )
    return row


def credit_issue(
    *,
    customer: Customer,
    amount: int,
    reason_code: str,
    actor: audit.Actor,
    reason: str,
    currency: str | None = None,
) -> CreditEntry:
    """A finance-issued credit (console). The ledger's ``credit_grant`` writes and audits it."""
    entry, _ = credit_grant(
        customer=customer,
        amount=amount,
        reason_code=reason_code,
        actor=actor,
        reason=reason,
        currency=currency,
    )
    return entry


# --- provider outbox ---------------------------------------------------------------------------

SYNC_MAX_ATTEMPTS = 8


def provider_sync_send(*, sync: ProviderSync, provider: PaymentProvider | None = None) -> bool:
    """Sends one outbox row to the payment provider. The call happens outside any row lock;
    the outcome is written afterwards. Returns True when sent (or already sent); on failure
    records the error and the next attempt time (exponential backoff) and re-raises."""
    from billing.providers import provider_get

    sync = ProviderSync.objects.select_related("invoice__customer").get(pk=sync.pk)
    if sync.status == ProviderSync.Status.SENT:
        return True
    invoice = sync.invoice
    provider = provider or provider_get()
    try:
        if sync.action == ProviderSync.Action.PUSH:
            provider_id = provider.push_invoice(invoice)
        else:
            provider.void_invoice(invoice)
            provider_id = invoice.provider_invoice_id
    except Exception as exc:
        attempts = sync.attempts + 1
        ProviderSync.objects.filter(pk=sync.pk).update(
            attempts=attempts,
            last_error=f"{type(exc).__name__}: {exc}"[:2000],
            next_attempt_at=timezone.now() + timedelta(seconds=min(3600, 30 * 2**attempts)),
            status=(
                ProviderSync.Status.FAILED
                if attempts >= SYNC_MAX_ATTEMPTS
                else ProviderSync.Status.PENDING
            ),
        )
        raise
    now = timezone.now()
    with transaction.atomic():
        ProviderSync.objects.filter(pk=sync.pk).update(
            status=ProviderSync.Status.SENT, sent_at=now, attempts=F("attempts") + 1, last_error=""
        )
        Invoice.objects.filter(pk=invoice.pk).update(
            provider=provider.name,
            provider_invoice_id=provider_id or invoice.provider_invoice_id,
            provider_synced_at=now,
        )
    return True
