"""Stripe webhook writes: verify and store a delivery, process a stored event (once), retry due
events, replay on an operator's request.

Lifecycle of a ``StripeEvent``::

    received ──claim──> processing ──> processed | ignored
                             │
                             └──> failed ──(backoff, beat)──> processing ... ──> dead

Only a conditional UPDATE moves an event into ``processing`` (the claim), so however many
deliveries, workers and beat ticks race, one processor runs at a time. A claim is a lease:
a worker that died mid-processing leaves ``processing`` with ``next_attempt_at`` in the past,
and the retry beat takes it over.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from billing.payments import invoice_for_provider
from neruba import audit, context
from neruba.metrics import REPLAYS, WEBHOOK_PROCESSING, WEBHOOK_RECEIPTS
from neruba.models import Customer
from webhooks import handlers
from webhooks.exceptions import EventBusy, WebhookRejected
from webhooks.models import EventAttempt, StripeEvent

logger = logging.getLogger(__name__)

Status = StripeEvent.Status
Trigger = EventAttempt.Trigger

# Headers worth keeping with the event (none of them is a secret; the signature is an HMAC).
KEPT_HEADERS = (
    "Stripe-Signature",
    "User-Agent",
    "Content-Type",
    "Content-Length",
    "X-Request-ID",
    "X-Forwarded-For",
)
# A stored event whose after-commit task never ran (broker down, process killed between commit
# and enqueue) is picked up by the retry beat after this grace.
RECEIVED_GRACE = timedelta(minutes=5)
# How long a claim holds before the retry beat may assume the processor died.
PROCESSING_LEASE = timedelta(minutes=15)
BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=6)
RETRY_BATCH = 100


# --- receipt ---------------------------------------------------------------------------------


def _reject(code: str, message: str, http_status: int = 400) -> WebhookRejected:
    return WebhookRejected(message, code=code, http_status=http_status)


def _secret_hint(index: int, secret: str) -> str:
    return f"secret#{index + 1} …{secret[-4:]}"


def _signature_timestamp(header: str) -> tuple[int, int]:
    """(timestamp, number of v1 signatures) from a ``Stripe-Signature`` header; raises
    ``WebhookRejected`` when the header is not in Stripe's ``t=…,v1=…`` form."""
    timestamp: int | None = None
    v1 = 0
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not value:
            raise _reject("malformed_signature", "The Stripe-Signature header is malformed.")
        if key == "t":
            if not value.isdigit():
                raise _reject("malformed_signature", "The signature timestamp is not a number.")
            timestamp = int(value)
        elif key == "v1":
            v1 += 1
    if timestamp is None:
        raise _reject("malformed_signature", "The Stripe-Signature header has no timestamp.")
    return timestamp, v1


def signature_verify(
    *, payload: str, header: str | None, secrets: list[str], tolerance: int, now: float
) -> str:
    """Verifies ``header`` over the exact ``payload`` against each configured secret (several
    live together during rotation) and returns a non-secret hint of the one that matched.

    The SDK refuses timestamps older than ``tolerance``; a timestamp from the future is refused
    here too, or a captured request signed with a skewed clock would stay replayable for as long
    as the skew."""
    if not secrets:
        raise _reject(
            "webhooks_not_configured", "No webhook signing secret is configured.", http_status=503
        )
    if not header:
        raise _reject("missing_signature", "The Stripe-Signature header is missing.")
    timestamp, v1_count = _signature_timestamp(header)
    if not v1_count:
        raise _reject("no_v1_signature", "The Stripe-Signature header has no v1 signature.")
    if timestamp < now - tolerance:
        raise _reject("stale_timestamp", "The signature timestamp is outside the tolerance.")
    if timestamp > now + tolerance:
        raise _reject("future_timestamp", "The signature timestamp is in the future.")
    for index, secret in enumerate(secrets):
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
        except stripe.SignatureVerificationError:
            continue
        return _secret_hint(index, secret)
    raise _reject("bad_signature", "No signature matches the payload for any configured secret.")


