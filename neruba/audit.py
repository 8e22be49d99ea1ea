"""Audit log writer. Services call ``audit.record`` inside their own transaction so the entry
commits (or rolls back) with the change it describes."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import models

from neruba import context
from neruba.models import ApiKey, AuditEntry, Customer

Actor = AbstractBaseUser | AnonymousUser | None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, models.Model):
        return value.pk
    return value


def actor_label(actor: Actor | ApiKey) -> str:
    if isinstance(actor, ApiKey):
        return f"api_key:{actor.prefix}"
    if actor is None or not getattr(actor, "is_authenticated", False):
        return "system"
    return actor.get_username()


def public_id(obj: models.Model) -> str:
    """How the audit log names a record. An API key's primary key embeds its stored hash
    (``prefix.sha512…``): the log, which support reads and finance exports, names it by its
    visible prefix instead."""
    if isinstance(obj, ApiKey):
        return f"prefix:{obj.prefix}"
    return str(obj.pk)


def shown_target_id(target_type: str, target_id: str) -> str:
    """An entry's target id for display and export (see ``AuditEntry.target_id_shown``)."""
    return AuditEntry(target_type=target_type, target_id=target_id).target_id_shown


def record(
    *,
    actor: Actor | ApiKey,
    action: str,
    target: models.Model | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    reason: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    customer: Customer | None = None,
) -> AuditEntry:
    """Append one audit entry. ``actor`` is the user, the API key, or ``None`` for the system."""
    if target is not None:
        target_type = target_type or target._meta.label_lower
        target_id = target_id or public_id(target)
    user = (
        actor
        if getattr(actor, "is_authenticated", False) and not isinstance(actor, ApiKey)
        else None
    )
    return AuditEntry.objects.create(
        actor=user,
        actor_label=actor_label(actor),
        action=action,
        target_type=target_type or "",
        target_id=target_id or "",
        target_repr=str(target)[:300] if target is not None else "",
        customer=customer,
        reason=reason,
        before=_jsonable(before) if before is not None else None,
        after=_jsonable(after) if after is not None else None,
        request_id=context.request_id.get() if context.request_id.get() != "-" else "",
    )
