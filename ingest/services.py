"""Ingest write operations: metrics, the ingest pipeline, replay of rejections, retention."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import JSONField, Value
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ingest.exceptions import MetricExists, RejectionNotReplayable
from ingest.models import (
    Aggregation,
    Backfill,
    EventDuplicates,
    EventKey,
    IngestBatch,
    IngestRejection,
    InvoicedWatermark,
    Metric,
    Outcome,
    UsageEvent,
)
from ingest.partitions import month_of, partitions_ensure
from ingest.validation import (
    SURFACE_API,
    SURFACE_LAGO,
    SURFACE_OPENMETER,
    SURFACES,
    Item,
    extract_value,
    is_cloudevent,
    is_storable_text,
    lago_customer_ref,
    parse_item,
    storable_json,
    storable_text,
)
from neruba import audit
from neruba.errors import ValidationFailed
from neruba.metrics import (
    INGEST_BATCH_SIZE,
    INGEST_ITEMS,
    INGEST_LATENCY,
    INGEST_REJECTIONS,
    REPLAYS,
)
from neruba.models import ApiKey, Customer


def metric_create(
    *, code: str, name: str, aggregation: str, field: str = "", actor: audit.Actor = None
) -> Metric:
    if aggregation not in Aggregation.values:
        raise ValidationFailed(details={"aggregation": f"one of {', '.join(Aggregation.values)}"})
    try:
        with transaction.atomic():
            metric = Metric.objects.create(
                code=code, name=name, aggregation=aggregation, field=field
            )
            audit.record(
                actor=actor,
                action="metric.create",
                target=metric,
                after={"code": code, "aggregation": aggregation, "field": field},
            )
    except IntegrityError:
        raise MetricExists(details={"code": code}) from None
    return metric


# Forward, never back: the WHERE leaves a watermark that is already further untouched.
_WATERMARK_UPSERT = """
INSERT INTO {table} (customer_id, invoiced_through, updated_at) {rows}
ON CONFLICT (customer_id) DO UPDATE SET
  invoiced_through = EXCLUDED.invoiced_through, updated_at = EXCLUDED.updated_at
WHERE {table}.invoiced_through < EXCLUDED.invoiced_through
"""


def _upsert_pairs(template: str, pairs: dict[int, Any], value_type: str, now: datetime) -> None:
    """Runs ``template`` (an ``INSERT … {rows} ON CONFLICT …`` with columns key, value, time)
    for ``pairs`` in one statement, keys sorted so concurrent writers lock rows in one order.
    On PostgreSQL the rows are two array parameters, whatever their number."""
    rows = sorted(pairs.items())
    params: list[Any]
    if connection.vendor == "postgresql":
        sql = template.format(
            rows=f"SELECT k, v, %s FROM unnest(%s::bigint[], %s::{value_type}[]) AS u(k, v) "  # noqa: S608 - value_type is ours
            "ORDER BY k"
        )
        params = [now, [k for k, _ in rows], [v for _, v in rows]]
    else:
        sql = template.format(rows="VALUES " + ",".join(["(%s, %s, %s)"] * len(rows)))
        adapt = connection.ops.adapt_datetimefield_value
        params = [
            value
            for k, v in rows
            for value in (k, adapt(v) if isinstance(v, datetime) else v, adapt(now))
        ]
    with _cursor() as cursor:
        cursor.execute(sql, params)


def invoiced_watermarks_advance(*, through: dict[int, datetime]) -> None:
    """Moves each customer's watermark forward to ``through[customer_id]`` (never back), in one
    statement. Called by billing in the invoice's transaction, so an event ingested after the
    commit for an invoiced period is flagged late."""
    if through:
        table = InvoicedWatermark._meta.db_table
        template = _WATERMARK_UPSERT.replace("{table}", table)
        _upsert_pairs(template, through, "timestamptz", timezone.now())


def invoiced_watermark_advance(*, customer_id: int, through: datetime) -> None:
    """One customer's watermark forward (never back)."""
    invoiced_watermarks_advance(through={customer_id: through})


# --- ingest ----------------------------------------------------------------------------------

STATUS_BY_OUTCOME = {
    Outcome.ACCEPTED: 201,
    Outcome.REPLAY: 201,
    Outcome.DUPLICATE: 200,
    Outcome.CONFLICT: 409,
    Outcome.FAILED: 422,
}
_COLUMNS = (
    "idempotency_key",
    "customer_id",
    "metric_id",
    "timestamp",
    "value",
    "distinct_value",
    "properties",
    "payload_hash",
    "received_at",
    "source",
    "late",
    "rejection_id",
    "batch_id",  # last: filled in by SQL, see _insert_batch_and_events
)
_BATCH_COLUMNS = (
    "received_at",
    "api_key_id",
    "api_key_prefix",
    "source",
    "request_id",
    "size",
    "bytes",
    *Outcome.values,
    "duration_ms",
)
# Rows per INSERT statement on SQLite: well under its 32,766 parameters.
_CHUNK = 1000


@dataclass
class IngestResult:
    batch_id: int
    counts: dict[str, int]
    results: list[dict[str, Any]]
    # The instant an item without a timestamp was given (compatible surfaces only).
    received_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "counts": self.counts, "results": self.results}


@dataclass(frozen=True)
class Limits:
    max_age: timedelta
    max_skew: timedelta
    max_properties_bytes: int

    @classmethod
    def from_settings(cls) -> Limits:
        conf = settings.NERUBA
        return cls(
            max_age=timedelta(seconds=conf["NERUBA_INGEST_MAX_AGE"]),
            max_skew=timedelta(seconds=conf["NERUBA_INGEST_MAX_SKEW"]),
            max_properties_bytes=conf["NERUBA_INGEST_MAX_PROPERTIES_BYTES"],
        )


