"""Billing fanned out into customer-range shards: in-process (eager tasks, both engines) and
with real Celery workers on PostgreSQL and Redis, one of them SIGKILLed mid-shard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Sum

from billing import services
from billing.models import BillingRun, BillingShard, Invoice
from billing.shards import billing_scan_fanout, customer_ranges
from tests.billing.test_runs_processes import (
    AS_OF,
    _assert_gapless_numbers,
    _assert_one_live_invoice_per_window,
    _subscriptions,
    _wait_for,
)


def test_customer_ids_split_into_contiguous_ranges_of_about_equal_size() -> None:
    ids = [3, 5, 8, 13, 21, 34, 55]
    assert customer_ranges(customer_ids=ids, shards=3) == [(3, 8), (13, 21), (34, 55)]
    assert customer_ranges(customer_ids=ids[:2], shards=4) == [(3, 3), (5, 5)]
    assert customer_ranges(customer_ids=[], shards=4) == []


@pytest.mark.django_db(transaction=True)
def test_a_fanned_out_pass_bills_what_the_single_process_pass_would_and_adds_its_shards_up(
    catalog: dict[str, Any],
) -> None:
    catalog["subscription"].delete()
    _subscriptions(catalog, 7, "f")
    expected = services.billing_scan(trigger="command", as_of=AS_OF, dry_run=True)
    assert expected.invoiced == 14
    # Eager tasks (the test settings): each shard is billed in this process on commit.
    run = billing_scan_fanout(trigger="command", shards=3, as_of=AS_OF)
    run.refresh_from_db()
    shards = list(run.shards.order_by("index"))
    assert [s.status for s in shards] == ["succeeded"] * 3
    assert sum(s.invoiced for s in shards) == run.invoiced == expected.invoiced
    assert run.invoiced_amount == expected.invoiced_amount
    assert Invoice.objects.aggregate(t=Sum("total"))["t"] == expected.invoiced_amount
    assert run.status == "succeeded" and run.finished_at is not None
    _assert_one_live_invoice_per_window()
    _assert_gapless_numbers()
    again = billing_scan_fanout(trigger="command", shards=3, as_of=AS_OF)
    assert (again.status, again.shards.count(), Invoice.objects.count()) == ("succeeded", 0, 14)


@contextmanager
def settings_real_celery() -> Iterator[None]:
    """Tasks go to the broker (the test settings run them eagerly otherwise)."""
    from neruba.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = False
    try:
        yield
    finally:
        app.conf.task_always_eager = before


def _start_worker(*, queue: str, marker: Path) -> subprocess.Popen[bytes]:
    db = connection.settings_dict
    env = {
        **os.environ,
        "NERUBA_ENV": "test",
        "NERUBA_CELERY_REAL": "1",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "NERUBA_TEST_SHARD_HANG": str(marker),
        "NERUBA_TEST_VISIBILITY_TIMEOUT": "8",
        "NERUBA_LOCK_TTL": "4s",
        "PYTHONPATH": str(settings.BASE_DIR),
    }
    celery = Path(sys.executable).with_name("celery")
    return subprocess.Popen(
        [
            str(celery),
            "-A",
            "tests.billing.shard_worker",
            "worker",
            "--pool",
            "solo",
            "--queues",
            queue,
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "WARNING",
        ],
        cwd=settings.BASE_DIR,
        env=env,
    )


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_shard_worker_sigkilled_mid_shard_is_redelivered_and_every_window_is_billed_once(
    catalog: dict[str, Any], tmp_path: Path
) -> None:
    catalog["subscription"].delete()
    _subscriptions(catalog, 12, "k")
    expected = services.billing_scan(trigger="command", as_of=AS_OF, dry_run=True)
    assert expected.invoiced == 24
    marker = tmp_path / "hanging-worker"
    queue = f"shards-test-{uuid.uuid4().hex[:8]}"
    workers = [_start_worker(queue=queue, marker=marker) for _ in range(2)]
    from neruba.celery import app

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with settings_real_celery():
                run = billing_scan_fanout(trigger="command", shards=3, as_of=AS_OF, queue=queue)
        assert run.shards.count() == 3
        # A second scan while the shards are in flight fans nothing out again.
        overlap = billing_scan_fanout(trigger="command", shards=3, as_of=AS_OF, queue=queue)
        assert overlap.status == "lock_held" and "in flight" in overlap.errors[0]["error"]
        assert overlap.shards.count() == 0
        _wait_for(marker, seconds=120)
        victim = int(marker.read_text())
        assert victim in {w.pid for w in workers}
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 180
        while BillingRun.objects.get(pk=run.pk).status == "running":
            assert time.monotonic() < deadline, list(run.shards.values())
            time.sleep(0.2)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait(timeout=30)
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(queue)

    run.refresh_from_db()
    shards = list(BillingShard.objects.filter(run=run).order_by("index"))
    assert [s.status for s in shards] == ["succeeded"] * 3, [(s.status, s.errors) for s in shards]
    assert max(s.attempts for s in shards) == 2, "the killed worker's shard ran a second time"
    assert run.status == "succeeded"
    assert (run.invoiced, run.invoiced_amount) == (expected.invoiced, expected.invoiced_amount)
    assert Invoice.objects.count() == expected.invoiced
    assert Invoice.objects.aggregate(t=Sum("total"))["t"] == expected.invoiced_amount
    _assert_one_live_invoice_per_window()
    _assert_gapless_numbers()


@pytest.mark.django_db(transaction=True)
def test_the_console_shows_a_fanned_out_runs_shards(
    catalog: dict[str, Any], console_user: Any
) -> None:
    from django.contrib.auth.models import Group, Permission
    from django.test import Client

    from operations.roles import ROLES

    # A transactional test starts flushed: the migration's groups are gone; made again from the
    # same declaration (as the browser tests do).
    role = ROLES["Operations"]
    group, _ = Group.objects.get_or_create(name="Operations")
    group.permissions.set(
        [
            Permission.objects.get(content_type__app_label=label, codename=codename)
            for label, codename in (p.split(".", 1) for p in role["permissions"])
        ]
    )

    catalog["subscription"].delete()
    _subscriptions(catalog, 4, "c")
    run = billing_scan_fanout(trigger="command", shards=2, as_of=AS_OF)
    client = Client()
    client.force_login(console_user("Operations"))
    html = client.get(f"/admin/billing/billingrun/{run.pk}/change/").content.decode()
    assert "Shards (fanned-out runs" in html
    first, second = run.shards.order_by("index")
    assert str(first.customer_from) in html and str(second.customer_to) in html
    assert html.count("succeeded") >= 3  # the run and its two shards


@pytest.mark.django_db(transaction=True)
def test_the_beat_scan_fans_out_when_shards_are_configured(
    catalog: dict[str, Any], settings: Any
) -> None:
    import time_machine

    from billing import tasks

    catalog["subscription"].delete()
    _subscriptions(catalog, 3, "b")
    settings.NERUBA = {**settings.NERUBA, "NERUBA_BILLING_SHARDS": 2}
    with time_machine.travel(AS_OF, tick=False):
        run = BillingRun.objects.get(pk=tasks.billing_scan.delay().get())
    assert run.shards.count() == 2 and run.status == "succeeded"
    assert run.invoiced == Invoice.objects.count() == 6
