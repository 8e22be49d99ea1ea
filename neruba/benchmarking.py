"""Shared pieces of the benchmarks: client processes that start together, percentiles, the
psycopg connection parameters of the configured database, a settled server between phases."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import connection, connections

_fork = multiprocessing.get_context("fork")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def psycopg_dsn() -> dict[str, Any]:
    db = settings.DATABASES["default"]
    params = {"dbname": db["NAME"], "user": db.get("USER") or None, "host": db.get("HOST")}
    if db.get("PORT"):
        params["port"] = db["PORT"]
    if db.get("PASSWORD"):
        params["password"] = db["PASSWORD"]
    return {k: v for k, v in params.items() if v}


def database_url() -> str:
    """The URL of the database this process uses (the test database under pytest), for a
    server the benchmark starts: its environment's DATABASE_URL may name another one."""
    from urllib.parse import quote

    dsn = psycopg_dsn()
    auth = quote(dsn.get("user", ""))
    if dsn.get("password"):
        auth += ":" + quote(dsn["password"])
    host = dsn.get("host", "localhost") + (f":{dsn['port']}" if dsn.get("port") else "")
    return f"postgres://{auth + '@' if auth else ''}{host}/{dsn['dbname']}"


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def run_clients(target: Any, shares: list[Any]) -> tuple[float, list[Any]]:
    """Runs ``target(share, queue)`` in one process per share; all start together. Returns the
    wall time from the start signal to the last finish, and each process's result."""
    connections.close_all()
    go = _fork.Event()
    queue = _fork.Queue()
    procs = [_fork.Process(target=target, args=(share, go, queue)) for share in shares]
    for proc in procs:
        proc.start()
    time.sleep(0.2)  # let every client connect before the clock starts
    started = time.perf_counter()
    go.set()
    results = [queue.get(timeout=600) for _ in procs]
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.join(timeout=60)
    return elapsed, results


def server_settle(*tables: str) -> None:
    """Puts PostgreSQL in the same state before each timed phase: the autovacuum and analyze
    that the previous phase's writes would trigger are done now (not inside the next
    measurement), and dirty pages are flushed. Every phase pays for its own writes, not for
    the previous phase's clean-up."""
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"VACUUM ANALYZE {connection.ops.quote_name(table)}")
        cursor.execute("CHECKPOINT")