def _result(item: Item, outcome: str, event_id: int | None, error: Any = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "index": item.index,
        "idempotency_key": item.key,
        "outcome": outcome,
        "event_id": event_id,
    }
    if error is not None:
        result["error"] = {"code": error[0], "message": error[1], "details": error[2]}
    return result


def _cursor() -> Any:
    """On PostgreSQL a server-side-binding psycopg cursor on Django's connection (same
    transaction): Django's default client-side binding renders every parameter into the SQL
    text in Python, which costs more than the round trip for a single event."""
    if connection.vendor != "postgresql":
        return connection.cursor()
    import psycopg

    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


# PostgreSQL: the rows travel as one JSON array parameter, unpacked by the server. The
# statement text stays short and the same whatever the batch size, so psycopg neither re-parses
# ~14,000 placeholders per batch nor fails to reuse the prepared statement; and json.dumps (in
# C) encodes a thousand rows several times faster than psycopg adapts nine arrays element by
# element in Python. Rows are inserted in the order given (sorted by key: see below).
_PG_SOURCE_MANY = (
    "SELECT r->>0 AS k, (r->>1)::bigint AS c, (r->>2)::bigint AS m, (r->>3)::timestamptz AS t, "
    "(r->>4)::numeric AS v, r->>5 AS d, (r->>6)::jsonb AS p, r->>7 AS h, (r->>8)::boolean AS l, "
    "u.n FROM json_array_elements(%s::json) WITH ORDINALITY AS u(r, n)"
)
# One event: scalar parameters are cheaper to adapt than a JSON document.
_PG_SOURCE_ONE = (
    "SELECT %s::varchar AS k, %s::bigint AS c, %s::bigint AS m, %s::timestamptz AS t, "
    "%s::numeric AS v, %s::varchar AS d, %s::jsonb AS p, %s::varchar AS h, %s::boolean AS l, "
    "1 AS n"
)
# Batch row, events and duplicate counters in one statement.
# - ``ins`` stores the new keys. ON CONFLICT DO NOTHING: a key already taken is not touched.
# - ``old`` finds, among the keys ``ins`` did not store, those stored before this statement
#   with the same payload: duplicates. (It reads the statement's snapshot, so it could not see
#   this statement's own inserts anyway; leaving the inserted keys out first saves a new batch
#   an index probe per event.)
# - ``cnt`` bumps their counters in EventDuplicates (a narrow row, not the event). It reads
#   ``old``, which reads all of ``ins``, so it runs after the inserts, in event id order:
#   overlapping requests take their locks in one order, keys first (by key), then counters.
# - A key stored with another payload (a conflict), or one a concurrent request committed after
#   our snapshot, is in neither list; those items are settled afterwards.
# - The batch row takes its id from the sequence up front, so the events can carry it; its
#   counts move the duplicates from the stored outcome to ``duplicate`` by the given factors
#   (zero when the counts are settled afterwards anyway).
# Only an autocommitted batch (the fast path) has ``old`` and ``cnt``. A single event leaves
# them out: almost every single event is new, and the join and counter upsert would cost each
# of them (a single duplicate is settled afterwards, like every item of a batch that runs in a
# transaction: see _insert_batch_and_events).
_PG_INGEST = (
    "WITH bid AS (SELECT nextval(pg_get_serial_sequence('{batches}', 'id')) AS id), "
    "src AS ({source}), "
    "reg AS (INSERT INTO {keys} (idempotency_key, event_id, timestamp, payload_hash) "
    "SELECT k, nextval('{events}_id_seq'), t, h FROM src ORDER BY n "
    "ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key, event_id), "
    "ins AS (INSERT INTO {events} (id, {columns}) "
    "SELECT reg.event_id, k, c, m, t, v, d, p, h, %s::timestamptz, %s::varchar, l, %s::bigint, "
    "(SELECT id FROM bid) FROM src JOIN reg ON reg.idempotency_key = src.k ORDER BY n "
    "RETURNING id, idempotency_key), "
    "{duplicates}"
    "b AS (INSERT INTO {batches} (id, {batch_columns}) "
    "SELECT bid.id, {batch_values} FROM bid, dup) "
    "SELECT id, idempotency_key, true FROM ins {old_rows}"
    "UNION ALL SELECT id, NULL, NULL FROM bid"
)
_PG_DUPLICATES = (
    "old AS (SELECT e.event_id AS id, e.idempotency_key FROM src "
    "JOIN {keys} e ON e.idempotency_key = src.k AND e.payload_hash = src.h "
    "WHERE NOT EXISTS (SELECT 1 FROM reg WHERE reg.idempotency_key = src.k)), "
    "cnt AS (INSERT INTO {counters} (event_id, count, last_at) "
    "SELECT id, 1, %s::timestamptz FROM old ORDER BY id "
    "ON CONFLICT (event_id) DO UPDATE SET count = {counters}.count + 1, "
    "last_at = EXCLUDED.last_at), "
    "dup AS (SELECT count(*) AS n FROM old), "
)


def _pg_source_params(rows: list[tuple[Any, ...]]) -> list[Any]:
    if len(rows) == 1:
        row = rows[0]
        return [*row[:8], row[10]]
    encoded = json.dumps(
        [
            [
                row[0],
                row[1],
                row[2],
                row[3].isoformat(),
                None if row[4] is None else str(row[4]),  # exact: numeric parses the digits
                row[5],
                row[6],
                row[7],
                row[10],
            ]
            for row in rows
        ],
        separators=(",", ":"),
    )
    return [encoded]


