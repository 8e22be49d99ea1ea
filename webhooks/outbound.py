"""Outbound webhooks: endpoints, fan-out of the kernel outbox, signed delivery, retry, replay.

The path of a message:

1. A service (billing) calls ``neruba.outbox.publish`` inside the transaction of its fact; the
   row commits with it or not at all.
2. After commit, ``messages_fan_out`` (task ``webhooks.outbound_fan_out``) turns each new
   outbox row into one ``OutboundDelivery`` per subscribed, enabled endpoint and marks the row
   fanned out, in one transaction; the delivery tasks are enqueued after that commits.
3. ``deliveries_send`` (task ``webhooks.outbound_deliver``) claims deliveries with a
   conditional UPDATE, signs the stored body (Standard Webhooks, the ``standardwebhooks``
   package), POSTs it to the vetted address and records every attempt.
4. ``deliveries_retry_due`` (beat, every 10 s) sends failed deliveries whose backoff elapsed,
   takes back claims whose worker died, and fans out outbox rows whose after-commit kick was
   lost. Nothing committed is lost; everything is delivered at least once under one
   ``webhook-id``, which is what receivers deduplicate on.
"""

from __future__ import annotations

import base64
import email.utils
import ipaddress
import logging
import random
import secrets
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from neruba import audit, outbox
from neruba.errors import ValidationFailed
from neruba.metrics import OUTBOUND_DELIVERIES, REPLAYS
from neruba.models import OutboxMessage
from webhooks.exceptions import EndpointUrlNotAllowed, UnknownEventType
from webhooks.models import DeliveryAttempt, OutboundDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

SMOKE_TYPE = "neruba.smoke"
# Every type a service publishes (billing.messages.TYPES, repeated here because webhooks may
# not be imported by billing and the list is the public contract) plus the smoke check's.
EVENT_TYPES = (
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.voided",
    "credit.granted",
    "drift_finding.opened",
    "payment_finding.opened",
    "billing_run.failed",
    SMOKE_TYPE,
)
RESPONSE_EXCERPT = 2048
DELIVERY_BATCH = 100  # deliveries per task: one claim, one write, one kept-alive connection
FAN_OUT_BATCH = 1000
# A claim older than this belongs to a worker that died (the task's hard time limit is lower).
CLAIM_STALE = timedelta(minutes=10)
# A message not fanned out after this long lost its after-commit kick.
FAN_OUT_STALE = timedelta(seconds=30)
# Standard Webhooks' suggested schedule after the first attempt; jittered ±20 %.
BACKOFF = (5, 300, 1800, 7200, 18000, 36000, 36000, 36000, 36000)
RETRY_AFTER_CAP = 86400
USER_AGENT = "Neruba-Webhooks/1"
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


def _config(name: str) -> Any:
    return settings.NERUBA[name]


def _production() -> bool:
    return settings.NERUBA_ENV == "production"


# --- addresses -------------------------------------------------------------------------------


def _address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private or ip.is_reserved or ip.is_multicast or ip.is_unspecified:
        return "a private or reserved address"
    if not ip.is_global:
        return "not a public address"
    return ""


@dataclass(frozen=True)
class Target:
    """Where one request goes: the vetted IP, and the host name for Host and TLS."""

    url: str  # scheme://<ip>:port/path?query — what we connect to
    host_header: str
    sni_hostname: str | None


