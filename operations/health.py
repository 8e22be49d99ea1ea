"""Readiness checks. Each returns (ok, detail) and never raises.

``/readyz`` answers for *this* process: ``not_ready`` (503) only when a check it needs to serve
fails (database, migrations, broker, settings). The scheduler heartbeat is another process's
health: stale or missing it makes readiness ``degraded`` (200, the check false with its
detail), an alert and a failed ``smoke``, never a reason to take every web process out of the
load balancer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

from neruba.locks import lock_live_holder
from operations.models import Heartbeat
from webhooks.selectors import outbound_backlog

Check = Callable[[], tuple[bool, str]]


def check_database() -> tuple[bool, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True, f"{connection.vendor} reachable"
    except DatabaseError as exc:
        return False, f"database unreachable: {exc.__class__.__name__}"


@functools.cache
def _known_migrations() -> frozenset[tuple[str, str]]:
    """Every migration this code ships, read from disk once per process: building the graph
    costs tens of milliseconds, and the code cannot change under a running process."""
    return frozenset(MigrationLoader(None, ignore_no_migrations=True).disk_migrations)


def check_migrations() -> tuple[bool, str]:
    """One query per probe: the shipped migrations against the applied ones."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT app, name FROM django_migrations")
            applied = set(cursor.fetchall())
    except DatabaseError as exc:
        return False, f"cannot read migration state: {exc.__class__.__name__}"
    missing = sorted(_known_migrations() - applied)
    if missing:
        names = ", ".join(f"{app}.{name}" for app, name in missing[:5])
        return False, f"{len(missing)} unapplied migration(s): {names}"
    return True, "all migrations applied"


@functools.cache
def _redis(url: str) -> Any:
    """One client (and its connection pool) per process: a probe pings over a kept connection
    instead of opening one each time."""
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)


def check_broker() -> tuple[bool, str]:
    url = settings.REDIS_URL
    if url:
        import redis

        try:
            _redis(url).ping()
            return True, "redis reachable"
        except redis.RedisError as exc:
            return False, f"redis unreachable: {exc.__class__.__name__}"
    folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]
    import os

    if os.path.isdir(folder) and os.access(folder, os.W_OK):
        return True, "filesystem broker (development)"
    return False, f"filesystem broker folder {folder} is not writable"


def check_scheduler() -> tuple[bool, str]:
    max_age = timedelta(seconds=settings.NERUBA["NERUBA_HEARTBEAT_MAX_AGE"])
    try:
        beat = Heartbeat.objects.filter(name="beat").first()
    except DatabaseError:
        return False, "heartbeat table unreadable"
    if beat is None:
        return False, "no scheduler heartbeat yet: is celery beat running?"
    age = timezone.now() - beat.seen_at
    if age > max_age:
        return False, f"scheduler heartbeat is {int(age.total_seconds())}s old"
    try:
        active = beat_active()
    except DatabaseError:
        active = ""
    where = f"; active beat {active}" if active else ""
    return True, f"scheduler heartbeat {int(age.total_seconds())}s ago{where}"


def beat_active() -> str:
    """The holder of the live ``celery-beat`` lease ("" when no beat holds it)."""
    from neruba.beat import BEAT_LOCK

    return lock_live_holder(name=BEAT_LOCK)


def check_settings() -> tuple[bool, str]:
    fatal = settings.CONFIG.fatal
    if fatal:
        return False, f"{len(fatal)} fatal configuration problem(s): run manage.py check_env"
    return True, f"{settings.NERUBA_ENV} settings valid"


def check_outbound_webhooks() -> tuple[bool, str]:
    """Detail for operators, never a reason to leave rotation: a receiver that is down is the
    receiver's problem, and deliveries wait for it. Only an unreadable table fails."""
    try:
        backlog = outbound_backlog(now=timezone.now())
    except DatabaseError:
        return False, "outbound webhook tables unreadable"
    counts = backlog["counts"]
    waiting = counts["pending"] + counts["sending"] + counts["failed"]
    detail = (
        f"{waiting} waiting ({counts['failed']} awaiting retry), {counts['dead']} dead, "
        f"oldest waiting {int(backlog['oldest_pending_age'])}s"
    )
    if backlog["disabled_endpoints"]:
        detail += f", {backlog['disabled_endpoints']} endpoint(s) disabled"
    return True, detail


# Checks whose failure is another process's problem: they degrade readiness, never fail it.
ADVISORY = frozenset({"scheduler", "outbound_webhooks"})

CHECKS: dict[str, Check] = {
    "database": check_database,
    "migrations": check_migrations,
    "broker": check_broker,
    "scheduler": check_scheduler,
    "settings": check_settings,
    "outbound_webhooks": check_outbound_webhooks,
}


def readiness() -> tuple[str, dict[str, dict[str, object]]]:
    """``("ready" | "degraded" | "not_ready", checks)``; see the module docstring."""
    results: dict[str, dict[str, object]] = {}
    for name, check in CHECKS.items():
        ok, detail = check()
        results[name] = {"ok": ok, "detail": detail}
        if name == "database" and not ok:
            # Nothing else can be read without the database.
            for rest in list(CHECKS)[1:]:
                if rest in ("broker", "settings"):
                    ok2, detail2 = CHECKS[rest]()
                    results[rest] = {"ok": ok2, "detail": detail2}
                else:
                    results[rest] = {"ok": False, "detail": "skipped: database unreachable"}
            break
    if not all(r["ok"] for name, r in results.items() if name not in ADVISORY):
        return "not_ready", results
    if not all(r["ok"] for r in results.values()):
        return "degraded", results
    return "ready", results


def heartbeat_record(*, name: str, detail: str = "") -> None:
    Heartbeat.objects.update_or_create(
        name=name, defaults={"seen_at": timezone.now(), "detail": detail[:200]}
    )
