"""Usage aggregation in the database: one GROUP BY per batch of windows, never events in Python."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Max, Q, Sum

from ingest.models import UsageEvent

# One GROUP BY per distinct period in the batch: windows follow calendar boundaries, so a scan
# of ten thousand monthly windows is one query with the same shape as a plain GROUP BY over the
# month's events (customer filter aside), instead of a range join the planner misestimates.
# COUNT(DISTINCT) makes PostgreSQL sort each group's input, so unique counts get their own
# query over their own metrics only.
# COUNTED is the one rule of which rows count, shared with usage_between (the ORM aggregation
# behind usage so far and the explainer): a voided or amended-away row never counts, an
# amendment's row counts with its new value. tests/billing/test_usage.py runs both on the same
# data.
COUNTED_SQL = "e.voided_at IS NULL"
_PERIOD_USAGE_SQL = (
    """
SELECT e.customer_id, e.metric_id, {select}
FROM ingest_usageevent e
WHERE e.timestamp >= %s AND e.timestamp < %s
  AND e.customer_id {customers}
  AND e.metric_id IN ({metrics})
  AND """
    + COUNTED_SQL
    + """
GROUP BY e.customer_id, e.metric_id
"""
)
_PLAIN = "COUNT(*), SUM(e.value), MAX(e.value)"
# A chunk with many customers filters on their id range instead of the id list: PostgreSQL then
# reads the period with a (parallel) sequential scan, as a plain GROUP BY does, instead of one
# index probe per customer. Groups of customers in the range but not in the chunk are skipped.
RANGE_FILTER_MIN = 500
# Hash aggregation over ten thousand customers outgrows the default 4MB and spills to disk.
AGGREGATE_WORK_MEM = "64MB"
_DISTINCT = "COUNT(DISTINCT NULLIF(e.distinct_value, ''))"


def _decimal(value: object) -> Decimal:
    if value is None:
        return Decimal(0)
    return value if isinstance(value, Decimal) else Decimal(str(value))


def usage_quantity(*, aggregation: str, count: object, total: object, peak: object) -> Decimal:
    if aggregation == "count":
        return _decimal(count)
    if aggregation == "sum":
        return _decimal(total)
    if aggregation == "max":
        return _decimal(peak)
    return _decimal(count)


@dataclass(frozen=True)
class WindowRef:
    """What aggregation needs of a window: its id, customer, half-open period and the metrics
    priced on its plan."""

    window_id: int
    customer_id: int
    period_start: datetime
    period_end: datetime
    metric_ids: frozenset[int]


def _customers_clause(customer_ids: list[int]) -> tuple[str, list[Any]]:
    """``customer_ids`` is sorted."""
    if len(customer_ids) >= RANGE_FILTER_MIN:
        return "BETWEEN %s AND %s", [customer_ids[0], customer_ids[-1]]
    if connection.vendor == "postgresql":
        return "= ANY(%s)", [customer_ids]
    return "IN ({})".format(",".join(str(int(c)) for c in customer_ids)), []


def _row_quantity(*, distinct: bool, aggregation: str, values: list[Any]) -> Decimal:
    """One row of ``_PERIOD_USAGE_SQL``: the distinct count, or (count, sum, max) aggregated."""
    if distinct:
        return _decimal(values[0])
    count, total, peak = values
    return usage_quantity(aggregation=aggregation, count=count, total=total, peak=peak)


def usage_for_windows(
    *, windows: Sequence[WindowRef], aggregations: dict[int, str]
) -> dict[int, dict[int, Decimal]]:
    """``{window_id: {metric_id: quantity}}`` for the priced metrics of each window, over events
    with ``period_start <= timestamp < period_end``. ``aggregations`` maps metric id to its
    aggregation. Metrics without events are missing (quantity zero)."""
    usage: dict[int, dict[int, Decimal]] = defaultdict(dict)
    by_period: dict[tuple[datetime, datetime], list[WindowRef]] = defaultdict(list)
    for ref in windows:
        if ref.metric_ids:
            by_period[(ref.period_start, ref.period_end)].append(ref)
    ops = connection.ops
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"SET LOCAL work_mem = '{AGGREGATE_WORK_MEM}'")
        for (start, end), refs in by_period.items():
            by_customer: dict[int, list[WindowRef]] = defaultdict(list)
            for ref in refs:
                by_customer[ref.customer_id].append(ref)
            metric_ids = set().union(*(ref.metric_ids for ref in refs))
            customers_sql, customers_params = _customers_clause(sorted(by_customer))
            plain = sorted(m for m in metric_ids if aggregations.get(m) != "unique_count")
            distinct = sorted(m for m in metric_ids if aggregations.get(m) == "unique_count")
            for metrics, select in ((plain, _PLAIN), (distinct, _DISTINCT)):
                if not metrics:
                    continue
                sql = _PERIOD_USAGE_SQL.format(
                    select=select,
                    customers=customers_sql,
                    metrics=",".join(str(int(m)) for m in metrics),
                )
                bounds = [ops.adapt_datetimefield_value(start), ops.adapt_datetimefield_value(end)]
                cursor.execute(sql, [*bounds, *customers_params])
                for customer_id, metric_id, *values in cursor.fetchall():
                    if customer_id not in by_customer:  # in the id range, not in the chunk
                        continue
                    quantity = _row_quantity(
                        distinct=select is _DISTINCT,
                        aggregation=aggregations.get(metric_id, "count"),
                        values=values,
                    )
                    for ref in by_customer[customer_id]:
                        if metric_id in ref.metric_ids:
                            usage[ref.window_id][metric_id] = quantity
    return usage


def usage_between(
    *, customer_id: int, metric_aggregations: dict[int, str], start: datetime, end: datetime
) -> dict[int, Decimal]:
    """Quantities so far for one customer over ``[start, end)`` (the open window)."""
    rows = (
        UsageEvent.objects.filter(
            customer_id=customer_id,
            metric_id__in=list(metric_aggregations),
            timestamp__gte=start,
            timestamp__lt=end,
            voided_at__isnull=True,  # COUNTED_SQL
        )
        .values("metric_id")
        .annotate(
            count=Count("id"),
            total=Sum("value"),
            peak=Max("value"),
            # Same rule as invoicing (_DISTINCT): an empty distinct value is not a value.
            distinct=Count("distinct_value", distinct=True, filter=~Q(distinct_value="")),
        )
    )
    out: dict[int, Decimal] = {}
    for row in rows:
        aggregation = metric_aggregations[row["metric_id"]]
        if aggregation == "unique_count":
            out[row["metric_id"]] = _decimal(row["distinct"])
        else:
            out[row["metric_id"]] = usage_quantity(
                aggregation=aggregation, count=row["count"], total=row["total"], peak=row["peak"]
            )
    return out
