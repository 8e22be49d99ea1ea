"""The kernel's outbox: facts become outbound messages in the transaction that commits them.

Billing (and anything else below ``webhooks`` in the dependency order) calls ``publish`` inside
its own ``transaction.atomic()``. The row commits with the fact or vanishes with it, so a rolled
back invoice never reaches an integrator and a committed one is never lost. Delivery is not the
kernel's business: the ``webhooks`` app registers two callables at start-up (``register``),
one that says whether any enabled endpoint wants a type (so a deployment with no endpoints
writes nothing), and one run after commit that schedules the fan-out. If that after-commit
kick is lost (the process died between commit and enqueue, the broker was down), the webhooks
sweep finds the row by its ``fanned_out_at IS NULL`` index and fans it out then.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from neruba.models import OutboxMessage

_subscribed: Callable[[str], bool] | None = None
_after_commit: Callable[[], None] | None = None


def register(*, subscribed: Callable[[str], bool], after_commit: Callable[[], None]) -> None:
    """Called once by the delivering app's ``ready()``; the kernel imports no app."""
    global _subscribed, _after_commit
    _subscribed = subscribed
    _after_commit = after_commit


def new_msg_id() -> str:
    """``msg_`` + milliseconds (hex, so ids sort by time) + 64 random bits."""
    return f"msg_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


def _iso(value: dt.datetime) -> str:
    # The API's own rendering (DRF): ISO 8601, UTC written as Z.
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def body_render(*, msg_id: str, type: str, created: dt.datetime, data: dict[str, Any]) -> str:
    return json.dumps(
        {"id": msg_id, "type": type, "created": _iso(created), "data": data},
        separators=(",", ":"),
        default=_default,
    )


def wanted(type: str) -> bool:
    """Whether a message of ``type`` would reach anyone. With no delivering app registered the
    kernel keeps every message (nothing is dropped by accident of configuration)."""
    return True if _subscribed is None else _subscribed(type)


def _kick() -> None:
    if _after_commit is not None:
        _after_commit()


def _schedule_kick() -> None:
    # One fan-out per transaction however many messages it published. Django drops the
    # callback if the transaction rolls back, which is exactly when nothing must be sent.
    if connection.in_atomic_block and any(f is _kick for _, f, _ in connection.run_on_commit):
        return
    transaction.on_commit(_kick)


def publish(*, type: str, data: dict[str, Any], force: bool = False) -> OutboxMessage | None:
    """Records one message in the caller's transaction; ``None`` when no endpoint wants it
    (``force`` writes it anyway, for smoke checks)."""
    if not force and not wanted(type):
        return None
    now = timezone.now()
    msg_id = new_msg_id()
    message = OutboxMessage.objects.create(
        msg_id=msg_id,
        type=type,
        body=body_render(msg_id=msg_id, type=type, created=now, data=data),
        created_at=now,
    )
    _schedule_kick()
    return message


def publish_many(*, type: str, items: Iterable[dict[str, Any]]) -> int:
    """Records one message per item of ``items`` (each the ``data`` of one message) in the
    caller's transaction, for writes that produce many facts at once (a billing batch). On
    PostgreSQL the rows go in with one COPY: building a model instance per message would cost
    a measurable share of a billing pass."""
    if not wanted(type):
        return 0
    now = timezone.now()
    rows = []
    for data in items:
        msg_id = new_msg_id()
        rows.append((msg_id, type, body_render(msg_id=msg_id, type=type, created=now, data=data)))
    if not rows:
        return 0
    if connection.vendor == "postgresql":
        table = OutboxMessage._meta.db_table
        with connection.cursor() as cursor:
            copy_sql = f"COPY {table} (msg_id, type, body, created_at) FROM STDIN"
            with cursor.cursor.copy(copy_sql) as copy:
                for row in rows:
                    copy.write_row((*row, now))
    else:
        OutboxMessage.objects.bulk_create(
            [OutboxMessage(msg_id=m, type=t, body=b, created_at=now) for m, t, b in rows]
        )
    _schedule_kick()
    return len(rows)