def url_check(url: str) -> tuple[str, str, int]:
    """Checks the URL's form (not its address); returns (scheme, host, port)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EndpointUrlNotAllowed("The URL is malformed.", details={"url": url}) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointUrlNotAllowed(
            "The URL must be http:// or https:// with a host.", details={"url": url}
        )
    if parts.username or parts.password:
        raise EndpointUrlNotAllowed("The URL must not carry credentials.", details={"url": url})
    allow_private = _config("NERUBA_OUTBOUND_ALLOW_PRIVATE")
    if _production() and not allow_private and parts.scheme != "https":
        raise EndpointUrlNotAllowed(
            "In production an endpoint must be https://.", details={"url": url}
        )
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def target_resolve(url: str) -> Target:
    """Resolves the host now and vets every address it returns; the request then connects to
    the vetted address itself, so a DNS answer that changes between this check and the
    connection (rebinding) cannot point it somewhere private. Called at creation and at every
    delivery."""
    scheme, host, port = url_check(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise EndpointUrlNotAllowed(
            f"The host does not resolve: {exc}", details={"host": host}
        ) from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise EndpointUrlNotAllowed("The host does not resolve.", details={"host": host})
    if not _config("NERUBA_OUTBOUND_ALLOW_PRIVATE"):
        for raw in addresses:
            why = _address_refusal(ipaddress.ip_address(raw.split("%")[0]))
            if why:
                raise EndpointUrlNotAllowed(
                    f"The host resolves to {why} ({raw}); set NERUBA_OUTBOUND_ALLOW_PRIVATE=true "
                    "to allow it.",
                    details={"host": host, "address": raw},
                )
    ip = addresses[0]
    netloc_host = f"[{ip}]" if ":" in ip else ip
    parts = urlsplit(url)
    default_port = port == (443 if scheme == "https" else 80)
    host_header = host if default_port and parts.port is None else f"{host}:{port}"
    return Target(
        url=urlunsplit((scheme, f"{netloc_host}:{port}", parts.path or "/", parts.query, "")),
        host_header=host_header,
        sni_hostname=host if scheme == "https" else None,
    )


# --- endpoints -------------------------------------------------------------------------------


def secret_new() -> str:
    """``whsec_`` + base64 of 24 random bytes, as the Standard Webhooks spec describes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _types_check(event_types: Any) -> list[str]:
    if not isinstance(event_types, list) or not event_types:
        raise ValidationFailed(
            "event_types must be a non-empty list.",
            details={"event_types": "required", "allowed": list(EVENT_TYPES)},
        )
    unknown = sorted({str(t) for t in event_types} - set(EVENT_TYPES))
    if unknown:
        raise UnknownEventType(details={"unknown": unknown, "allowed": list(EVENT_TYPES)})
    return sorted(set(event_types), key=EVENT_TYPES.index)


def _endpoint_state(endpoint: WebhookEndpoint) -> dict[str, Any]:
    # What the audit log keeps: never the secret, only its last characters.
    return {
        "url": endpoint.url,
        "event_types": endpoint.event_types,
        "enabled": endpoint.enabled,
        "description": endpoint.description,
        "secret": endpoint.secret_hint(),
    }


def endpoint_create(
    *, url: str, event_types: list[str], description: str = "", actor: Any
) -> tuple[WebhookEndpoint, str]:
    """Creates an endpoint; returns it and its secret (shown to the caller once)."""
    types = _types_check(event_types)
    target_resolve(url)
    secret = secret_new()
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.create(
            url=url, event_types=types, description=description[:300], secret=secret
        )
        audit.record(
            actor=actor,
            action="webhook_endpoint.create",
            target=endpoint,
            after=_endpoint_state(endpoint),
        )
    return endpoint, secret


def endpoint_update(
    *,
    endpoint: WebhookEndpoint,
    actor: Any,
    url: str | None = None,
    event_types: list[str] | None = None,
    enabled: bool | None = None,
    description: str | None = None,
    reason: str = "",
) -> WebhookEndpoint:
    """Changes url, types, description or enabled. Re-enabling clears the disabled reason and
    the failure streak; deliveries that went dead meanwhile are replayed explicitly."""
    types = _types_check(event_types) if event_types is not None else None
    if url is not None:
        target_resolve(url)
    with transaction.atomic():
        row = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        before = _endpoint_state(row)
        if url is not None:
            row.url = url
        if types is not None:
            row.event_types = types
        if description is not None:
            row.description = description[:300]
        if enabled is not None and enabled != row.enabled:
            row.enabled = enabled
            if enabled:
                row.disabled_reason, row.disabled_at, row.failing_since = "", None, None
            else:
                row.disabled_reason = f"Disabled by {audit.actor_label(actor)}" + (
                    f": {reason}" if reason else ""
                )
                row.disabled_at = timezone.now()
        row.updated_at = timezone.now()
        row.save()
        audit.record(
            actor=actor,
            action="webhook_endpoint.update",
            target=row,
            reason=reason,
            before=before,
            after=_endpoint_state(row),
        )
    return row