def _insert_batch_and_events(
    batch_values: Sequence[Any],
    rows: list[tuple[Any, ...]],
    shift: tuple[dict[str, int], str] | None = None,
) -> tuple[int, dict[str, int], dict[str, int]]:
    """Writes the batch row and ``INSERT … ON CONFLICT (idempotency_key) … RETURNING`` the
    events: claiming a key and storing its event are the same write, so a failed transaction
    leaves no key behind. Returns the batch id, the ids of the keys stored and the ids of the
    keys found stored with the same payload, whose duplicate counters the statement already
    bumped (see _PG_INGEST; only a PostgreSQL batch given ``shift``, i.e. the autocommitted fast
    path, does this). ``shift`` (the predicted counts and the stored outcome) makes the batch
    row's counts move those duplicates out of the stored outcome.

    On PostgreSQL the batch row and the events go out as one data-modifying CTE, which saves
    a round trip per request (single events are round-trip bound). Rows arrive sorted by key:
    two concurrent batches with overlapping keys wait on each other's keys in the same order
    and cannot deadlock."""
    # Table and column names are ours, never input; only values travel as parameters.
    batch_sql = (
        f"INSERT INTO {IngestBatch._meta.db_table} ({','.join(_BATCH_COLUMNS)}) "  # noqa: S608
        f"VALUES ({','.join(['%s'] * len(_BATCH_COLUMNS))})"
    )
    stored: dict[str, int] = {}
    counted: dict[str, int] = {}
    if connection.vendor == "postgresql":
        with _cursor() as cursor:
            if not rows:
                cursor.execute(batch_sql + " RETURNING id", list(batch_values))
                return int(cursor.fetchone()[0]), stored, counted
            # A month this process has not seen gets its partition before the INSERT.
            partitions_ensure(months={month_of(row[3]) for row in rows})
            first = rows[0]  # received_at, source and rejection are the same for every row
            event_params = [*_pg_source_params(rows), first[8], first[9], first[11]]
            if len(rows) == 1:
                sql = _PG_INGEST_ONE
            elif shift is None:
                # Inside a transaction that goes on to _settle, which counts every duplicate in
                # one ordered statement. Counting some here too would lock counters in two
                # statements, out of one order, and could deadlock with a concurrent batch.
                sql = _PG_INGEST_MANY
            else:
                sql = _PG_INGEST_MANY_COUNTING
                event_params.append(first[8])  # the duplicates' last_at
            factors = {name: 0 for name in Outcome.values}
            if shift is not None:
                factors[shift[1]] = -1
                factors[Outcome.DUPLICATE] = 1
            batch_params: list[Any] = list(batch_values[:7])
            for position, name in enumerate(Outcome.values):
                batch_params += [batch_values[7 + position], factors[name]]
            batch_params.append(batch_values[-1])
            cursor.execute(sql, [*event_params, *batch_params], prepare=True)
            batch_id = 0
            for pk, key, fresh in cursor.fetchall():
                if key is None:
                    batch_id = pk
                elif fresh:
                    stored[key] = pk
                else:
                    counted[key] = pk
            return batch_id, stored, counted

    marks = ",".join(["%s"] * (len(_COLUMNS) - 1))
    head = f"INSERT INTO {UsageEvent._meta.db_table} ({','.join(_COLUMNS)}) VALUES "  # noqa: S608
    tail = " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, idempotency_key"
    with connection.cursor() as cursor:
        cursor.execute(batch_sql + " RETURNING id", list(batch_values))
        batch_id = int(cursor.fetchone()[0])
        one = f"({marks},{batch_id})"
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            cursor.execute(
                head + ",".join([one] * len(chunk)) + tail,
                [value for row in chunk for value in row],
            )
            fresh = dict((key, pk) for pk, key in cursor.fetchall())
            stored.update(fresh)
            # SQLite's plain table keeps keys unique itself; the registry mirrors it (same
            # transaction) so lookups read the same table on both engines.
            registered = [
                value
                for row in chunk
                if row[0] in fresh
                for value in (row[0], fresh[row[0]], row[3], row[7])
            ]
            if registered:
                cursor.execute(
                    f"INSERT INTO {EventKey._meta.db_table} "  # noqa: S608
                    "(idempotency_key, event_id, timestamp, payload_hash) VALUES "
                    + ",".join(["(%s,%s,%s,%s)"] * (len(registered) // 4)),
                    registered,
                )
    return batch_id, stored, counted


def _pg_ingest_sql(source: str, *, duplicates: bool) -> str:
    counts = ", ".join("%s::integer + %s::integer * dup.n" for _ in Outcome.values)
    events, counters = UsageEvent._meta.db_table, EventDuplicates._meta.db_table
    keys = EventKey._meta.db_table
    return _PG_INGEST.format(
        batches=IngestBatch._meta.db_table,
        events=events,
        keys=keys,
        columns=",".join(_COLUMNS),
        source=source,
        duplicates=_PG_DUPLICATES.format(keys=keys, counters=counters)
        if duplicates
        else "dup AS (SELECT 0 AS n), ",
        batch_columns=",".join(_BATCH_COLUMNS),
        batch_values=f"%s, %s, %s, %s, %s, %s, %s, {counts}, %s",
        old_rows="UNION ALL SELECT id, idempotency_key, false FROM old " if duplicates else "",
    )


_PG_INGEST_ONE = _pg_ingest_sql(_PG_SOURCE_ONE, duplicates=False)
_PG_INGEST_MANY = _pg_ingest_sql(_PG_SOURCE_MANY, duplicates=False)
_PG_INGEST_MANY_COUNTING = _pg_ingest_sql(_PG_SOURCE_MANY, duplicates=True)


def _stored_rows(keys: set[str]) -> list[tuple[int, str, str]]:
    """(id, key, payload hash) of the stored events among ``keys``, from the key registry
    (which outlives archived months). A fresh statement, so in READ COMMITTED it sees keys a
    concurrent request committed while our INSERT waited."""
    table = EventKey._meta.db_table
    with _cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"SELECT event_id, idempotency_key, payload_hash FROM {table} "  # noqa: S608
                "WHERE idempotency_key = ANY(%s)",
                [list(keys)],
            )
        else:
            cursor.execute(
                f"SELECT event_id, idempotency_key, payload_hash FROM {table} "  # noqa: S608
                f"WHERE idempotency_key IN ({_marks(len(keys))})",
                list(keys),
            )
        return cursor.fetchall()


_COUNTERS_UPSERT = """
INSERT INTO {table} (event_id, count, last_at) {rows}
ON CONFLICT (event_id) DO UPDATE SET
  count = {table}.count + EXCLUDED.count, last_at = EXCLUDED.last_at
"""


def _count_duplicates(hits: Counter[int], now: datetime) -> None:
    """Adds ``hits`` (event id → times seen again) to the events' duplicate counters, in event
    id order, so concurrent batches hitting the same originals queue instead of deadlocking."""
    template = _COUNTERS_UPSERT.replace("{table}", EventDuplicates._meta.db_table)
    _upsert_pairs(template, dict(hits), "integer", now)


def _differing_fields(item: Item, original: tuple[Any, ...]) -> list[str]:
    _, customer, metric, timestamp, properties = original
    differing = []
    if item.customer != customer:
        differing.append("customer")
    if item.metric != metric:
        differing.append("metric")
    if item.timestamp is None or item.timestamp != timestamp:
        differing.append("timestamp")
    if item.properties != properties:
        differing.append("properties")
    return differing


# --- customer references owned by other apps ---------------------------------------------------
# A Lago event names a subscription (its external id), which billing owns; ingest may not import
# billing, so billing registers a resolver at start-up (BillingConfig.ready): external ids in,
# {external id: the customer's external id} out for those that name a subscription.
CustomerRefResolver = Callable[[set[str]], dict[str, str]]
_customer_ref_resolvers: list[CustomerRefResolver] = []


def customer_ref_resolver_register(*, resolver: CustomerRefResolver) -> None:
    if resolver not in _customer_ref_resolvers:
        _customer_ref_resolvers.append(resolver)


def _customer_aliases(payloads: Sequence[Any]) -> dict[str, str]:
    """One lookup per registered resolver for a Lago request's subscription references; a
    reference no resolver knows stays as it is and is looked up as a customer's external id."""
    # Only references an item could pass with: PostgreSQL refuses NUL in a text comparison
    # (those items fail as invalid_field later, each on its own).
    refs = {
        ref
        for raw in payloads
        if isinstance(ref := lago_customer_ref(raw), str) and ref and is_storable_text(ref)
    }
    aliases: dict[str, str] = {}
    for resolver in _customer_ref_resolvers:
        if refs:
            aliases.update(resolver(refs - aliases.keys()))
    return aliases


def events_ingest(
    *,
    payloads: Sequence[Any],
    api_key: ApiKey | None,
    cloudevents: bool = False,
    source: str | None = None,
    body_bytes: int = 0,
    request_id: str = "",
    replay_of: IngestRejection | None = None,
    window_now: datetime | None = None,
    backfill: Backfill | None = None,
    surface: str = SURFACE_API,
) -> IngestResult:
    """Ingests one request's items; every item gets an outcome, none fails the batch.

    Steps: (1) parse each item without the database; (2) look customers (with their invoiced
    watermark) and metrics up once for the batch; (3) in one transaction: the batch row, one
    set-based INSERT … ON CONFLICT for the valid items (on PostgreSQL it also bumps the
    counter of a key stored with the same payload), one SELECT of the stored rows for every key
    still unexplained (duplicate or conflict by payload hash), the remaining duplicate counters,
    the rejections, and the batch's counts. Nothing is written if the transaction fails, so a
    retry never meets a half-claimed key.

    ``replay_of`` re-submits a rejection's raw payload: a stored item has the outcome
    ``replay`` and links to the rejection, and a failure updates that rejection instead of
    adding one. ``window_now`` is the instant the timestamp window is measured from (the
    original receipt for a replay: the event arrived in time, the cause was ours).

    ``backfill`` (an open backfill, checked and locked by ``ingest.backfills.backfill_ingest``,
    which calls this inside its transaction) replaces the timestamp window with the backfill's
    ``[starts_at, ends_at)``, outside of which an item fails with ``outside_backfill_window``;
    the batch is linked to the backfill, whose counts add up from its batches.

    ``surface`` is how the items are written (``api``: ours or CloudEvents; ``openmeter``;
    ``lago``): it changes only the parsing of each item. ``source`` (the batch's and the
    events', default the surface) says where the request came through; rejections keep the
    surface so a replay parses their raw payload the same way."""
    if surface not in SURFACES:
        raise ValueError(f"unknown ingest surface {surface!r}")
    source = source or surface
    started = time.perf_counter()
    if backfill is not None:
        source = "backfill"
    now = timezone.now()
    stored_outcome = Outcome.REPLAY if replay_of is not None else Outcome.ACCEPTED
    prefix = api_key.prefix if api_key is not None else ""
    received = window_now or now
    aliases = _customer_aliases(payloads) if surface == SURFACE_LAGO else None
    items = [
        parse_item(
            i, raw, cloudevent=cloudevents, surface=surface, received=received, aliases=aliases
        )
        for i, raw in enumerate(payloads)
    ]
    candidates = _prepare(
        items,
        now=now,
        window_now=window_now or now,
        source=source,
        replay_of=replay_of,
        backfill=backfill,
    )

    counts = dict.fromkeys(Outcome.values, 0)
    # When every item is a candidate the batch row is written with its final counts unless
    # some key turns out to be taken; then the counts are corrected below.
    predicted = dict(counts)
    if len(candidates) == len(items):
        predicted[stored_outcome] = len(items)
    batch_values = [
        connection.ops.adapt_datetimefield_value(now),
        api_key.pk if api_key is not None else None,
        prefix,
        source,
        request_id[:64],
        len(items),
        body_bytes,
        *predicted.values(),
        (time.perf_counter() - started) * 1000,
    ]
    rows = [row for _, (_, row) in sorted(candidates.items())]
    # Fast path: on PostgreSQL outside a caller's transaction, a batch of valid items that are
    # all new keys or duplicates is one autocommitted statement (batch row and events together).
    # A single statement is atomic, so claim and store still cannot come apart, and BEGIN and
    # COMMIT round trips are saved. Anything else (a conflict, a failure) is settled in one
    # transaction after.
    fast = (
        connection.vendor == "postgresql"
        and not connection.in_atomic_block
        and replay_of is None
        and backfill is None
        and len(candidates) == len(items)
        and len(rows) > 0
    )
    if fast:
        batch_id, inserted, counted = _insert_batch_and_events(
            batch_values, rows, shift=(predicted, stored_outcome)
        )
        if len(inserted) + len(counted) == len(items):
            # Every item new or a duplicate: the batch row already holds these counts.
            counts = dict(predicted)
            counts[stored_outcome] -= len(counted)
            counts[Outcome.DUPLICATE] += len(counted)
            results = [
                _result(item, stored_outcome, inserted[item.key])  # type: ignore[index]
                if item.key in inserted
                else _result(item, Outcome.DUPLICATE, counted[item.key])  # type: ignore[index]
                for item in items
            ]
            _observe(len(items), counts, results, time.perf_counter() - started, source)
            return IngestResult(
                batch_id=batch_id, counts=counts, results=results, received_at=received
            )
    with transaction.atomic():
        if not fast:
            batch_id, inserted, counted = _insert_batch_and_events(batch_values, rows)
        if backfill is not None:
            IngestBatch.objects.filter(pk=batch_id).update(backfill=backfill)
        counts, results = _settle(
            items,
            candidates,
            inserted,
            counted,
            batch_id,
            now,
            prefix,
            stored_outcome,
            replay_of,
            surface=surface,
        )
        # After the fast path the batch row's counts were shifted for the duplicates.
        if fast or counts != predicted:
            _batch_counts(batch_id, counts, started)

    _observe(len(items), counts, results, time.perf_counter() - started, source)
    return IngestResult(batch_id=batch_id, counts=counts, results=results, received_at=received)


def _batch_counts(batch_id: int, counts: dict[str, int], started: float) -> None:
    duration_ms = (time.perf_counter() - started) * 1000
    IngestBatch.objects.filter(pk=batch_id).update(duration_ms=duration_ms, **counts)


def _settle(
    items: list[Item],
    candidates: dict[str, tuple[Item, tuple[Any, ...]]],
    inserted: dict[str, int],
    counted: dict[str, int],
    batch_id: int,
    now: datetime,
    prefix: str,
    stored_outcome: str,
    replay_of: IngestRejection | None,
    *,
    surface: str = SURFACE_API,
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Outcome of every item once the INSERT ran, with the writes that follow from it: the
    duplicate counters (but for the ``counted`` keys, bumped by the INSERT itself), the
    rejections. Runs inside the caller's transaction."""
    counts = dict.fromkeys(Outcome.values, 0)
    results: list[dict[str, Any]] = []
    rejections: list[IngestRejection] = []
    batch = IngestBatch(pk=batch_id, received_at=now)
    # Every other hashed item with a key meets the row that holds its key: ours from this
    # batch, or one stored earlier (by another request, possibly a moment ago).
    known: dict[str, tuple[int, str]] = {
        key: (inserted[key], candidates[key][0].payload_hash) for key in inserted
    }
    known.update((key, (pk, candidates[key][0].payload_hash)) for key, pk in counted.items())
    wanted = {
        it.key for it in items if it.key is not None and it.payload_hash and it.key not in known
    }
    if wanted:
        known.update((key, (pk, digest)) for pk, key, digest in _stored_rows(wanted))

    duplicates: Counter[int] = Counter()
    conflicts: list[tuple[Item, int]] = []
    for item in items:
        key = item.key
        if key is not None and key in inserted and candidates[key][0] is item:
            counts[stored_outcome] += 1
            results.append(_result(item, stored_outcome, inserted[key]))
            continue
        if key is not None and key in counted and candidates[key][0] is item:
            counts[Outcome.DUPLICATE] += 1
            results.append(_result(item, Outcome.DUPLICATE, counted[key]))
            continue
        stored = known.get(key) if (key is not None and item.payload_hash) else None
        if stored is not None:
            if stored[1] == item.payload_hash:
                counts[Outcome.DUPLICATE] += 1
                duplicates[stored[0]] += 1
                results.append(_result(item, Outcome.DUPLICATE, stored[0]))
            else:
                conflicts.append((item, stored[0]))
                results.append({})  # filled in once the originals are read
            continue
        if item.error is None:
            # Valid, not inserted, and no row holds the key: a concurrent writer claimed it
            # and rolled back after our INSERT looked. Rare; the client should retry.
            item.fail("retry", "The key was being written concurrently; retry the item.")
        counts[Outcome.FAILED] += 1
        results.append(_result(item, Outcome.FAILED, None, item.error))
        rejections.append(_rejection(item, batch, prefix, Outcome.FAILED, surface=surface))

    if duplicates:
        _count_duplicates(duplicates, now)
    if conflicts:
        originals = {
            row[0]: row
            for row in UsageEvent.objects.filter(id__in={pk for _, pk in conflicts}).values_list(
                "id", "customer__external_id", "metric__code", "timestamp", "properties"
            )
        }
        positions = [i for i, r in enumerate(results) if not r]
        for position, (item, original_id) in zip(positions, conflicts, strict=True):
            original = originals.get(original_id)
            # An archived original is no longer in the live table; its key still is refused.
            differing = [] if original is None else _differing_fields(item, original)
            where = "" if original is not None else ", archived"
            error = (
                "conflict",
                f"The key is already stored with a different payload (event {original_id}{where}).",
                {"original_event_id": original_id, "differing_fields": differing},
            )
            item.error = error
            counts[Outcome.CONFLICT] += 1
            results[position] = _result(item, Outcome.CONFLICT, original_id, error)
            rejection = _rejection(item, batch, prefix, Outcome.CONFLICT, surface=surface)
            rejection.original_event_id = original_id
            rejection.differing_fields = differing
            rejections.append(rejection)

    if replay_of is not None:
        rejections = []  # the replayed rejection is updated by rejection_replay instead
    elif rejections:
        IngestRejection.objects.bulk_create(rejections)
    return counts, results


def _marks(n: int) -> str:
    return ",".join(["%s"] * n)


def _lookup(
    customer_refs: set[str], metric_refs: set[str]
) -> tuple[dict[str, tuple[int, datetime | None]], dict[str, tuple[int, str, str]]]:
    """Customers (with their invoiced watermark) and metrics for a batch, in one statement:
    single events are bound by round trips to the database."""
    customers: dict[str, tuple[int, datetime | None]] = {}
    metrics: dict[str, tuple[int, str, str]] = {}
    parts, params = [], []
    if customer_refs:
        parts.append(
            "SELECT 'c', c.external_id, c.id, w.invoiced_through, NULL, NULL "  # noqa: S608
            f"FROM {Customer._meta.db_table} c LEFT JOIN {InvoicedWatermark._meta.db_table} w "
            f"ON w.customer_id = c.id WHERE c.external_id IN ({_marks(len(customer_refs))})"
        )
        params.extend(customer_refs)
    if metric_refs:
        parts.append(
            "SELECT 'm', m.code, m.id, NULL, m.aggregation, m.field "  # noqa: S608
            f"FROM {Metric._meta.db_table} m WHERE m.code IN ({_marks(len(metric_refs))})"
        )
        params.extend(metric_refs)
    if not parts:
        return customers, metrics
    with _cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), params)
        rows = cursor.fetchall()
    for kind, ref, pk, through, aggregation, field in rows:
        if kind == "c":
            # SQLite hands raw SQL datetimes back naive (UTC) or as text.
            if isinstance(through, str):
                through = parse_datetime(through)
            if through is not None and timezone.is_naive(through):
                through = timezone.make_aware(through, UTC)
            customers[ref] = (pk, through)
        else:
            metrics[ref] = (pk, aggregation, field)
    return customers, metrics


