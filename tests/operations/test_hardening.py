from __future__ import annotations

import logging

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

from neruba.logging import RedactSecretsFilter, redact


def _login(client: Client, password: str) -> int:
    return client.post(
        "/admin/login/?next=/admin/", {"username": "admin", "password": password}
    ).status_code


@pytest.mark.django_db
def test_console_login_is_locked_out_after_repeated_failures_even_with_the_right_password() -> None:
    User.objects.create_superuser("admin", "admin@example.com", "right-Password-1")
    with override_settings(AXES_ENABLED=True, AXES_FAILURE_LIMIT=3):
        client = Client()
        assert [_login(client, "wrong") for _ in range(2)] == [200, 200]
        locked = _login(client, "wrong")
        assert locked == 429
        assert _login(client, "right-Password-1") == 429


@pytest.mark.django_db
def test_a_successful_login_before_the_limit_logs_in() -> None:
    User.objects.create_superuser("admin", "admin@example.com", "right-Password-1")
    with override_settings(AXES_ENABLED=True, AXES_FAILURE_LIMIT=3):
        client = Client()
        assert _login(client, "wrong") == 200
        assert _login(client, "right-Password-1") == 302


def test_secrets_are_redacted_from_log_text() -> None:
    text = (
        "key sk_live_abc123DEF whsec_Zm9vYmFy Api-Key pfx.secretpart "
        "Bearer tok123 postgres://neruba:hunter2@db:5432/neruba"
    )
    cleaned = redact(text)
    for secret in ("sk_live_abc123DEF", "whsec_Zm9vYmFy", "pfx.secretpart", "tok123", "hunter2"):
        assert secret not in cleaned
    assert "postgres://neruba:[redacted]@db:5432/neruba" in cleaned


def test_the_log_filter_redacts_formatted_messages_and_arguments() -> None:
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "secret is %s", ("whsec_abcdef123456",), None
    )
    assert RedactSecretsFilter().filter(record)
    assert "whsec_" not in record.getMessage()


def test_every_response_carries_a_request_id_and_security_headers(client: Client) -> None:
    response = client.get("/healthz", HTTP_X_REQUEST_ID="req-123")
    assert response["X-Request-ID"] == "req-123"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    bad = client.get("/healthz", HTTP_X_REQUEST_ID="not valid id with spaces")
    assert bad["X-Request-ID"] != "not valid id with spaces" and len(bad["X-Request-ID"]) == 32


@pytest.mark.django_db
def test_json_log_lines_carry_request_id_and_api_key_prefix_and_no_secrets(api) -> None:
    import io
    import json

    from django.conf import settings
    from pythonjsonlogger.json import JsonFormatter

    from neruba.logging import RequestContextFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(settings.LOGGING["formatters"]["json"]["fmt"]))
    handler.addFilter(RequestContextFilter())
    handler.addFilter(RedactSecretsFilter())
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    try:
        client = api("ingest")  # lacks `read`: the 403 is logged by django.request
        client.credentials(
            HTTP_AUTHORIZATION=client._credentials["HTTP_AUTHORIZATION"],
            HTTP_X_REQUEST_ID="req-json-1",
        )
        assert client.get("/api/v1/customers").status_code == 403
        logging.getLogger("django.request").warning("leaked whsec_c2VjcmV0c2VjcmV0 in a message")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    forbidden = next(line for line in lines if "Forbidden" in line["message"])
    assert forbidden["request_id"] == "req-json-1"
    assert len(forbidden["api_key_prefix"]) == 8
    assert "whsec_" not in stream.getvalue()