def endpoint_rotate_secret(*, endpoint: WebhookEndpoint, actor: Any, reason: str = "") -> str:
    """A new secret signs from now on; the old one also signs for
    ``NERUBA_OUTBOUND_ROTATION_GRACE`` so receivers can switch without a gap."""
    secret = secret_new()
    with transaction.atomic():
        row = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        before = _endpoint_state(row)
        row.previous_secret = row.secret
        row.previous_secret_expires_at = timezone.now() + timedelta(
            seconds=_config("NERUBA_OUTBOUND_ROTATION_GRACE")
        )
        row.secret = secret
        row.updated_at = timezone.now()
        row.save()
        audit.record(
            actor=actor,
            action="webhook_endpoint.rotate_secret",
            target=row,
            reason=reason,
            before=before,
            after={
                **_endpoint_state(row),
                "previous_secret_expires_at": row.previous_secret_expires_at,
            },
        )
    return secret


def type_subscribed(type: str) -> bool:
    """The outbox's question: does any enabled endpoint want ``type``? A handful of rows, read
    per publish (a billing batch asks once), so a new endpoint hears the very next fact."""
    for types in WebhookEndpoint.objects.filter(enabled=True).values_list("event_types", flat=True):
        if type in (types or []):
            return True
    return False


def fan_out_kick() -> None:
    from webhooks import tasks

    tasks.outbound_fan_out.delay()


def register() -> None:
    outbox.register(subscribed=type_subscribed, after_commit=fan_out_kick)


# --- fan-out ---------------------------------------------------------------------------------


def _enqueue(delivery_ids: list[int], endpoint_of: dict[int, int]) -> None:
    """After commit: one task per endpoint and chunk, so a slow endpoint holds up only its own."""
    if not delivery_ids:
        return
    by_endpoint: dict[int, list[int]] = {}
    for delivery_id in delivery_ids:
        by_endpoint.setdefault(endpoint_of[delivery_id], []).append(delivery_id)

    def send() -> None:
        from webhooks import tasks

        for ids in by_endpoint.values():
            for start in range(0, len(ids), DELIVERY_BATCH):
                tasks.outbound_deliver.delay(ids[start : start + DELIVERY_BATCH])

    transaction.on_commit(send)


def messages_fan_out(*, limit: int = FAN_OUT_BATCH, older_than: datetime | None = None) -> int:
    """Creates the deliveries of outbox rows not yet fanned out (oldest first) for the enabled
    endpoints subscribed to their type. Rows are taken with SKIP LOCKED on PostgreSQL, so two
    fan-outs at once split the work instead of doubling it (the unique (message, endpoint)
    constraint would refuse a double anyway)."""
    # A couple of batches per call (each up to a billing batch of invoices) keeps this
    # transaction short; more are left to the next call.
    expanded = outbox.batches_expand(limit=2, older_than=older_than)
    with transaction.atomic():
        pending = OutboxMessage.objects.filter(fanned_out_at__isnull=True).order_by("created_at")
        if older_than is not None:
            pending = pending.filter(created_at__lt=older_than)
        if connection.vendor == "postgresql":
            pending = pending.select_for_update(skip_locked=True)
        rows = list(pending.values_list("id", "type")[:limit])
        if not rows:
            return 0
        endpoints = list(
            WebhookEndpoint.objects.filter(enabled=True).values_list("id", "event_types")
        )
        now = timezone.now()
        deliveries = [
            OutboundDelivery(message_id=message_id, endpoint_id=endpoint_id, next_attempt_at=now)
            for message_id, type in rows
            for endpoint_id, types in endpoints
            if type in (types or [])
        ]
        created = OutboundDelivery.objects.bulk_create(deliveries, ignore_conflicts=False)
        OutboxMessage.objects.filter(pk__in=[r[0] for r in rows]).update(fanned_out_at=now)
        _enqueue([d.pk for d in created], {d.pk: d.endpoint_id for d in created})
    if len(rows) == limit or expanded:
        # More may be waiting; a call that made no progress does not kick, so a message that
        # cannot be rendered never loops (the beat's due task tries again).
        fan_out_kick()
    return len(rows)


