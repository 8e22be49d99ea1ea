"""Real Stripe object shapes (a verbatim subset of stripe-mock's ``fixtures3.json``) and a
signer, for the demo data, the benchmark and the tests. Never used on the request path."""

from __future__ import annotations

import copy
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

import stripe

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "stripe_objects.json"
API_VERSION = "2026-10-28.endive"


@cache
def _resources() -> dict[str, Any]:
    return json.loads(FIXTURES.read_text())["resources"]


def stripe_object(name: str, **overrides: Any) -> dict[str, Any]:
    """A fresh copy of the fixture object ``name`` (``invoice``, ``charge``, ``refund``,
    ``dispute``, ``customer``, ``deleted_customer``) with top-level fields replaced."""
    obj = copy.deepcopy(_resources()[name])
    obj.update(overrides)
    return obj


def stripe_event(
    obj: dict[str, Any], *, type: str, id: str, created: int | None = None
) -> dict[str, Any]:
    """``obj`` wrapped in the fixture event's envelope."""
    envelope = copy.deepcopy(_resources()["event"])
    envelope.update(
        id=id,
        type=type,
        created=int(time.time()) if created is None else created,
        api_version=API_VERSION,
        data={"object": obj},
    )
    return envelope


def event_body(event: dict[str, Any]) -> bytes:
    """Bytes as Stripe sends them (pretty-printed JSON)."""
    return json.dumps(event, indent=2).encode()


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header for ``body``, made by the Stripe SDK."""
    return stripe.WebhookSignature.generate_signature_header(
        body.decode("utf-8"), secret, timestamp
    )