def _prepare(
    items: list[Item],
    *,
    now: datetime,
    window_now: datetime,
    source: str,
    replay_of: IngestRejection | None,
    backfill: Backfill | None = None,
) -> dict[str, tuple[Item, tuple[Any, ...]]]:
    """The checks that need the database, with one lookup each for customers (with their
    invoiced watermark) and metrics. Marks failing items and returns, per key, the first valid
    item and its row (in ``_COLUMNS`` order, without the batch id)."""
    limits = Limits.from_settings()
    oldest, newest = window_now - limits.max_age, window_now + limits.max_skew
    if backfill is not None:
        oldest, newest = backfill.starts_at, backfill.ends_at

    customers, metrics = _lookup(
        {it.customer for it in items if it.error is None},
        {it.metric for it in items if it.error is None},
    )

    # Semantic checks; the first valid item per key is the one offered for insert.
    adapt_dt = connection.ops.adapt_datetimefield_value
    received = adapt_dt(now)
    max_props = limits.max_properties_bytes
    candidates: dict[str, tuple[Item, tuple[Any, ...]]] = {}
    for item in items:
        if item.error is not None:
            continue
        timestamp = item.timestamp
        assert timestamp is not None
        if backfill is not None and not (oldest <= timestamp < newest):
            item.fail(
                "outside_backfill_window",
                f"The timestamp is outside backfill {backfill.pk}'s window "
                f"[{oldest.isoformat()}, {newest.isoformat()}).",
                backfill_id=backfill.pk,
                starts_at=oldest.isoformat(),
                ends_at=newest.isoformat(),
            )
            continue
        if timestamp < oldest:
            item.fail(
                "timestamp_too_old",
                f"The timestamp is older than {limits.max_age.days} days.",
                oldest=oldest.isoformat(),
            )
            continue
        if timestamp > newest:
            item.fail(
                "timestamp_in_future",
                f"The timestamp is more than {int(limits.max_skew.total_seconds())} s ahead.",
                newest=newest.isoformat(),
            )
            continue
        if len(item.props_json) > max_props // 4 and len(item.props_json.encode()) > max_props:
            item.fail(
                "properties_too_large",
                f"`properties` is larger than {max_props} bytes.",
                max_bytes=max_props,
            )
            continue
        customer = customers.get(item.customer)
        if customer is None:
            item.fail("unknown_customer", f"No customer {item.customer!r}.")
            continue
        metric = metrics.get(item.metric)
        if metric is None:
            item.fail("unknown_metric", f"No metric {item.metric!r}.")
            continue
        try:
            value, distinct = extract_value(metric[1], metric[2], item.properties)
        except ValueError as exc:
            item.fail("invalid_value", str(exc), metric=item.metric)
            continue
        if item.key in candidates:
            continue
        through = customer[1]
        candidates[item.key] = (  # type: ignore[index]
            item,
            (
                item.key,
                customer[0],
                metric[0],
                adapt_dt(timestamp),
                value,
                distinct,
                item.props_json,
                item.payload_hash,
                received,
                source,
                through is not None and timestamp < through,
                replay_of.pk if replay_of is not None else None,
            ),
        )

    return candidates