# --- delivery --------------------------------------------------------------------------------

_client: httpx.Client | None = None


def _http() -> httpx.Client:
    """One client per process: connections to the same vetted address are kept alive across
    deliveries. Redirects are never followed (a 3xx is the receiver's answer, not a hop)."""
    global _client
    timeouts = httpx.Timeout(
        float(_config("NERUBA_OUTBOUND_READ_TIMEOUT")),
        connect=float(_config("NERUBA_OUTBOUND_CONNECT_TIMEOUT")),
    )
    if _client is None or _client.timeout != timeouts:
        limits = httpx.Limits(max_connections=20, max_keepalive_connections=10)
        _client = httpx.Client(
            follow_redirects=False,
            timeout=timeouts,
            trust_env=False,  # no proxy from the environment: we connect to the vetted address
            limits=limits,
            # Headers and body leave as separate writes; without TCP_NODELAY the body waits for
            # the receiver's delayed ACK (~40 ms a request on a kept-alive connection).
            transport=httpx.HTTPTransport(
                limits=limits,
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            ),
        )
    return _client


def signature_header(*, endpoint: WebhookEndpoint, msg_id: str, at: datetime, body: str) -> str:
    """``v1,<sig>`` with the current secret, and with the previous one during its grace."""
    signatures = [Webhook(endpoint.secret).sign(msg_id=msg_id, timestamp=at, data=body)]
    if (
        endpoint.previous_secret
        and endpoint.previous_secret_expires_at
        and endpoint.previous_secret_expires_at > at
    ):
        signatures.append(
            Webhook(endpoint.previous_secret).sign(msg_id=msg_id, timestamp=at, data=body)
        )
    return " ".join(signatures)


@dataclass
class Sent:
    status_code: int | None = None
    excerpt: str = ""
    error: str = ""
    retry_after: int | None = None
    latency_ms: int = 0


def _retry_after(value: str | None) -> int | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(int(value), RETRY_AFTER_CAP)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0, min(int((when - timezone.now()).total_seconds()), RETRY_AFTER_CAP))


def request_send(*, endpoint: WebhookEndpoint, msg_id: str, body: str) -> Sent:
    """One signed POST to the endpoint's vetted address. Never raises for the receiver's
    faults: they are the attempt's outcome."""
    clock = time.monotonic()
    result = Sent()
    try:
        target = target_resolve(endpoint.url)
    except EndpointUrlNotAllowed as exc:
        result.error = f"refused: {exc.message}"
        return result
    now = timezone.now()
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "host": target.host_header,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature_header(endpoint=endpoint, msg_id=msg_id, at=now, body=body),
    }
    extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
    try:
        with _http().stream(
            "POST", target.url, content=body.encode(), headers=headers, extensions=extensions
        ) as response:
            result.status_code = response.status_code
            excerpt = b""
            for chunk in response.iter_raw():
                excerpt += chunk
                if len(excerpt) >= RESPONSE_EXCERPT:
                    break
            result.excerpt = excerpt[:RESPONSE_EXCERPT].decode("utf-8", "replace")
            result.retry_after = _retry_after(response.headers.get("retry-after"))
    except httpx.TimeoutException as exc:
        result.error = f"timeout: {type(exc).__name__}"
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:500]
    except OSError as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:500]
    result.latency_ms = int((time.monotonic() - clock) * 1000)
    return result


def _backoff(attempts: int, retry_after: int | None) -> int:
    base = BACKOFF[min(attempts - 1, len(BACKOFF) - 1)]
    delay = int(base * random.uniform(0.8, 1.2))
    return max(delay, retry_after or 0)


