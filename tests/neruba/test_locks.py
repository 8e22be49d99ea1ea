from __future__ import annotations

import itertools
import os
import signal
import time
from datetime import timedelta

import pytest
from django.db import transaction

from billing.services import BILLING_LOCK
from neruba import locks
from neruba.fencing import fenced
from neruba.models import AuditEntry, SchedulerLock
from operations.sweeps import sweep_run
from tests import processes
from tests.factories import leases_expire

TTL = timedelta(seconds=30)


@pytest.mark.django_db
def test_first_acquire_creates_the_lock_with_token_one() -> None:
    lease = locks.lock_acquire(name="scan", holder="a", ttl=TTL)
    assert lease is not None and lease.token == 1
    assert SchedulerLock.objects.get(name="scan").holder == "a"


@pytest.mark.django_db
def test_a_held_lock_cannot_be_acquired_by_another_holder() -> None:
    assert locks.lock_acquire(name="scan", holder="a", ttl=TTL) is not None
    assert locks.lock_acquire(name="scan", holder="b", ttl=TTL) is None


@pytest.mark.django_db
def test_an_expired_lease_is_taken_over_with_a_higher_token() -> None:
    first = locks.lock_acquire(name="scan", holder="a", ttl=TTL)
    leases_expire("scan")
    second = locks.lock_acquire(name="scan", holder="b", ttl=TTL)
    assert first is not None and second is not None
    assert second.token == first.token + 1


@pytest.mark.django_db
def test_heartbeat_extends_only_while_the_token_is_ours() -> None:
    first = locks.lock_acquire(name="scan", holder="a", ttl=TTL)
    assert first is not None
    assert locks.lock_heartbeat(lease=first, ttl=TTL)
    leases_expire("scan")
    second = locks.lock_acquire(name="scan", holder="b", ttl=TTL)
    assert second is not None
    assert not locks.lock_heartbeat(lease=first, ttl=TTL)
    assert locks.lock_heartbeat(lease=second, ttl=TTL)


@pytest.mark.django_db
def test_release_frees_the_lock_for_the_next_holder() -> None:
    first = locks.lock_acquire(name="scan", holder="a", ttl=TTL)
    assert first is not None and locks.lock_release(lease=first)
    second = locks.lock_acquire(name="scan", holder="b", ttl=TTL)
    assert second is not None and second.token == 2


@pytest.mark.django_db
def test_a_fenced_write_after_takeover_is_refused() -> None:
    first = locks.lock_acquire(name="scan", holder="a", ttl=TTL)
    assert first is not None
    leases_expire("scan")
    assert locks.lock_acquire(name="scan", holder="b", ttl=TTL) is not None
    with pytest.raises(locks.LockLost), transaction.atomic():
        locks.lock_assert_held(lease=first)


@pytest.mark.django_db
def test_a_fenced_write_after_expiry_is_refused_even_without_takeover() -> None:
    lease = locks.lock_acquire(name="scan", holder="a", ttl=TTL)
    assert lease is not None
    leases_expire("scan")
    with pytest.raises(locks.LockLost), transaction.atomic():
        locks.lock_assert_held(lease=lease)


@pytest.mark.django_db(transaction=True)
def test_lock_assert_held_outside_a_transaction_is_a_programming_error() -> None:
    lease = locks.lock_acquire(name="scan", holder="a", ttl=TTL)
    assert lease is not None
    with pytest.raises(RuntimeError):
        locks.lock_assert_held(lease=lease)


@pytest.mark.django_db
def test_force_release_refuses_a_live_lease_and_audits_an_expired_one() -> None:
    locks.lock_acquire(name="scan", holder="a", ttl=TTL)
    lock = SchedulerLock.objects.get(name="scan")
    with pytest.raises(locks.LockNotReleasable):
        locks.lock_force_release(lock=lock, actor=None, reason="stuck")
    leases_expire("scan")
    locks.lock_force_release(lock=lock, actor=None, reason="holder crashed")
    lock.refresh_from_db()
    assert lock.holder == ""
    entry = AuditEntry.objects.get(action="lock.release")
    assert entry.reason == "holder crashed" and entry.before["holder"] == "a"


def _acquire_within(*, name: str, holder: str, seconds: float) -> locks.Lease | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lease = locks.lock_acquire(name=name, holder=holder, ttl=timedelta(hours=1))
        if lease is not None:
            return lease
        time.sleep(0.05)
    return None


# --- several processes on PostgreSQL ---------------------------------------------------------