def _parse_event(payload: str) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except ValueError:
        data = None
    if (
        not isinstance(data, dict)
        or data.get("object") != "event"
        or not isinstance(data.get("id"), str)
        or not data["id"]
        or not isinstance(data.get("type"), str)
        or not data["type"]
        or not isinstance(data.get("created"), int)
        or not isinstance(data.get("data"), dict)
        or not isinstance(data["data"].get("object"), dict)
    ):
        raise _reject("not_an_event", "The body is not a Stripe event.")
    return data


def _stripe_id(value: Any) -> str:
    """An id from a field that holds either an id or an expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else ""


def event_links_resolve(*, event: StripeEvent) -> None:
    """Links the event to the Neruba customer and invoice it is about, when they are known.

    Done by the worker before processing rather than at receipt, so the receipt path stays one
    INSERT; a failed or ignored event still shows its customer and invoice on the console."""
    if event.customer_id is not None or event.invoice_id is not None:
        return
    obj = (event.payload.get("data") or {}).get("object") or {}
    invoice = None
    if obj.get("object") == "invoice":
        invoice = invoice_for_provider(
            provider_invoice_id=event.object_id,
            invoice_number=str((obj.get("metadata") or {}).get("neruba_invoice_number") or ""),
        )
    if invoice is not None:
        customer: Customer | None = invoice.customer
    else:
        stripe_customer = (
            event.object_id if obj.get("object") == "customer" else _stripe_id(obj.get("customer"))
        )
        customer = (
            Customer.objects.filter(stripe_customer_id=stripe_customer).first()
            if stripe_customer
            else None
        )
    if customer is None and invoice is None:
        return
    StripeEvent.objects.filter(pk=event.pk).update(customer=customer, invoice=invoice)
    event.customer, event.invoice = customer, invoice


# Set by the view while it handles a delivery: enqueues collected there are published after
# the response went out (see ``deferred_enqueues``).
_deferred: ContextVar[list[int] | None] = ContextVar("webhook_deferred_enqueues", default=None)


@contextmanager
def deferred_enqueues() -> Iterator[list[int]]:
    """Collects the processing enqueues of stored events instead of publishing them, so the
    caller can answer Stripe first and publish with ``events_enqueue`` afterwards: the broker's
    round trip is then not part of the delivery's latency. Should the publish never happen,
    the retry beat processes the event after ``RECEIVED_GRACE``."""
    collected: list[int] = []
    token = _deferred.set(collected)
    try:
        yield collected
    finally:
        _deferred.reset(token)


def events_enqueue(*, event_ids: list[int]) -> None:
    for event_id in event_ids:
        _publish(event_id)


def _enqueue(event_id: int) -> None:
    collected = _deferred.get()
    if collected is not None:
        collected.append(event_id)
    else:
        _publish(event_id)


# Publishing a Celery message costs more CPU than verifying and storing an event, so a web
# process publishes at most one "process received events" task per COALESCE window instead of
# one task per event. The task is delayed by that window, so it starts after every event this
# process stored since the publish has committed; anything missed (a worker clock running
# ahead, a lost message) is taken by the retry beat after RECEIVED_GRACE.
COALESCE = 0.25
_publish_lock = threading.Lock()
_last_publish = [-COALESCE]


def _publish(event_id: int) -> None:
    from webhooks import tasks  # tasks import this module

    # Eager execution (tests) runs the task at publish time: there is no "later" to coalesce.
    eager = bool(tasks.process_received.app.conf.task_always_eager)
    with _publish_lock:
        now = time.monotonic()
        if not eager and now - _last_publish[0] < COALESCE:
            return
        _last_publish[0] = now
    try:
        # No publish retries: with the broker down the request would hang for seconds, and
        # the event is already stored, so the retry beat picks it up after RECEIVED_GRACE.
        tasks.process_received.apply_async(countdown=0 if eager else COALESCE, retry=False)
    except (KombuOperationalError, OSError):
        _last_publish[0] = -COALESCE  # let the next stored event try again
        logger.warning(
            "could not enqueue processing of stored stripe event %s; the retry beat will take it",
            event_id,
            exc_info=True,
        )


def event_receive(
    *,
    body: bytes,
    signature: str | None,
    headers: dict[str, str],
    secrets: list[str] | None = None,
) -> tuple[StripeEvent, bool]:
    """Verifies a delivery on its raw bytes and stores it; returns (event, created).

    Nothing is stored unless the signature, timestamp and shape are right. A redelivery of a
    stored event returns the stored row with ``created=False`` and enqueues nothing: the unique
    ``stripe_id`` decides, so concurrent redeliveries cannot both insert. Processing is enqueued
    only after the row committed, so the worker always finds it. ``secrets`` defaults to
    ``STRIPE_WEBHOOK_SECRETS`` (the demo data signs with its own)."""
    try:
        limit = settings.NERUBA["STRIPE_WEBHOOK_MAX_BYTES"]
        if len(body) > limit:
            raise _reject("too_large", f"The body is larger than {limit} bytes.")
        try:
            payload_text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _reject("not_an_event", "The body is not UTF-8 JSON.") from None
        hint = signature_verify(
            payload=payload_text,
            header=signature,
            secrets=list(settings.NERUBA["STRIPE_WEBHOOK_SECRETS"] if secrets is None else secrets),
            tolerance=int(settings.NERUBA["STRIPE_WEBHOOK_TOLERANCE"]),
            now=time.time(),
        )
        payload = _parse_event(payload_text)
    except WebhookRejected as exc:
        WEBHOOK_RECEIPTS.labels(result=exc.code).inc()
        raise
    context.stripe_event_id.set(payload["id"])
    now = timezone.now()
    event = StripeEvent(
        stripe_id=payload["id"],
        type=payload["type"][:100],
        api_version=str(payload.get("api_version") or "")[:40],
        livemode=bool(payload.get("livemode")),
        created=datetime.fromtimestamp(payload["created"], tz=UTC),
        raw_body=body,
        payload=payload,
        headers={k: v for k, v in headers.items() if k in KEPT_HEADERS},
        secret_hint=hint,
        object_id=_stripe_id(payload["data"]["object"].get("id"))[:100],
        received_at=now,
        next_attempt_at=now + RECEIVED_GRACE,
    )
    if not _insert_if_new(event):
        WEBHOOK_RECEIPTS.labels(result="duplicate").inc()
        existing = StripeEvent.objects.defer("raw_body", "payload").get(stripe_id=event.stripe_id)
        return existing, False
    # Runs at once in autocommit, else after the caller's commit: never before the row is
    # visible to the worker.
    transaction.on_commit(lambda: _enqueue(event.pk))
    WEBHOOK_RECEIPTS.labels(result="stored").inc()
    return event, True


def _insert_if_new(event: StripeEvent) -> bool:
    """Inserts ``event`` unless its ``stripe_id`` is stored; True when this call inserted it.

    ``INSERT … ON CONFLICT (stripe_id) DO NOTHING RETURNING id`` decides in one statement: of
    concurrent deliveries of one event exactly one gets the id back (the others wait for its
    commit, then see the conflict). No exception is raised for a duplicate, so neither the
    caller's transaction nor the receipt rate suffers from redeliveries. In autocommit the
    statement is its own transaction: the row is durable before we answer Stripe."""
    meta = StripeEvent._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    quote = connection.ops.quote_name
    table, pk, key = quote(meta.db_table), quote(meta.pk.column), quote("stripe_id")
    columns = ", ".join(quote(f.column) for f in fields)
    marks = ", ".join(["%s"] * len(fields))
    # Identifiers come from our own model; every value is a parameter.
    sql = f"INSERT INTO {table} ({columns}) VALUES ({marks})"  # noqa: S608
    sql += f" ON CONFLICT ({key}) DO NOTHING RETURNING {pk}"
    params = [f.get_db_prep_save(getattr(event, f.attname), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return False
    event.pk = row[0]
    event._state.adding = False
    event._state.db = connection.alias
    return True


# --- processing ------------------------------------------------------------------------------


def backoff(attempts: int) -> timedelta:
    """Delay before the next try after ``attempts`` failed ones: 1, 2, 4, … minutes, capped."""
    return min(BACKOFF_BASE * (2 ** max(attempts - 1, 0)), BACKOFF_CAP)


def _claimable(trigger: str, now: datetime) -> Q:
    lease_lapsed = Q(status=Status.PROCESSING, next_attempt_at__lte=now)
    if trigger == Trigger.HTTP:
        return Q(status=Status.RECEIVED)
    if trigger == Trigger.RETRY:
        return Q(status__in=[Status.RECEIVED, Status.FAILED], next_attempt_at__lte=now) | (
            lease_lapsed
        )
    # An operator may replay any event, except one a live processor holds.
    return ~Q(status=Status.PROCESSING) | lease_lapsed


def _claim(*, event: StripeEvent, trigger: str, now: datetime) -> bool:
    claimed = (
        StripeEvent.objects.filter(pk=event.pk)
        .filter(_claimable(trigger, now))
        .update(
            status=Status.PROCESSING,
            attempts=F("attempts") + 1,
            next_attempt_at=now + PROCESSING_LEASE,
        )
    )
    return claimed == 1


class ClaimLost(Exception):
    """This processor's claim lapsed and another one took the event over."""