def _outcome(sent: Sent) -> tuple[str, bool]:
    """(outcome, retryable). Timeouts, connection errors, 429 and 5xx are retried; a refusal of
    the address too (DNS may come back public). Other answers are final."""
    code = sent.status_code
    if code is None or sent.error:  # no answer, or one cut off by the read timeout
        return "failed", True
    if 200 <= code < 300:
        return "delivered", False
    if code == 429 or code >= 500:
        return "failed", True
    return "dead", False


@dataclass
class SendCounts:
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    skipped: int = 0
    ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "delivered": self.delivered,
            "failed": self.failed,
            "dead": self.dead,
            "skipped": self.skipped,
        }


def _claim(*, delivery_ids: list[int], claimer: str, now: datetime) -> list[OutboundDelivery]:
    """Conditional UPDATE: takes deliveries that are waiting (pending, or failed and due), or
    that this same task already claimed (the broker redelivered it after its worker died), or
    whose claim went stale. Whatever a concurrent task took is left to it."""
    claimable = (
        Q(status=OutboundDelivery.Status.PENDING)
        | Q(status=OutboundDelivery.Status.FAILED, next_attempt_at__lte=now)
        | Q(status=OutboundDelivery.Status.SENDING, claimed_by=claimer)
        | Q(status=OutboundDelivery.Status.SENDING, claimed_at__lt=now - CLAIM_STALE)
    )
    OutboundDelivery.objects.filter(claimable, pk__in=delivery_ids).update(
        status=OutboundDelivery.Status.SENDING, claimed_by=claimer, claimed_at=now
    )
    return list(
        OutboundDelivery.objects.filter(
            pk__in=delivery_ids, status=OutboundDelivery.Status.SENDING, claimed_by=claimer
        )
        .select_related("message", "endpoint")
        .order_by("id")
    )


