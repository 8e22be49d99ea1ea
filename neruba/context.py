"""Per-request (or per-task) context carried into every log line."""

from __future__ import annotations

from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("request_id", default="-")
api_key_prefix: ContextVar[str] = ContextVar("api_key_prefix", default="")
idempotency_key: ContextVar[str] = ContextVar("idempotency_key", default="")
stripe_event_id: ContextVar[str] = ContextVar("stripe_event_id", default="")