def _ours(event: StripeEvent) -> Any:
    """The event row while this processor still holds the claim. ``attempts`` is incremented by
    every claim, so it is a fencing token: a processor that stalled past its lease (and was
    taken over by the retry beat) can no longer write the event's outcome."""
    return StripeEvent.objects.filter(
        pk=event.pk, status=Status.PROCESSING, attempts=event.attempts
    )


def event_process(
    *, event: StripeEvent, trigger: str, actor: audit.Actor = None, reason: str = ""
) -> EventAttempt | None:
    """Processes a stored event once; returns the attempt, or ``None`` when another processor
    holds it or it is not due (nothing happened).

    The handler's changes, the event's new status and the attempt's outcome commit in one
    transaction: an event is ``processed`` exactly when its effects are. A failure rolls the
    effects back and is recorded in a second transaction with the traceback; after
    ``STRIPE_WEBHOOK_MAX_ATTEMPTS`` the event is ``dead`` and waits for an operator."""
    now = timezone.now()
    previous = event.status
    if not _claim(event=event, trigger=trigger, now=now):
        return None
    event.refresh_from_db()
    event_links_resolve(event=event)
    token = context.stripe_event_id.set(event.stripe_id)
    user = actor if getattr(actor, "is_authenticated", False) else None
    attempt = EventAttempt.objects.create(event=event, trigger=trigger, actor=user, started_at=now)
    try:
        try:
            with transaction.atomic():
                result = handlers.dispatch(event)
                finished = timezone.now()
                status = Status.PROCESSED if result.outcome == "processed" else Status.IGNORED
                links: dict[str, Any] = {}
                if result.invoice is not None and event.invoice_id is None:
                    links["invoice"] = result.invoice
                if result.customer is not None and event.customer_id is None:
                    links["customer"] = result.customer
                if not _ours(event).update(
                    status=status,
                    last_error="",
                    next_attempt_at=None,
                    processed_at=finished,
                    **links,
                ):
                    raise ClaimLost(
                        f"the claim lapsed and attempt {event.attempts} was taken over; "
                        "this attempt's changes were rolled back"
                    )
                attempt.outcome, attempt.finished_at = result.outcome, finished
                attempt.notes = "\n".join(result.notes)
                attempt.save(update_fields=["outcome", "finished_at", "notes"])
                if trigger == Trigger.REPLAY:
                    _audit_replay(event, actor, reason, previous, status, attempt)
        except Exception as exc:
            status = _record_failure(
                event=event, attempt=attempt, exc=exc, trace=traceback.format_exc()
            )
            if trigger == Trigger.REPLAY:
                with transaction.atomic():
                    _audit_replay(event, actor, reason, previous, status, attempt)
            logger.warning(
                "stripe event %s (%s) failed on attempt %s: %s",
                event.stripe_id,
                event.type,
                event.attempts,
                attempt.error,
            )
    finally:
        context.stripe_event_id.reset(token)
    WEBHOOK_PROCESSING.labels(outcome=attempt.outcome, trigger=trigger).inc()
    event.refresh_from_db()
    return attempt