def deliveries_send(
    *, delivery_ids: list[int], trigger: str = DeliveryAttempt.Trigger.SEND, claimer: str = ""
) -> SendCounts:
    """Sends each claimed delivery once and records the attempts.

    1. Claim (see ``_claim``); deliveries to a disabled endpoint go ``dead`` unsent.
    2. Per delivery: sign and POST (outside any transaction: a slow receiver holds no lock).
       After a timeout or connection error the endpoint's other deliveries in this batch are
       not tried: they are rescheduled like the failed one, instead of each waiting out the
       same timeout.
    3. One transaction: attempts, delivery states, the endpoint's failure streak (disabled
       after ``NERUBA_OUTBOUND_DISABLE_AFTER`` of continuous failure, or at once on 410)."""
    claimer = claimer or f"sync-{uuid.uuid4().hex}"
    now = timezone.now()
    claimed = _claim(delivery_ids=delivery_ids, claimer=claimer, now=now)
    counts = SendCounts()
    max_attempts = int(_config("NERUBA_OUTBOUND_MAX_ATTEMPTS"))
    attempts: list[DeliveryAttempt] = []
    unreachable: dict[int, str] = {}
    endpoint_result: dict[int, tuple[bool, str]] = {}  # endpoint -> (any success, gone reason)
    for delivery in claimed:
        endpoint = delivery.endpoint
        started = timezone.now()
        if not endpoint.enabled:
            sent = Sent(error=f"endpoint disabled: {endpoint.disabled_reason or 'by an operator'}")
            outcome, retryable = "dead", False
        elif endpoint.pk in unreachable:
            # Not an attempt: rescheduled with the one that failed, its count unchanged.
            delivery.status = OutboundDelivery.Status.FAILED
            delivery.last_error = f"not tried: {unreachable[endpoint.pk]} earlier in its batch"
            delivery.claimed_by, delivery.claimed_at = "", None
            delivery.next_attempt_at = timezone.now() + timedelta(
                seconds=_backoff(max(delivery.attempts, 1), None)
            )
            counts.failed += 1
            counts.ids.append(delivery.pk)
            continue
        else:
            sent = request_send(
                endpoint=endpoint, msg_id=delivery.message.msg_id, body=delivery.message.body
            )
            outcome, retryable = _outcome(sent)
            if sent.status_code is None and sent.error:
                unreachable[endpoint.pk] = sent.error
        delivery.attempts += 1
        delivery.last_status_code = sent.status_code
        delivery.last_error = sent.error
        delivery.claimed_by, delivery.claimed_at = "", None
        if outcome == "delivered":
            delivery.status = OutboundDelivery.Status.DELIVERED
            delivery.delivered_at = now  # the batch's time, so one UPDATE serves the batch
            delivery.next_attempt_at = None
        elif retryable and delivery.attempts < max_attempts:
            delivery.status = OutboundDelivery.Status.FAILED
            delivery.next_attempt_at = timezone.now() + timedelta(
                seconds=_backoff(delivery.attempts, sent.retry_after)
            )
        else:
            outcome = "dead"
            delivery.status = OutboundDelivery.Status.DEAD
            delivery.next_attempt_at = None
            if retryable:
                delivery.last_error = (
                    f"{sent.error or f'HTTP {sent.status_code}'}; gave up after "
                    f"{delivery.attempts} attempts"
                )
            elif sent.status_code is not None and not sent.error:
                delivery.last_error = f"HTTP {sent.status_code} is not retried"
        if endpoint.enabled:
            success, gone = endpoint_result.get(endpoint.pk, (False, ""))
            if sent.status_code == 410:
                gone = "The receiver answered 410 Gone: it asked not to be called again."
            endpoint_result[endpoint.pk] = (success or outcome == "delivered", gone)
        setattr(counts, outcome, getattr(counts, outcome) + 1)
        OUTBOUND_DELIVERIES.labels(outcome=outcome).inc()
        attempts.append(
            DeliveryAttempt(
                delivery=delivery,
                trigger=trigger,
                started_at=started,
                latency_ms=sent.latency_ms,
                status_code=sent.status_code,
                outcome=outcome,
                response_excerpt=sent.excerpt,
                error=delivery.last_error,
            )
        )
        counts.ids.append(delivery.pk)
    counts.skipped = len(set(delivery_ids)) - len(claimed)
    if not claimed:
        return counts
    with transaction.atomic():
        DeliveryAttempt.objects.bulk_create(attempts)
        # One UPDATE per distinct outcome (a healthy batch is one statement), not bulk_update's
        # CASE per row and field, which cost more than the HTTP requests themselves.
        groups: dict[tuple[Any, ...], list[int]] = {}
        for d in claimed:
            key = (
                d.status,
                d.attempts,
                d.last_status_code,
                d.last_error,
                d.next_attempt_at,
                d.delivered_at,
            )
            groups.setdefault(key, []).append(d.pk)
        for (status, attempts_, code, error, next_at, delivered_at), pks in groups.items():
            OutboundDelivery.objects.filter(pk__in=pks, claimed_by=claimer).update(
                status=status,
                attempts=attempts_,
                last_status_code=code,
                last_error=error,
                next_attempt_at=next_at,
                delivered_at=delivered_at,
                claimed_by="",
                claimed_at=None,
            )
        for endpoint_id, (success, gone) in endpoint_result.items():
            _endpoint_health(endpoint_id=endpoint_id, success=success, gone=gone)
    return counts


