"""``leased_run``, the one skeleton of every scheduled job, and the fenced transaction."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction
from prometheus_client import REGISTRY

from neruba import locks
from neruba.fencing import LeasedRun, Outcome, fenced, leased_run
from neruba.models import SchedulerLock
from tests.factories import leases_expire

pytestmark = pytest.mark.django_db


def _count(job: str, status: str) -> float:
    labels = {"job": job, "status": status}
    return REGISTRY.get_sample_value("neruba_leased_runs_total", labels) or 0


def _run(body: Any, *, job: str = "test-job", reraise: bool = False, dry_run: bool = False):
    log: list[Any] = []

    def finish(record: dict[str, Any], outcome: Outcome) -> str:
        record["outcome"] = outcome
        status = "lost" if outcome.lock_lost else "failed" if outcome.error else "succeeded"
        log.append(status)
        return status

    record = leased_run(
        lock="test-lock",
        job=job,
        dry_run=dry_run,
        held=lambda holder: {"status": "lock_held", "holder": holder},
        start=lambda holder, lease: {"holder": holder, "token": lease.token if lease else None},
        body=body,
        finish=finish,
        abandon=lambda record: log.append("abandon"),
        reraise=reraise,
    )
    return record, log


def test_a_run_takes_the_lease_records_finishes_releases_and_counts() -> None:
    seen: list[LeasedRun[Any]] = []
    before = _count("test-job", "succeeded")
    record, log = _run(seen.append)
    assert record["token"] == 1 and record["outcome"] == Outcome()
    assert seen[0].lease is not None and seen[0].record is record
    assert log == ["abandon", "succeeded"]
    assert SchedulerLock.objects.get(name="test-lock").holder == ""  # released
    assert _count("test-job", "succeeded") == before + 1


def test_a_held_lease_records_lock_held_and_runs_nothing() -> None:
    assert locks.lock_acquire(name="test-lock", holder="other") is not None
    ran: list[object] = []
    before = _count("test-job", "lock_held")
    record, log = _run(ran.append)
    assert record["status"] == "lock_held" and ran == [] and log == []
    assert _count("test-job", "lock_held") == before + 1


def test_a_lease_lost_mid_run_ends_it_as_lost_and_its_write_is_rolled_back() -> None:
    SchedulerLock.objects.create(name="test-writes", holder="before")

    def body(run: LeasedRun[Any]) -> None:
        leases_expire("test-lock")
        assert locks.lock_acquire(name="test-lock", holder="taker") is not None
        with run.fenced():
            SchedulerLock.objects.filter(name="test-writes").update(holder="stale")

    record, log = _run(body)
    assert record["outcome"].lock_lost and log[-1] == "lost"
    assert SchedulerLock.objects.get(name="test-writes").holder == "before"
    assert SchedulerLock.objects.get(name="test-lock").holder == "taker", "not released by us"


def test_a_lease_lost_inside_the_transaction_is_refused_at_its_last_statement() -> None:
    lease = locks.lock_acquire(name="test-lock", holder="a")
    assert lease is not None
    SchedulerLock.objects.create(name="test-writes", holder="before")
    with pytest.raises(locks.LockLost), transaction.atomic(), fenced(lease):
        SchedulerLock.objects.filter(name="test-writes").update(holder="stale")
        leases_expire("test-lock")  # the lease runs out while the transaction writes
    assert SchedulerLock.objects.get(name="test-writes").holder == "before"


def test_an_error_fails_the_run_and_is_reraised_only_when_asked() -> None:
    def body(run: LeasedRun[Any]) -> None:
        raise ValueError("boom")

    record, log = _run(body)
    assert isinstance(record["outcome"].error, ValueError) and log[-1] == "failed"
    with pytest.raises(ValueError):
        _run(body, reraise=True)
    assert SchedulerLock.objects.get(name="test-lock").holder == ""


def test_a_dry_run_takes_no_lease() -> None:
    record, log = _run(lambda run: None, dry_run=True)
    assert record["token"] is None and "abandon" not in log
    assert not SchedulerLock.objects.filter(name="test-lock").exists()
