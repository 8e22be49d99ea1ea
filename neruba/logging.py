"""Logging filters: request context on every record, secrets never leave the process."""

from __future__ import annotations

import logging
import re

from neruba import context

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]+"), "[redacted]"),
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "[redacted]"),
    (re.compile(r"(Api-Key\s+)\S+", re.IGNORECASE), r"\1[redacted]"),
    (re.compile(r"(Bearer\s+)\S+", re.IGNORECASE), r"\1[redacted]"),
    (re.compile(r"(://[^:/@\s]*:)[^@\s]+@"), r"\1[redacted]@"),
]


def redact(text: str) -> str:
    """Removes API keys, Stripe keys and secrets, bearer tokens and URL passwords from text."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    try:
        from django.conf import settings

        if settings.configured:
            cfg = settings.NERUBA
            values = [cfg.get("SECRET_KEY"), cfg.get("STRIPE_SECRET_KEY"), cfg.get("METRICS_TOKEN")]
            values += list(cfg.get("STRIPE_WEBHOOK_SECRETS", []))
            for value in values:
                if value and len(value) >= 8 and value in text:
                    text = text.replace(value, "[redacted]")
    except Exception:  # noqa: S110 - redaction must never break logging
        pass
    return text


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = context.request_id.get()
        record.api_key_prefix = context.api_key_prefix.get()
        record.idempotency_key = context.idempotency_key.get()
        record.stripe_event_id = context.stripe_event_id.get()
        return True


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
