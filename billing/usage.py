"""Usage aggregation in the database: one GROUP BY per batch of windows, never events in Python."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from django.db import connection
from django.db.models import Count, Max, Sum

from ingest.models import UsageEvent

# Events are matched to a window by the subscription's customer, the window's half-open period
# and the metrics priced on the plan, so the join walks the (customer, metric, timestamp) index
# on small batches and hashes the windows on big ones. COUNT(DISTINCT) makes PostgreSQL sort
# each group's input, so unique counts get their own query over their own metrics only.
_WINDOW_USAGE_SQL = """
SELECT w.id, e.metric_id, {select}
FROM billing_billingwindow w
JOIN billing_subscription s ON s.id = w.subscription_id
JOIN billing_price p ON p.plan_id = s.plan_id
JOIN ingest_metric m ON m.id = p.metric_id
JOIN ingest_usageevent e
  ON e.customer_id = s.customer_id
 AND e.metric_id = p.metric_id
 AND e.timestamp >= w.period_start
 AND e.timestamp < w.period_end
WHERE w.id IN ({ids}) AND m.aggregation {aggregation}
GROUP BY w.id, e.metric_id
"""
_PLAIN = "COUNT(*), SUM(e.value), MAX(e.value)"
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


def usage_for_windows(
    *, window_ids: Sequence[int], aggregations: dict[int, str]
) -> dict[int, dict[int, Decimal]]:
    """``{window_id: {metric_id: quantity}}`` for the priced metrics of each window's plan.
    ``aggregations`` maps metric id to its aggregation. Missing metrics had no events."""
    usage: dict[int, dict[int, Decimal]] = defaultdict(dict)
    if not window_ids:
        return usage
    ids = ",".join(str(int(i)) for i in window_ids)
    with connection.cursor() as cursor:
        cursor.execute(
            _WINDOW_USAGE_SQL.format(select=_PLAIN, ids=ids, aggregation="<> %s"), ["unique_count"]
        )
        for window_id, metric_id, count, total, peak in cursor.fetchall():
            usage[window_id][metric_id] = usage_quantity(
                aggregation=aggregations.get(metric_id, "count"),
                count=count,
                total=total,
                peak=peak,
            )
        if "unique_count" in aggregations.values():
            cursor.execute(
                _WINDOW_USAGE_SQL.format(select=_DISTINCT, ids=ids, aggregation="= %s"),
                ["unique_count"],
            )
            for window_id, metric_id, distinct in cursor.fetchall():
                usage[window_id][metric_id] = _decimal(distinct)
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
        )
        .values("metric_id")
        .annotate(
            count=Count("id"),
            total=Sum("value"),
            peak=Max("value"),
            distinct=Count("distinct_value", distinct=True),
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
