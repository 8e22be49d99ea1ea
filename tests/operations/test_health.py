from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client, override_settings
from django.utils import timezone

from neruba.config import load
from operations.health import heartbeat_record
from operations.models import Heartbeat
from tests.neruba.routes import api_routes

CHECKS = {"database", "migrations", "broker", "scheduler", "settings", "outbound_webhooks"}


def readyz(client: Client) -> tuple[int, dict[str, Any]]:
    response = client.get("/readyz")
    body = response.json()
    assert set(body) == {"status", "checks"}
    assert set(body["checks"]) == CHECKS
    for check in body["checks"].values():
        assert set(check) == {"ok", "detail"}
        assert isinstance(check["ok"], bool) and isinstance(check["detail"], str)
        assert check["detail"]
    return response.status_code, body


def failing(body: dict[str, Any]) -> set[str]:
    return {name for name, check in body["checks"].items() if not check["ok"]}


def test_healthz_answers_ok_without_touching_the_database(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_readyz_is_ready_when_every_check_passes(client: Client) -> None:
    heartbeat_record(name="beat")
    status, body = readyz(client)
    assert (status, body["status"]) == (200, "ready"), body
    assert failing(body) == set()


@pytest.mark.django_db
def test_readyz_is_degraded_without_a_scheduler_heartbeat(client: Client) -> None:
    status, body = readyz(client)
    assert (status, body["status"]) == (200, "degraded")
    assert failing(body) == {"scheduler"}
    assert "no scheduler heartbeat" in body["checks"]["scheduler"]["detail"]


@pytest.mark.django_db
def test_readyz_turns_degraded_when_the_heartbeat_goes_stale(client: Client) -> None:
    max_age = settings.NERUBA["NERUBA_HEARTBEAT_MAX_AGE"]
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        heartbeat_record(name="beat")
    with time_machine.travel(start + timedelta(seconds=max_age - 1), tick=False):
        assert readyz(client)[1]["status"] == "ready"
    with time_machine.travel(start + timedelta(seconds=max_age + 60), tick=False):
        status, body = readyz(client)
        metrics = client.get("/metrics").content.decode()
    assert (status, body["status"]) == (200, "degraded")
    assert f"neruba_scheduler_heartbeat_age_seconds {max_age + 60}.0" in metrics
    assert failing(body) == {"scheduler"}
    assert body["checks"]["scheduler"]["detail"] == (f"scheduler heartbeat is {max_age + 60}s old")


@pytest.mark.django_db
def test_a_new_heartbeat_makes_readyz_ready_again(client: Client) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        heartbeat_record(name="beat")
    with time_machine.travel(start + timedelta(hours=1), tick=False):
        assert readyz(client)[1]["status"] == "degraded"
        heartbeat_record(name="beat", detail="back")
        assert readyz(client)[1]["status"] == "ready"
    assert Heartbeat.objects.filter(name="beat").count() == 1


@pytest.mark.django_db
def test_readyz_reports_fatal_settings_problems(client: Client) -> None:
    heartbeat_record(name="beat")
    with override_settings(CONFIG=load({"NERUBA_ENV": "production"})):
        status, body = readyz(client)
    assert status == 503 and failing(body) == {"settings"}
    assert "fatal configuration problem" in body["checks"]["settings"]["detail"]


@pytest.mark.django_db
def test_readyz_reports_an_unwritable_broker(client: Client, tmp_path: Path) -> None:
    heartbeat_record(name="beat")
    if settings.REDIS_URL:
        broken = {"REDIS_URL": "redis://127.0.0.1:1/0"}
    else:
        options = {
            **settings.CELERY_BROKER_TRANSPORT_OPTIONS,
            "data_folder_in": str(tmp_path / "missing"),
        }
        broken = {"CELERY_BROKER_TRANSPORT_OPTIONS": options}
    with override_settings(**broken):
        status, body = readyz(client)
    assert status == 503 and failing(body) == {"broker"}


@pytest.mark.django_db
def test_readyz_is_not_ready_with_an_unapplied_migration_even_when_degraded(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from operations import health

    shipped = health._known_migrations() | {("billing", "9999_i13_not_applied")}
    monkeypatch.setattr(health, "_known_migrations", lambda: shipped)
    status, body = readyz(client)
    assert (status, body["status"]) == (503, "not_ready")
    assert failing(body) == {"migrations", "scheduler"}
    assert "billing.9999_i13_not_applied" in body["checks"]["migrations"]["detail"]


@pytest.mark.django_db
def test_a_readiness_probe_builds_no_migration_graph(
    client: Client, django_assert_max_num_queries: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db.migrations import loader

    heartbeat_record(name="beat")
    client.get("/readyz")  # the first probe of the process reads the migrations from disk
    built: list[object] = []
    original = loader.MigrationLoader.__init__
    monkeypatch.setattr(
        loader.MigrationLoader,
        "__init__",
        lambda self, *a, **k: built.append(self) or original(self, *a, **k),
    )
    # Eight small queries a probe: SELECT 1, the applied migrations, the heartbeat, the active
    # beat, and the outbound backlog's four index-backed reads (counts, two oldest, disabled).
    with django_assert_max_num_queries(40):
        for _ in range(5):
            assert readyz(client)[1]["status"] == "ready"
    assert built == []


# --- API docs gating ----------------------------------------------------------------------


def staff_client(is_staff: bool) -> Client:
    user = User.objects.create_user(
        username="staff" if is_staff else "plain", password="pw-Neruba-123", is_staff=is_staff
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db
@override_settings(NERUBA_API_DOCS="off")
def test_docs_off_answers_404_to_everyone(client: Client) -> None:
    for c in (client, staff_client(True)):
        assert c.get("/docs").status_code == 404
        assert c.get("/openapi.json").status_code == 404


@pytest.mark.django_db
@override_settings(NERUBA_API_DOCS="public")
def test_public_docs_serve_a_json_schema_with_every_api_path(client: Client) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/")
    schema = json.loads(response.content)
    missing = {r.openapi_path for r in api_routes()} - set(schema["paths"])
    assert missing == set()


@pytest.mark.django_db
@override_settings(NERUBA_API_DOCS="staff")
def test_staff_docs_ask_anonymous_visitors_to_log_in_and_hide_the_schema(client: Client) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 302
    assert docs["Location"].startswith("/admin/login/") and "next=/docs" in docs["Location"]
    assert client.get("/openapi.json").status_code == 404


@pytest.mark.django_db
@override_settings(NERUBA_API_DOCS="staff")
def test_staff_docs_are_hidden_from_logged_in_non_staff() -> None:
    client = staff_client(False)
    assert client.get("/docs").status_code == 404
    assert client.get("/openapi.json").status_code == 404


@pytest.mark.django_db
@override_settings(NERUBA_API_DOCS="staff")
def test_staff_docs_are_served_to_staff() -> None:
    client = staff_client(True)
    assert client.get("/docs").status_code == 200
    response = client.get("/openapi.json")
    assert (
        response.status_code == 200 and "/api/v1/customers" in json.loads(response.content)["paths"]
    )


@pytest.mark.django_db
def test_the_schema_builds_without_warnings_and_documents_every_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "openapi.json"
    call_command(
        "spectacular",
        "--fail-on-warn",
        "--validate",
        "--format",
        "openapi-json",
        "--file",
        str(target),
    )
    schema = json.loads(target.read_text())
    for route in api_routes():
        operations = schema["paths"].get(route.openapi_path)
        assert operations, f"{route.openapi_path} is not in the schema"
        scopes: dict[str, str] = getattr(route.view_class, "required_scopes", {})
        for method in route.methods:
            assert method.lower() in operations, f"{method} {route.openapi_path}"
        assert set(scopes) - {"*"} <= {m.upper() for m in operations}


@pytest.mark.django_db
def test_health_and_readiness_are_exempt_from_the_https_redirect() -> None:
    heartbeat_record(name="beat")
    with override_settings(SECURE_SSL_REDIRECT=True):
        client = Client()
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        redirected = client.get("/api/v1/customers")
        assert redirected.status_code == 301
        assert redirected["Location"].startswith("https://")


@pytest.mark.django_db
def test_the_beat_heartbeat_task_makes_readyz_ready(client: Client) -> None:
    from operations.tasks import heartbeat

    assert readyz(client)[1]["status"] == "degraded"
    heartbeat.delay()
    status, body = readyz(client)
    assert (status, body["status"]) == (200, "ready"), body
    assert body["checks"]["scheduler"]["detail"].startswith("scheduler heartbeat")
