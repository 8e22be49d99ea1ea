"""Archiving a month of events (PostgreSQL): export, detach, drop; keys stay refused."""

from __future__ import annotations

import csv
import gzip
import io
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import connection

from ingest.corrections import event_amend, event_for_key, event_void
from ingest.exceptions import EventNotCorrectable
from ingest.models import EventArchive, EventCorrection, EventKey, UsageEvent
from ingest.selectors import event_history
from ingest.services import events_ingest
from neruba.models import AuditEntry
from operations.explain import explain_key
from tests.factories import CustomerFactory, MetricFactory
from tests.ingest.conftest import event

MONTH = date(2029, 1, 1)
DAY = 86_400


def _exists(table: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
        return bool(cursor.fetchone()[0])


@pytest.fixture
def january(db: None, settings: Any) -> list[int]:
    """Five events stored in January 2029, then the clock moved to July 2029 with archival on
    after 90 days."""
    settings.NERUBA = {**settings.NERUBA, "NERUBA_EVENT_ARCHIVE_AFTER": 90 * DAY}
    CustomerFactory(external_id="acme")
    MetricFactory(code="api_calls", aggregation="count")
    with time_machine.travel(datetime(2029, 1, 20, tzinfo=UTC), tick=False):
        result = events_ingest(
            payloads=[event(f"jan-{i}", timestamp="2029-01-19T10:00:00Z") for i in range(5)],
            api_key=None,
        )
    assert result.counts["accepted"] == 5
    return [r["event_id"] for r in result.results]


def _archive(tmp_path: Path, *extra: str) -> str:
    out = io.StringIO()
    call_command(
        "archive_events", "--month", "2029-01", "--output", str(tmp_path), *extra, stdout=out
    )
    return out.getvalue()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_archiving_a_month_exports_it_detaches_it_and_keeps_its_keys_refused(
    january: list[int], tmp_path: Path, api: Any
) -> None:
    with time_machine.travel(datetime(2029, 7, 1, tzinfo=UTC), tick=False):
        preview = _archive(tmp_path)
        assert "would archive 5 events" in preview and "dry run" in preview
        assert _exists("ingest_usageevent_y2029m01") and not EventArchive.objects.exists()
        assert not list(tmp_path.iterdir())

        done = _archive(tmp_path, "--apply", "--reason", "storage")
        assert "archived 5 events" in done
        assert not _exists("ingest_usageevent_y2029m01")
        archive = EventArchive.objects.get()
        assert (archive.month, archive.events) == (MONTH, 5)
        with gzip.open(archive.path, "rt", newline="") as exported:
            rows = list(csv.DictReader(exported))
        assert sorted(int(r["id"]) for r in rows) == sorted(january)
        assert {r["idempotency_key"] for r in rows} == {f"jan-{i}" for i in range(5)}
        entry = AuditEntry.objects.get(action="usage_events.archive")
        assert entry.reason == "storage" and entry.after["events"] == 5

        # Lookups say archived, not "not found".
        found = event_history(idempotency_key="jan-0")
        assert found is not None and found["event"] is None
        assert found["archived"]["month"] == "2029-01"
        response = api("read").get("/api/v1/events/jan-0")
        assert response.status_code == 200
        assert response.json()["archived"]["month"] == "2029-01"
        assert explain_key(idempotency_key="jan-0").verdict == "Archived with month 2029-01."

        # The key registry still refuses the key, in any month: never a second row.
        reused = events_ingest(
            payloads=[event("jan-0", timestamp="2029-06-30T10:00:00Z")], api_key=None
        )
        assert reused.results[0]["outcome"] == "conflict"
        assert "archived" in reused.results[0]["error"]["message"]
        assert EventKey.objects.filter(idempotency_key="jan-0").count() == 1
        assert not UsageEvent.objects.filter(idempotency_key="jan-0").exists()

        # Archived once: a second run is refused, and the month is not re-created.
        with pytest.raises(CommandError, match="archive_refused"):
            _archive(tmp_path, "--apply")
    assert not _exists("ingest_usageevent_y2029m01")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_archival_is_refused_when_off_or_for_a_month_ingest_could_still_write(
    january: list[int], tmp_path: Path, settings: Any
) -> None:
    with time_machine.travel(datetime(2029, 3, 1, tzinfo=UTC), tick=False):
        with pytest.raises(CommandError, match="too recent"):
            _archive(tmp_path, "--apply")
    settings.NERUBA = {**settings.NERUBA, "NERUBA_EVENT_ARCHIVE_AFTER": 0}
    with time_machine.travel(datetime(2029, 12, 1, tzinfo=UTC), tick=False):
        with pytest.raises(CommandError, match="Archival is off"):
            _archive(tmp_path, "--apply")
    assert _exists("ingest_usageevent_y2029m01") and UsageEvent.objects.count() == 5
    assert not AuditEntry.objects.filter(action="usage_events.archive").exists()


def test_archival_on_sqlite_is_refused_with_a_clear_error(
    db: None, tmp_path: Path, settings: Any
) -> None:
    if connection.vendor == "postgresql":
        pytest.skip("SQLite only: PostgreSQL archives (tested above)")
    settings.NERUBA = {**settings.NERUBA, "NERUBA_EVENT_ARCHIVE_AFTER": 90 * DAY}
    with pytest.raises(CommandError, match="partitioned event store"):
        _archive(tmp_path, "--apply")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_archive_whose_export_failed_resumes_from_the_detached_table(
    january: list[int], tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the export directory should be")
    with time_machine.travel(datetime(2029, 7, 1, tzinfo=UTC), tick=False):
        with pytest.raises(FileExistsError):
            call_command(
                "archive_events", "--month", "2029-01", "--apply", "--output", str(blocked)
            )
        # Detached and recorded, not exported: the month already left the live store.
        assert not _exists("ingest_usageevent_y2029m01")
        assert _exists("ingest_usageevent_y2029m01_archived")
        assert EventArchive.objects.get().path == ""
        done = _archive(tmp_path, "--apply")
    assert "archived 5 events" in done
    assert not _exists("ingest_usageevent_y2029m01_archived")
    assert EventArchive.objects.get().path.endswith("usage-events-2029-01.csv.gz")
    assert AuditEntry.objects.filter(action="usage_events.archive").count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_corrections_on_the_partitioned_store_keep_keys_refused_and_survive_archival(
    january: list[int], tmp_path: Path
) -> None:
    with time_machine.travel(datetime(2029, 1, 25, tzinfo=UTC), tick=False):
        event_void(event=event_for_key(idempotency_key="jan-0"), actor=None, reason="double")
        amended = event_amend(
            event=event_for_key(idempotency_key="jan-1"),
            actor=None,
            reason="unit",
            properties={"endpoint": "/v1/other"},
        )
        # The amendment's row is in the original's partition and claims no registry key.
        replacement = UsageEvent.objects.get(pk=amended.replacement_id)
        assert replacement.idempotency_key is None and replacement.amends_id == january[1]
        assert EventKey.objects.count() == 5
        assert not EventKey.objects.filter(event_id=replacement.pk).exists()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT tableoid::regclass::text FROM ingest_usageevent WHERE id = %s",
                [replacement.pk],
            )
            assert cursor.fetchone()[0] == "ingest_usageevent_y2029m01"
        # A voided key stays refused: a resend is a duplicate, never a second counted row.
        again = events_ingest(
            payloads=[event("jan-0", timestamp="2029-01-19T10:00:00Z")], api_key=None
        )
        assert again.results[0]["outcome"] == "duplicate"
        assert UsageEvent.objects.filter(idempotency_key="jan-0").count() == 1
        counted = UsageEvent.objects.filter(voided_at__isnull=True).count()
        assert counted == 4  # jan-0 voided; jan-1 replaced by its amendment

    with time_machine.travel(datetime(2029, 7, 1, tzinfo=UTC), tick=False):
        assert "archived 6 events" in _archive(tmp_path, "--apply", "--reason", "storage")
        # The corrections stay (no constraint ties them to the detached partition), the keys
        # stay refused, and an archived event can no longer be corrected.
        assert EventCorrection.objects.count() == 2
        reused = events_ingest(
            payloads=[event("jan-0", timestamp="2029-06-30T10:00:00Z")], api_key=None
        )
        assert reused.results[0]["outcome"] == "conflict"
        with pytest.raises(EventNotCorrectable, match="archived"):
            event_for_key(idempotency_key="jan-1")
