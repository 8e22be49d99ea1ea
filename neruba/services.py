"""Kernel write operations. One function per operation; every entry point calls these."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from neruba import audit
from neruba.exceptions import CustomerExists, InvalidScopes
from neruba.models import SCOPES, ApiKey, Customer, SupportNote

CUSTOMER_FIELDS = ("name", "email", "currency", "stripe_customer_id")


def _customer_snapshot(customer: Customer) -> dict[str, Any]:
    return {
        "external_id": customer.external_id,
        **{f: getattr(customer, f) for f in CUSTOMER_FIELDS},
    }


def customer_create(
    *,
    external_id: str,
    name: str,
    email: str = "",
    currency: str = "USD",
    stripe_customer_id: str = "",
    actor: audit.Actor | ApiKey = None,
    reason: str = "",
) -> Customer:
    try:
        with transaction.atomic():
            customer = Customer.objects.create(
                external_id=external_id,
                name=name,
                email=email,
                currency=currency.upper(),
                stripe_customer_id=stripe_customer_id,
            )
            audit.record(
                actor=actor,
                action="customer.create",
                target=customer,
                customer=customer,
                reason=reason,
                after=_customer_snapshot(customer),
            )
    except IntegrityError:
        raise CustomerExists(details={"external_id": external_id}) from None
    return customer


def customer_update(
    *, customer: Customer, changes: dict[str, Any], actor: audit.Actor | ApiKey, reason: str = ""
) -> Customer:
    """Changes only the named fields; the audit entry keeps before and after."""
    changes = {k: v for k, v in changes.items() if k in CUSTOMER_FIELDS}
    if "currency" in changes:
        changes["currency"] = str(changes["currency"]).upper()
    with transaction.atomic():
        locked = Customer.objects.select_for_update().get(pk=customer.pk)
        before = _customer_snapshot(locked)
        for field, value in changes.items():
            setattr(locked, field, value)
        locked.save(update_fields=list(changes) or None)
        audit.record(
            actor=actor,
            action="customer.update",
            target=locked,
            customer=locked,
            reason=reason,
            before=before,
            after=_customer_snapshot(locked),
        )
    return locked


def api_key_create(
    *,
    name: str,
    scopes: Iterable[str],
    actor: audit.Actor,
    expiry_date: datetime | None = None,
    reason: str = "",
) -> tuple[ApiKey, str]:
    """Creates a key and returns it with the raw secret, which is shown once and never stored."""
    scope_list = sorted(set(scopes))
    if not scope_list or any(s not in SCOPES for s in scope_list):
        raise InvalidScopes(details={"scopes": list(scopes), "allowed": list(SCOPES)})
    with transaction.atomic():
        api_key, raw = ApiKey.objects.create_key(
            name=name,
            scopes=scope_list,
            expiry_date=expiry_date,
            created_by=actor if getattr(actor, "is_authenticated", False) else None,
        )
        audit.record(
            actor=actor,
            action="api_key.create",
            target=api_key,
            reason=reason,
            after={"name": name, "prefix": api_key.prefix, "scopes": scope_list},
        )
    return api_key, raw


def api_key_revoke(*, api_key: ApiKey, actor: audit.Actor, reason: str) -> ApiKey:
    with transaction.atomic():
        locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        if not locked.revoked:
            locked.revoked = True
            locked.revoked_at = timezone.now()
            locked.save(update_fields=["revoked", "revoked_at"])
            audit.record(
                actor=actor,
                action="api_key.revoke",
                target=locked,
                reason=reason,
                before={"revoked": False},
                after={"revoked": True},
            )
    return locked


def note_add(
    *, target: Any, author: Any, body: str, customer: Customer | None = None
) -> SupportNote:
    """Adds a support note to any record. Notes are never edited; the audit log records it."""
    from django.contrib.contenttypes.models import ContentType

    with transaction.atomic():
        note = SupportNote.objects.create(
            content_type=ContentType.objects.get_for_model(target),
            object_id=str(target.pk),
            customer=customer,
            author=author,
            body=body,
        )
        # The note is its own reason: the audit log reads "who added what, why" like any change.
        audit.record(
            actor=author,
            action="note.add",
            target=target,
            customer=customer,
            reason=body,
            after={"note_id": note.pk, "body": body},
        )
    return note