def _contend(worker: int, rounds: int) -> list[tuple[int, float, float]]:
    """Tries to take the lock ``rounds`` times; while holding it, makes a fenced write.
    Returns (token, start, end) of each holding, on the shared monotonic clock."""
    held = []
    for _ in range(rounds):
        lease = locks.lock_acquire(name="contended", holder=f"w{worker}", ttl=TTL)
        if lease is None:
            time.sleep(0.002)
            continue
        start = time.monotonic()
        with transaction.atomic():
            locks.lock_assert_held(lease=lease)
            SchedulerLock.objects.filter(name="contended-writes").update(token=lease.token)
        time.sleep(0.005)  # hold it for a moment so overlaps would show
        end = time.monotonic()
        assert locks.lock_release(lease=lease)
        held.append((lease.token, start, end))
    return held


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_processes_contending_for_a_lock_hold_it_one_at_a_time() -> None:
    SchedulerLock.objects.create(name="contended-writes")
    results = processes.run_all(_contend, [(i, 40) for i in range(6)])
    holdings = sorted((h for worker in results for h in worker), key=lambda h: h[1])
    assert len(holdings) >= 6, "the lock should have changed hands many times"
    tokens = [h[0] for h in holdings]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    for previous, current in itertools.pairwise(holdings):
        assert previous[2] <= current[1], f"two holders at once: {previous} and {current}"
    assert SchedulerLock.objects.get(name="contended").token == max(tokens)


def _stalled_holder(ready_path: str, go_path: str) -> str:
    lease = locks.lock_acquire(name="stall", holder="stalled", ttl=timedelta(seconds=1))
    assert lease is not None
    with open(ready_path, "w") as fh:
        fh.write("acquired")
    while not os.path.exists(go_path):  # the parent SIGSTOPs us somewhere in here
        time.sleep(0.01)
    try:
        with transaction.atomic():
            locks.lock_assert_held(lease=lease)
            SchedulerLock.objects.filter(name="stall-writes").update(holder="stalled")
    except locks.LockLost:
        return "refused"
    return "written"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_holder_stopped_past_its_lease_cannot_write_after_takeover(tmp_path) -> None:
    SchedulerLock.objects.create(name="stall-writes")
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc, queue = processes.start(_stalled_holder, str(ready), str(go))
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        # The stalled lease (1 s) runs out by the database clock while the holder is stopped.
        taker = _acquire_within(name="stall", holder="taker", seconds=10)
        assert taker is not None and taker.token == 2
        with transaction.atomic():
            locks.lock_assert_held(lease=taker)
            SchedulerLock.objects.filter(name="stall-writes").update(holder="taker")
    finally:
        go.write_text("go")
        os.kill(proc.pid, signal.SIGCONT)
    status, value = queue.get(timeout=30)
    proc.join(timeout=30)
    assert (status, value) == ("ok", "refused")
    assert SchedulerLock.objects.get(name="stall-writes").holder == "taker"


def _stopped_at_commit(ready_path: str, go_path: str) -> str:
    """Takes the billing lease (TTL 10 s), passes its final fence (the lock row is now locked)
    and stalls before committing: the worst moment for everyone else waiting on that row."""
    lease = locks.lock_acquire(name=BILLING_LOCK, holder="stalled", ttl=timedelta(seconds=10))
    assert lease is not None
    try:
        with fenced(lease):
            locks.lock_confirm_held(lease=lease)
            with open(ready_path, "w") as fh:
                fh.write("row locked")
            while not os.path.exists(go_path):  # SIGSTOPped in here
                time.sleep(0.01)
    except locks.LockLost:
        return "refused"
    return "committed"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_sweep_and_release_never_hang_on_a_holder_stopped_with_the_lock_row_locked(
    tmp_path, settings
) -> None:
    settings.NERUBA_LOCK_WAIT = timedelta(milliseconds=300)
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc, queue = processes.start(_stopped_at_commit, str(ready), str(go))
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        sweep = sweep_run(name="stuck_runs", trigger="command")
        assert sweep.status == "failed" and "LockBusy" in sweep.error
        assert locks.lock_acquire(name=BILLING_LOCK, holder="scan") is None  # lock_held
        lock = SchedulerLock.objects.get(name=BILLING_LOCK)
        with pytest.raises((locks.LockBusy, locks.LockNotReleasable)):
            locks.lock_force_release(lock=lock, actor=None, reason="stuck")
        assert time.monotonic() - started < 3, "every wait is bounded"
        # Past the TTL the release goes through: PostgreSQL cut the idle holder off.
        taken = None
        while taken is None and time.monotonic() - started < 20:
            time.sleep(0.5)
            try:
                taken = locks.lock_force_release(lock=lock, actor=None, reason="holder stopped")
            except (locks.LockBusy, locks.LockNotReleasable):
                continue
        assert taken is not None and taken.holder == ""
        assert sweep_run(name="stuck_runs", trigger="command").status == "succeeded"
    finally:
        go.write_text("go")
        os.kill(proc.pid, signal.SIGCONT)
    status, value = queue.get(timeout=30)
    proc.join(timeout=30)
    assert status == "ok", value
    assert value == "refused"