def _record_failure(
    *, event: StripeEvent, attempt: EventAttempt, exc: Exception, trace: str
) -> str:
    now = timezone.now()
    error = f"{type(exc).__name__}: {exc}"[:2000]
    dead = event.attempts >= settings.NERUBA["STRIPE_WEBHOOK_MAX_ATTEMPTS"]
    status = Status.DEAD if dead else Status.FAILED
    with transaction.atomic():
        taken_over = not _ours(event).update(
            status=status,
            last_error=error,
            next_attempt_at=None if dead else now + backoff(event.attempts),
        )
        attempt.outcome, attempt.finished_at = "failed", now
        attempt.error, attempt.traceback = error, trace
        attempt.save(update_fields=["outcome", "finished_at", "error", "traceback"])
        if taken_over:
            # The processor that took over owns the event's status now.
            return Status.PROCESSING
        if dead:
            audit.record(
                actor=None,
                action="stripe_event.dead",
                target=event,
                customer=event.customer,
                reason=f"gave up after {event.attempts} attempts",
                after={"last_error": error},
            )
    return status


def _audit_replay(
    event: StripeEvent,
    actor: audit.Actor,
    reason: str,
    previous: str,
    status: str,
    attempt: EventAttempt,
) -> None:
    audit.record(
        actor=actor,
        action="stripe_event.replay",
        target=event,
        customer=event.customer,
        reason=reason,
        before={"status": previous},
        after={
            "status": status,
            "attempt": attempt.pk,
            "outcome": attempt.outcome,
            "notes": attempt.notes,
            "error": attempt.error,
        },
    )