def _rejection(
    item: Item, batch: IngestBatch, prefix: str, outcome: str, *, surface: str = SURFACE_API
) -> IngestRejection:
    code, message, _details = item.error or ("failed", "", {})
    raw = item.raw
    customer = metric = ""
    if isinstance(raw, dict) and surface == SURFACE_LAGO:
        customer, metric = lago_customer_ref(raw), raw.get("code")
    elif isinstance(raw, dict):
        ce = surface == SURFACE_OPENMETER or is_cloudevent(raw)
        customer, metric = (
            raw.get("subject" if ce else "customer"),
            raw.get("type" if ce else "metric"),
        )
    return IngestRejection(
        batch=batch,
        created_at=batch.received_at,
        outcome=outcome,
        idempotency_key=(item.key or "")[:255],
        customer_ref=storable_text(customer, 200),
        metric_ref=storable_text(metric, 100),
        api_key_prefix=prefix,
        error_code=code,
        error_message=message,
        surface=surface,
        # A JSON null item is kept as JSON null, not as a missing payload.
        raw_payload=storable_json(raw) if raw is not None else Value(None, JSONField()),
    )


def _observe(
    size: int,
    counts: dict[str, int],
    results: list[dict[str, Any]],
    seconds: float,
    surface: str = SURFACE_API,
) -> None:
    """Counts one request in the ingest metrics, labelled by the batch's source (the surface it
    came through: api, openmeter, lago; or replay)."""
    INGEST_BATCH_SIZE.labels(surface).observe(size)
    INGEST_LATENCY.labels(surface).observe(seconds)
    for outcome, n in counts.items():
        if n:
            INGEST_ITEMS.labels(outcome, surface).inc(n)
    if counts[Outcome.FAILED] or counts[Outcome.CONFLICT]:
        codes = Counter(r["error"]["code"] for r in results if "error" in r)
        for code, n in codes.items():
            INGEST_REJECTIONS.labels(code, surface).inc(n)


