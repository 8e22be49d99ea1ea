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
from collections.abc import Callable
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from neruba.models import OutboxBatch, OutboxMessage

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


def iso(value: dt.datetime) -> str:
    # The API's own rendering (DRF): ISO 8601, UTC written as Z.
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def body_render(*, msg_id: str, type: str, created: dt.datetime, data: dict[str, Any]) -> str:
    return json.dumps(
        {"id": msg_id, "type": type, "created": iso(created), "data": data},
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


def publish_many(*, type: str, refs: list[Any]) -> int:
    """Records many facts of one ``type`` (a billing batch's invoices) as one ``OutboxBatch``
    row of references in the caller's transaction. The fan-out expands it (``batches_expand``)
    with the renderer registered for ``type``."""
    if not refs or not wanted(type):
        return 0
    if type not in _renderers:
        raise LookupError(f"no renderer registered for {type}")
    OutboxBatch.objects.create(type=type, refs=json.dumps(refs), created_at=timezone.now())
    _schedule_kick()
    return len(refs)


# type -> renderer(refs) -> {ref: data}: the publishing app's public shape of each fact.
Renderer = Callable[[list[Any]], dict[Any, dict[str, Any]]]
_renderers: dict[str, Renderer] = {}


def renderer_register(*, type: str, render: Renderer) -> None:
    _renderers[type] = render


def batches_expand(*, limit: int = 20, older_than: dt.datetime | None = None) -> int:
    """Turns pending batches (oldest first) into one message per reference, each rendered
    from the committed rows, and marks them expanded, in one transaction (SKIP LOCKED on
    PostgreSQL, so concurrent fan-outs split the batches). Returns the messages created."""
    created = 0
    with transaction.atomic():
        pending = OutboxBatch.objects.filter(expanded_at__isnull=True).order_by("created_at")
        if older_than is not None:
            pending = pending.filter(created_at__lt=older_than)
        if connection.vendor == "postgresql":
            pending = pending.select_for_update(skip_locked=True)
        now = timezone.now()
        for batch in list(pending[:limit]):
            refs = json.loads(batch.refs)
            rendered = _renderers[batch.type](refs)
            rows = []
            for ref in refs:
                if ref not in rendered:
                    continue  # nothing to say about a fact that is gone
                msg_id = new_msg_id()
                body = body_render(
                    msg_id=msg_id, type=batch.type, created=batch.created_at, data=rendered[ref]
                )
                rows.append(
                    OutboxMessage(
                        msg_id=msg_id, type=batch.type, body=body, created_at=batch.created_at
                    )
                )
            OutboxMessage.objects.bulk_create(rows, batch_size=1000)
            OutboxBatch.objects.filter(pk=batch.pk).update(expanded_at=now)
            created += len(rows)
    return created