def _endpoint_health(*, endpoint_id: int, success: bool, gone: str) -> None:
    now = timezone.now()
    if success and not gone:
        WebhookEndpoint.objects.filter(pk=endpoint_id, failing_since__isnull=False).update(
            failing_since=None
        )
        return
    WebhookEndpoint.objects.filter(pk=endpoint_id, failing_since__isnull=True).update(
        failing_since=now
    )
    limit = timedelta(seconds=_config("NERUBA_OUTBOUND_DISABLE_AFTER"))
    reason = gone
    if not reason:
        row = WebhookEndpoint.objects.filter(pk=endpoint_id).values("failing_since").first()
        if row and row["failing_since"] and now - row["failing_since"] >= limit:
            reason = (
                f"Every delivery failed since {row['failing_since'].isoformat()} "
                f"(NERUBA_OUTBOUND_DISABLE_AFTER = {limit})."
            )
    if reason:
        changed = WebhookEndpoint.objects.filter(pk=endpoint_id, enabled=True).update(
            enabled=False, disabled_reason=reason, disabled_at=now, updated_at=now
        )
        if changed:
            audit.record(
                actor=None,
                action="webhook_endpoint.disable",
                target_type="webhooks.webhookendpoint",
                target_id=str(endpoint_id),
                reason=reason,
                after={"enabled": False},
            )
            logger.warning("outbound webhook endpoint %s disabled: %s", endpoint_id, reason)


def deliveries_retry_due(*, now: datetime | None = None) -> dict[str, int]:
    """The beat's safety net: fans out rows whose kick was lost, re-sends failed deliveries
    whose backoff elapsed and deliveries whose claim went stale (their worker died), and
    pending ones whose task never ran."""
    now = now or timezone.now()
    fanned = messages_fan_out(older_than=now - FAN_OUT_STALE)
    # A claim this old belongs to a worker that died without its task coming back (SIGKILL of
    # the whole worker: the broker keeps the message unacknowledged until its visibility
    # timeout). Released to pending, so any worker can take it.
    stale = list(
        OutboundDelivery.objects.filter(
            status=OutboundDelivery.Status.SENDING, claimed_at__lt=now - CLAIM_STALE
        ).values_list("id", "endpoint_id")[:5000]
    )
    if stale:
        OutboundDelivery.objects.filter(
            pk__in=[d for d, _ in stale],
            status=OutboundDelivery.Status.SENDING,
            claimed_at__lt=now - CLAIM_STALE,
        ).update(status=OutboundDelivery.Status.PENDING, claimed_by="", claimed_at=None)
    due = stale + list(
        OutboundDelivery.objects.filter(
            Q(status=OutboundDelivery.Status.FAILED, next_attempt_at__lte=now)
            | Q(status=OutboundDelivery.Status.PENDING, next_attempt_at__lte=now - FAN_OUT_STALE)
        )
        .exclude(pk__in=[d for d, _ in stale])
        .order_by("next_attempt_at")
        .values_list("id", "endpoint_id")[:5000]
    )
    ids = [d for d, _ in due]
    if ids:
        with transaction.atomic():
            _enqueue(ids, dict(due))
    return {"fanned_out": fanned, "due": len(ids)}


# --- replay ----------------------------------------------------------------------------------


@dataclass
class ReplayPlan:
    deliveries: list[OutboundDelivery]
    applied: bool = False

    def render(self) -> str:
        by_status: dict[str, int] = {}
        for d in self.deliveries:
            by_status[d.status] = by_status.get(d.status, 0) + 1
        states = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "none"
        verb = "queued" if self.applied else "would queue"
        return f"{verb} {len(self.deliveries)} deliveries for replay ({states})"


def deliveries_for_replay(
    *,
    message: OutboxMessage | None = None,
    endpoint: WebhookEndpoint | None = None,
    type: str | None = None,
    since: datetime | None = None,
    dead_only: bool = False,
    ids: Iterable[int] | None = None,
) -> QuerySet[OutboundDelivery]:
    """Selects deliveries: one message's, an endpoint's (``dead_only`` for its dead ones), or a
    type's since a time. Deliveries being sent right now are never selected."""
    qs = OutboundDelivery.objects.exclude(status=OutboundDelivery.Status.SENDING)
    if ids is not None:
        qs = qs.filter(pk__in=list(ids))
    if message is not None:
        qs = qs.filter(message=message)
    if endpoint is not None:
        qs = qs.filter(endpoint=endpoint)
    if type:
        qs = qs.filter(message__type=type)
    if since is not None:
        qs = qs.filter(message__created_at__gte=since)
    if dead_only:
        qs = qs.filter(status=OutboundDelivery.Status.DEAD)
    return qs.select_related("message", "endpoint").order_by("id")