# --- replay ----------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    rejection_id: int
    outcome: str  # replay, duplicate, conflict or failed
    event_id: int | None
    error: dict[str, Any] | None
    dry_run: bool

    def describe(self) -> str:
        verb = "would be" if self.dry_run else "was"
        if self.outcome == Outcome.REPLAY:
            stored = "stored" if self.dry_run else f"stored as event {self.event_id}"
            return f"{verb} {stored}"
        if self.outcome == Outcome.DUPLICATE:
            return f"{verb} a duplicate of event {self.event_id}: nothing left to store"
        assert self.error is not None
        return f"{'would fail' if self.dry_run else 'still fails'}: {self.error['code']} — " + str(
            self.error["message"]
        )


def _replay_preview(rejection: IngestRejection) -> ReplayResult:
    """What a replay would do now, without writing anything."""
    raw = rejection.raw_payload
    surface = rejection.surface
    item = parse_item(
        0,
        raw,
        cloudevent=is_cloudevent(raw),
        surface=surface,
        received=rejection.created_at,
        aliases=_customer_aliases([raw]) if surface == SURFACE_LAGO else None,
    )
    now = timezone.now()
    _prepare([item], now=now, window_now=rejection.created_at, source="replay", replay_of=None)
    if item.key is not None and item.payload_hash:
        existing = (
            EventKey.objects.filter(idempotency_key=item.key)
            .values_list("event_id", "payload_hash")
            .first()
        )
        if existing is not None:
            if existing[1] == item.payload_hash:
                return ReplayResult(rejection.pk, Outcome.DUPLICATE, existing[0], None, True)
            error = {
                "code": "conflict",
                "message": f"The key is already stored with a different payload "
                f"(event {existing[0]}).",
                "details": {"original_event_id": existing[0]},
            }
            return ReplayResult(rejection.pk, Outcome.CONFLICT, existing[0], error, True)
    if item.error is not None:
        code, message, details = item.error
        error = {"code": code, "message": message, "details": details}
        return ReplayResult(rejection.pk, Outcome.FAILED, None, error, True)
    return ReplayResult(rejection.pk, Outcome.REPLAY, None, None, True)


