"""Two real ``celery beat`` processes on PostgreSQL and Redis: one schedules, the other stands
by; killing the active one makes the standby schedule the next billing scan within the lease
plus a tick."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from neruba.beat import BEAT_LOCK
from neruba.locks import lock_live_holder

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

LEASE = 3  # seconds (NERUBA_BEAT_LEASE for the beats below)
SCAN_EVERY = 1  # seconds (NERUBA_BILLING_SCAN_INTERVAL)


def _redis() -> object:
    import redis

    return redis.Redis.from_url(settings.REDIS_URL)


def _start_beat(queue: str, schedule: Path) -> subprocess.Popen[bytes]:
    db = connection.settings_dict
    env = {
        **os.environ,
        "NERUBA_ENV": "test",
        "NERUBA_CELERY_REAL": "1",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "NERUBA_TEST_QUEUE": queue,
        "NERUBA_BEAT_LEASE": f"{LEASE}s",
        "NERUBA_BILLING_SCAN_INTERVAL": f"{SCAN_EVERY}s",
        "PYTHONPATH": str(settings.BASE_DIR),
    }
    celery = Path(sys.executable).with_name("celery")
    return subprocess.Popen(
        [
            *(str(celery), "-A", "tests.neruba.beat_app", "beat"),
            *("--schedule", str(schedule), "--loglevel", "WARNING"),
        ],
        cwd=settings.BASE_DIR,
        env=env,
    )


def _scans_sent(queue: str) -> list[int]:
    """The pid of the beat that sent each ``billing.scan`` waiting in ``queue``."""
    pids = []
    for raw in _redis().lrange(queue, 0, -1):  # type: ignore[attr-defined]
        headers = json.loads(raw)["headers"]
        if headers["task"] == "billing.scan":
            pids.append(int(headers["origin"].split("@")[0].removeprefix("gen")))
    return pids


def _wait(predicate: object, seconds: float) -> float:
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - started < seconds, "timed out"
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.fixture
def beats(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    queue = f"beat-test-{uuid.uuid4().hex[:8]}"
    started: list[subprocess.Popen[bytes]] = []
    yield queue, started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    _redis().delete(queue)  # type: ignore[attr-defined]


def test_the_standby_beat_schedules_the_next_scan_when_the_active_one_is_killed(
    beats: tuple[str, list[subprocess.Popen[bytes]]], tmp_path: Path
) -> None:
    queue, started = beats
    first = _start_beat(queue, tmp_path / "first-schedule")
    started.append(first)
    _wait(lambda: f":{first.pid}:" in lock_live_holder(name=BEAT_LOCK), 60)
    second = _start_beat(queue, tmp_path / "second-schedule")
    started.append(second)
    _wait(lambda: len(_scans_sent(queue)) >= 3, 60)
    time.sleep(LEASE)  # the standby has had time to try for the lease
    assert set(_scans_sent(queue)) == {first.pid}, "only the active beat schedules"
    assert f":{first.pid}:" in lock_live_holder(name=BEAT_LOCK)

    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    took = _wait(lambda: second.pid in _scans_sent(queue), LEASE * 2 + 10)
    # Bounded: the lease the dead beat held, one standby tick (a third of it), one interval.
    print(f"the standby scheduled a scan {took:.1f}s after the active beat was killed")
    assert took <= LEASE + LEASE / 3 + SCAN_EVERY + 3, f"took over after {took:.1f}s"
    assert f":{second.pid}:" in lock_live_holder(name=BEAT_LOCK)
    assert second.poll() is None