def deliveries_replay(
    *, deliveries: QuerySet[OutboundDelivery], actor: Any, reason: str, dry_run: bool = True
) -> ReplayPlan:
    """Queues the selected deliveries again under their original message id (receivers
    deduplicate on ``webhook-id``). Attempts start counting afresh toward the dead bound; the
    attempt history is kept. Audited per endpoint, in the transaction that re-queues."""
    if not dry_run and not reason.strip():
        raise ValidationFailed("A reason is required.", details={"reason": "required"})
    plan = ReplayPlan(deliveries=list(deliveries))
    if dry_run or not plan.deliveries:
        return plan
    now = timezone.now()
    ids = [d.pk for d in plan.deliveries]
    with transaction.atomic():
        OutboundDelivery.objects.filter(pk__in=ids).exclude(
            status=OutboundDelivery.Status.SENDING
        ).update(
            status=OutboundDelivery.Status.PENDING,
            attempts=0,
            next_attempt_at=now,
            claimed_by="",
            claimed_at=None,
        )
        per_endpoint: dict[int, list[str]] = {}
        for d in plan.deliveries:
            per_endpoint.setdefault(d.endpoint_id, []).append(d.message.msg_id)
        for endpoint_id, msg_ids in per_endpoint.items():
            audit.record(
                actor=actor,
                action="webhook_delivery.replay",
                target_type="webhooks.webhookendpoint",
                target_id=str(endpoint_id),
                reason=reason,
                after={"deliveries": len(msg_ids), "messages": msg_ids[:100]},
            )
        _enqueue_replay(ids)
    REPLAYS.labels(kind="outbound_webhook", outcome="queued").inc(len(ids))
    plan.applied = True
    return plan


def _enqueue_replay(ids: list[int]) -> None:
    def send() -> None:
        from webhooks import tasks

        for start in range(0, len(ids), DELIVERY_BATCH):
            tasks.outbound_deliver.delay(
                ids[start : start + DELIVERY_BATCH], DeliveryAttempt.Trigger.REPLAY
            )

    transaction.on_commit(send)


# --- smoke -----------------------------------------------------------------------------------


def smoke_send(*, timeout: float = 20.0) -> dict[str, Any]:
    """Publishes a ``neruba.smoke`` message, fans it out and delivers it right here (not via
    the worker, so the check says whether signing and the network path work even when the
    queue is backed up). Returns per-endpoint outcomes; no endpoint subscribed is reported."""
    endpoints = list(WebhookEndpoint.objects.filter(enabled=True).values_list("id", "event_types"))
    wanted = [pk for pk, types in endpoints if SMOKE_TYPE in (types or [])]
    with transaction.atomic():
        message = outbox.publish(
            type=SMOKE_TYPE, data={"check": "smoke", "at": timezone.now()}, force=True
        )
        assert message is not None
        # Fanned out here, in the message's own transaction, so this call owns its deliveries
        # (the after-commit fan-out finds nothing left to do).
        deliveries = [
            OutboundDelivery.objects.create(
                message=message, endpoint_id=pk, next_attempt_at=timezone.now()
            )
            for pk in wanted
        ]
        OutboxMessage.objects.filter(pk=message.pk).update(fanned_out_at=timezone.now())
    counts = deliveries_send(delivery_ids=[d.pk for d in deliveries])
    attempts = {
        a.delivery.endpoint_id: a
        for a in DeliveryAttempt.objects.filter(delivery__in=deliveries).select_related("delivery")
    }
    return {
        "msg_id": message.msg_id,
        "endpoints": len(wanted),
        "counts": counts.as_dict(),
        "results": [
            {
                "endpoint": pk,
                "outcome": attempts[pk].outcome if pk in attempts else "not sent",
                "status_code": attempts[pk].status_code if pk in attempts else None,
                "error": attempts[pk].error if pk in attempts else "",
            }
            for pk in wanted
        ],
    }