def events_process_received(*, limit: int = 200) -> int:
    """Processes stored events nobody has tried yet, oldest first; returns how many it took.
    Racing workers are safe: each event is claimed before it is processed."""
    pending = list(
        StripeEvent.objects.filter(status=Status.RECEIVED)
        .order_by("created", "id")
        .values_list("pk", flat=True)[:limit]
    )
    for event in StripeEvent.objects.filter(pk__in=pending).order_by("created", "id"):
        event_process(event=event, trigger=Trigger.HTTP)
    return len(pending)


def events_retry_due(*, now: datetime) -> dict[str, int]:
    """Retries every event whose backoff elapsed (and takes over lapsed claims); returns counts
    by outcome. Bounded per call; the beat calls it again shortly."""
    due = list(
        StripeEvent.objects.filter(next_attempt_at__lte=now)
        .filter(status__in=[Status.RECEIVED, Status.FAILED, Status.PROCESSING])
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:RETRY_BATCH]
    )
    counts: dict[str, int] = {"processed": 0, "ignored": 0, "failed": 0, "skipped": 0}
    for event in StripeEvent.objects.filter(pk__in=due):
        attempt = event_process(event=event, trigger=Trigger.RETRY)
        counts[attempt.outcome if attempt else "skipped"] += 1
    return counts


# --- replay ----------------------------------------------------------------------------------


def event_replay(*, event: StripeEvent, actor: audit.Actor, reason: str) -> EventAttempt:
    """Processes a stored event again on an operator's request (console or command). The attempt
    has trigger ``replay`` and the operator as actor; the audit entry carries the reason and the
    outcome. Handlers are idempotent, so replaying a processed event changes nothing twice."""
    if not reason.strip():
        from neruba.errors import ValidationFailed

        raise ValidationFailed("A reason is required.", details={"reason": "required"})
    attempt = event_process(event=event, trigger=Trigger.REPLAY, actor=actor, reason=reason)
    if attempt is None:
        REPLAYS.labels(kind="stripe_event", outcome="busy").inc()
        raise EventBusy(details={"event": event.stripe_id})
    REPLAYS.labels(kind="stripe_event", outcome=attempt.outcome).inc()
    return attempt


def event_dry_run(*, event: StripeEvent) -> handlers.HandlerResult:
    """What processing ``event`` now would change, without changing it: the real handler runs
    in a transaction that is always rolled back (its audit entries and cash amounts included)."""
    with transaction.atomic():
        try:
            return handlers.dispatch(event)
        finally:
            transaction.set_rollback(True)