def rejection_replay(
    *, rejection: IngestRejection, actor: audit.Actor, reason: str, dry_run: bool = False
) -> ReplayResult:
    """Re-submits a rejection's raw payload through the ingest pipeline after its cause was
    fixed (the customer created, the metric added).

    Stored: outcome ``replay``, the event links to the rejection, which becomes ``replayed``.
    Already stored with the same payload: ``duplicate``, the rejection is closed as replayed.
    Still failing or conflicting: the rejection stays open with its new error. Every attempt
    counts in ``replay_attempts`` and is audited in the same transaction. The timestamp window
    is measured from the original receipt: the event arrived in time, the cause was ours.
    ``dry_run`` answers what would happen and writes nothing."""
    reason = reason.strip()
    if not reason and not dry_run:
        raise ValidationFailed("A reason is required.", details={"reason": "required"})
    if rejection.status == IngestRejection.Status.REPLAYED:
        raise RejectionNotReplayable(
            "This rejection was already replayed.", details={"rejection_id": rejection.pk}
        )
    if dry_run:
        return _replay_preview(rejection)
    with transaction.atomic():
        # The row lock makes two operators replaying the same rejection take turns; the
        # second sees it replayed.
        locked = IngestRejection.objects.select_for_update().get(pk=rejection.pk)
        if locked.status == IngestRejection.Status.REPLAYED:
            raise RejectionNotReplayable(
                "This rejection was already replayed.", details={"rejection_id": locked.pk}
            )
        before = {
            "status": locked.status,
            "outcome": locked.outcome,
            "error_code": locked.error_code,
            "replay_attempts": locked.replay_attempts,
        }
        raw = locked.raw_payload
        ingested = events_ingest(
            payloads=[raw],
            api_key=None,
            cloudevents=is_cloudevent(raw),
            source="replay",
            surface=locked.surface,
            replay_of=locked,
            window_now=locked.created_at,
        )
        answer = ingested.results[0]
        outcome, event_id, error = answer["outcome"], answer["event_id"], answer.get("error")
        locked.replay_attempts += 1
        locked.last_replayed_at = timezone.now()
        if outcome in (Outcome.REPLAY, Outcome.DUPLICATE):
            locked.status = IngestRejection.Status.REPLAYED
        else:
            assert error is not None
            locked.outcome = outcome
            locked.error_code = error["code"]
            locked.error_message = error["message"]
            locked.original_event_id = event_id if outcome == Outcome.CONFLICT else None
            locked.differing_fields = error["details"].get("differing_fields", [])
        locked.save()
        customer = None
        if event_id is not None:
            customer = UsageEvent.objects.get(pk=event_id).customer
        audit.record(
            actor=actor,
            action="ingest_rejection.replay",
            target=locked,
            reason=reason,
            before=before,
            after={
                "status": locked.status,
                "outcome": outcome,
                "error_code": locked.error_code if error else "",
                "event_id": event_id,
                "batch_id": ingested.batch_id,
                "replay_attempts": locked.replay_attempts,
            },
            customer=customer,
        )
    REPLAYS.labels("ingest", outcome).inc()
    rejection.refresh_from_db()
    return ReplayResult(locked.pk, outcome, event_id, error, False)


