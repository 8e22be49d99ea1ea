from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from ingest.models import IngestRejection, UsageEvent
from neruba.models import ApiKey, AuditEntry, Customer
from neruba.servers import gunicorn_server
from operations.health import heartbeat_record
from operations.smoke import SMOKE_CUSTOMER, smoke_run
from webhooks.models import StripeEvent

STEPS = [
    "readiness",
    "ingest accepted",
    "ingest duplicate",
    "ingest conflict",
    "event lookup",
    "webhook signed+stored",
    "outbound webhook delivered",
    "scheduler heartbeat",
]


@pytest.mark.django_db
def test_smoke_passes_in_process_and_its_data_is_never_billed() -> None:
    heartbeat_record(name="beat")
    lines: list[str] = []
    report = smoke_run(emit=lines.append)
    assert [s.name for s in report.steps] == STEPS
    assert report.ok, "\n".join(lines)
    assert lines[-1].startswith("smoke: PASS 8/8")
    smoke_customer = Customer.objects.get(external_id=SMOKE_CUSTOMER)
    assert UsageEvent.objects.filter(customer=smoke_customer).count() == 1
    assert not smoke_customer.subscriptions.exists()
    assert StripeEvent.objects.filter(stripe_id__startswith="evt_smoke_").count() == 1
    # The temporary key is revoked when the run ends.
    assert not ApiKey.objects.filter(name__startswith="smoke ", revoked=False).exists()


@pytest.mark.django_db
def test_repeated_smoke_runs_leave_no_open_rejection_and_each_dismissal_is_audited() -> None:
    heartbeat_record(name="beat")
    for _ in range(3):
        assert smoke_run(emit=lambda line: None).ok
    assert not IngestRejection.objects.filter(status="open").exists()
    assert IngestRejection.objects.filter(status="dismissed", outcome="conflict").count() == 3
    assert AuditEntry.objects.filter(action="ingest_rejection.dismiss").count() == 3


@pytest.mark.django_db
def test_smoke_names_the_console_runbook_url_when_it_knows_the_base_url() -> None:
    lines: list[str] = []
    # Nothing listens on port 9 (discard): every step fails fast, and each names its runbook.
    report = smoke_run(base_url="http://127.0.0.1:9/", api_key="unused", emit=lines.append)
    assert not report.ok
    readiness = report.steps[0]
    assert readiness.runbook == "http://127.0.0.1:9/console/runbooks/incident-triage#readiness"
    assert any(
        "-> runbook: http://127.0.0.1:9/console/runbooks/incident-triage#readiness" in line
        for line in lines
    )


@pytest.mark.django_db
def test_smoke_with_a_wrong_webhook_secret_fails_at_the_webhook_step_and_names_the_runbook() -> (
    None
):
    heartbeat_record(name="beat")
    lines: list[str] = []
    report = smoke_run(webhook_secret="whsec_d3Jvbmctc2VjcmV0", emit=lines.append)
    failed = [s for s in report.steps if not s.ok]
    assert [s.name for s in failed] == ["webhook signed+stored"]
    assert "bad_signature" in failed[0].detail
    assert failed[0].runbook.startswith("/console/runbooks/webhooks#signature-failures")
    assert any(
        "-> runbook: /console/runbooks/webhooks#signature-failures" in line for line in lines
    )
    assert lines[-1].startswith("smoke: FAIL 7/8")


@pytest.mark.django_db
def test_smoke_fails_on_the_heartbeat_without_a_scheduler_while_readiness_is_degraded() -> None:
    report = smoke_run(emit=lambda line: None)
    failed = {s.name for s in report.steps if not s.ok}
    assert failed == {"scheduler heartbeat"}
    assert not report.ok
    readiness = next(s for s in report.steps if s.name == "readiness")
    assert readiness.detail == "degraded"


@pytest.mark.django_db
def test_the_smoke_command_exits_non_zero_when_a_step_fails() -> None:
    with pytest.raises(CommandError):
        call_command("smoke", "--webhook-secret", "whsec_d3Jvbmctc2VjcmV0")


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_smoke_passes_against_a_gunicorn_server_on_postgresql_and_redis() -> None:
    import os

    heartbeat_record(name="beat")
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {"NERUBA_ENV": "development", "DATABASE_URL": url, "REDIS_URL": os.environ["REDIS_URL"]}
    lines: list[str] = []
    with gunicorn_server(workers=2, env=env) as base:
        report = smoke_run(base_url=base, emit=lines.append)
    assert report.ok, "\n".join(lines)
    assert report.target.startswith("http://127.0.0.1:")


@pytest.mark.django_db
def test_in_process_smoke_does_not_repeat_its_own_expected_refusals_as_warnings(caplog) -> None:
    heartbeat_record(name="beat")
    with caplog.at_level("WARNING", logger="django.request"):
        assert smoke_run(emit=lambda line: None).ok
    assert not [r for r in caplog.records if r.name == "django.request"]
