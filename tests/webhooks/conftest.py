from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from tests.webhooks.helpers import SECRET, post


@pytest.fixture(autouse=True)
def webhook_settings(settings: Any) -> None:
    settings.NERUBA = {
        **settings.NERUBA,
        "STRIPE_WEBHOOK_SECRETS": [SECRET],
        "STRIPE_WEBHOOK_TOLERANCE": 300,
        "STRIPE_WEBHOOK_MAX_ATTEMPTS": 4,
        "STRIPE_WEBHOOK_MAX_BYTES": 1_048_576,
    }


@pytest.fixture
def deliver(
    client: Client, django_capture_on_commit_callbacks: Callable[..., Any]
) -> Callable[..., Any]:
    """POSTs a signed delivery and runs what was enqueued after commit (Celery is eager in
    tests), as the worker would."""

    def send(body: bytes, signature: str | None) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return post(client, body, signature)

    return send