def rejection_dismiss(*, rejection: IngestRejection, actor: audit.Actor, reason: str) -> bool:
    """Closes an open rejection that will not be replayed (a conflict whose original stands, a
    too-old event, test traffic) so the backlog can reach zero. Nothing is deleted: the raw
    payload stays and a replay is still possible. Audited with the reason in the same
    transaction. Returns False when it was not open (nothing to do)."""
    reason = reason.strip()
    if not reason:
        raise ValidationFailed("A reason is required.", details={"reason": "required"})
    with transaction.atomic():
        locked = IngestRejection.objects.select_for_update().get(pk=rejection.pk)
        if locked.status != IngestRejection.Status.OPEN:
            return False
        locked.status = IngestRejection.Status.DISMISSED
        locked.save(update_fields=["status"])
        audit.record(
            actor=actor,
            action="ingest_rejection.dismiss",
            target=locked,
            reason=reason,
            before={"status": IngestRejection.Status.OPEN},
            after={
                "status": locked.status,
                "outcome": locked.outcome,
                "error_code": locked.error_code,
            },
            customer=Customer.objects.filter(external_id=locked.customer_ref).first()
            if locked.customer_ref
            else None,
        )
    rejection.refresh_from_db()
    return True


# --- retention -------------------------------------------------------------------------------


def ingest_prune(*, now: datetime) -> dict[str, int]:
    """Deletes ingest batches and rejections older than ``NERUBA_INGEST_RETENTION``. Events
    stay: their ``batch`` id has no constraint and remains as a trace. A rejection that was
    replayed keeps no link worth protecting (the event's ``rejection`` is set to NULL)."""
    cutoff = now - timedelta(seconds=settings.NERUBA["NERUBA_INGEST_RETENTION"])
    with transaction.atomic():
        rejections, _ = IngestRejection.objects.filter(created_at__lt=cutoff).delete()
        # An open backfill's counts and its close's drift check read its batches: they stay
        # until it is closed (its counts are frozen then).
        batches, _ = (
            IngestBatch.objects.filter(received_at__lt=cutoff)
            .exclude(backfill__status=Backfill.Status.OPEN)
            .delete()
        )
    return {"batches": batches, "rejections": rejections}
