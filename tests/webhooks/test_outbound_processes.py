"""Outbound delivery through a real Celery worker on Redis and PostgreSQL, killed mid-delivery:
the message is delivered after the worker comes back, and the receiver sees one webhook-id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from django.conf import settings
from django.db import connection
from django.utils import timezone

from billing import services
from neruba.celery import app
from tests.webhooks.receivers import Received, Receiver
from webhooks import outbound
from webhooks.models import OutboundDelivery

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def _worker(*, concurrency: int = 1) -> subprocess.Popen[bytes]:
    db = connection.settings_dict
    env = {
        **os.environ,
        "NERUBA_ENV": "test",
        "NERUBA_CELERY_REAL": "1",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "PYTHONPATH": str(settings.BASE_DIR),
    }
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("celery")),
            "-A",
            "neruba.celery",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency),
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "WARNING",
        ],
        cwd=settings.BASE_DIR,
        env=env,
    )


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        for child in _children(worker.pid):
            os.kill(child, signal.SIGKILL)
        worker.kill()
        worker.wait(timeout=30)


def _purge() -> None:
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(app.conf.task_default_queue)


@pytest.fixture
def real_broker() -> Iterator[None]:
    """Tasks go to Redis (not run eagerly in this process) for the test's duration."""
    _purge()
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = False
    warnings.simplefilter("ignore")  # kombu warns about no hostname in a URL: harmless
    try:
        yield
    finally:
        app.conf.task_always_eager = eager
        _purge()


def _wait(predicate: object, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def _hanging_first() -> tuple[Receiver, threading.Event]:
    release = threading.Event()

    def behave(received: Received, index: int) -> tuple[int, dict[str, str], bytes]:
        if index == 0:
            release.wait(60)  # the worker is killed while we hold its request
        return 200, {}, b"ok"

    return Receiver(behave=behave), release


def _credit(catalog: dict) -> None:
    services.credit_issue(
        customer=catalog["customer"], amount=700, reason_code="goodwill", actor=None, reason="r"
    )


def test_a_worker_child_killed_mid_delivery_is_redelivered_and_the_receiver_sees_one_id(
    catalog: dict, real_broker: None
) -> None:
    receiver, release = _hanging_first()
    with receiver:
        endpoint, secret = outbound.endpoint_create(
            url=receiver.url, event_types=["credit.granted"], actor=None
        )
        receiver.secrets.append(secret)
        worker = _worker()
        try:
            _credit(catalog)  # commits; the fan-out and the delivery run on the worker
            receiver.wait_for(1, seconds=90)
            delivery = OutboundDelivery.objects.get(endpoint=endpoint)
            assert delivery.status == "sending" and delivery.claimed_by
            children = _children(worker.pid)
            assert len(children) == 1
            os.kill(children[0], signal.SIGKILL)  # the process doing the delivery
            release.set()
            # The worker's parent forks a new child; the task, rejected on worker loss, comes
            # back with the same id and takes back its own claim.
            _wait(lambda: OutboundDelivery.objects.get(pk=delivery.pk).status == "delivered", 90)
        finally:
            _stop(worker)
    assert len(receiver.requests) == 2
    assert {r.msg_id for r in receiver.requests} == {delivery.message.msg_id}
    assert all(r.verified for r in receiver.requests)
    assert [a.outcome for a in delivery.delivery_attempts.all()] == ["delivered"]


def test_a_whole_worker_killed_mid_delivery_is_delivered_by_the_next_worker_after_the_sweep(
    catalog: dict, real_broker: None
) -> None:
    receiver, release = _hanging_first()
    with receiver:
        endpoint, secret = outbound.endpoint_create(
            url=receiver.url, event_types=["credit.granted"], actor=None
        )
        receiver.secrets.append(secret)
        worker = _worker()
        try:
            _credit(catalog)
            receiver.wait_for(1, seconds=90)
            for child in _children(worker.pid):
                os.kill(child, signal.SIGKILL)
            os.kill(worker.pid, signal.SIGKILL)  # parent and child: nobody requeues the task
            worker.wait(timeout=30)
            release.set()
        finally:
            _stop(worker)
        delivery = OutboundDelivery.objects.get(endpoint=endpoint)
        assert delivery.status == "sending"
        # Within the claim's lease the due task leaves it alone...
        assert outbound.deliveries_retry_due()["due"] == 0
        worker = _worker()
        try:
            # ...after it, the claim is released and the next worker delivers it.
            with time_machine.travel(timezone.now() + timedelta(minutes=11), tick=True):
                assert outbound.deliveries_retry_due()["due"] == 1
            _wait(lambda: OutboundDelivery.objects.get(pk=delivery.pk).status == "delivered", 90)
        finally:
            _stop(worker)
    assert len(receiver.requests) == 2
    assert {r.msg_id for r in receiver.requests} == {delivery.message.msg_id}
    assert all(r.verified for r in receiver.requests)
