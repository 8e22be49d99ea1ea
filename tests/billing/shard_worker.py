"""A Celery worker app for the shard process tests: Neruba's own app with a short broker
visibility timeout (so a killed worker's shard is redelivered within the test) and shards
billed two windows per batch. With ``NERUBA_TEST_SHARD_HANG`` set, the first worker to commit
a batch writes its pid to that file and then hangs, so the test can SIGKILL it mid-shard.
Started as ``celery -A tests.billing.shard_worker worker``."""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import django

from neruba.celery import app

django.setup()

from billing import shards  # noqa: E402 - needs the apps loaded

__all__ = ["app"]

app.conf.broker_transport_options = {
    "visibility_timeout": int(os.environ.get("NERUBA_TEST_VISIBILITY_TIMEOUT", "3600"))
}
shards.shard_bill = functools.partial(shards.shard_bill, batch_size=2)  # type: ignore[assignment]

_MARKER = os.environ.get("NERUBA_TEST_SHARD_HANG")

if _MARKER:
    _original = shards._batch_bill

    def _hang_once(**kwargs: Any) -> None:
        _original(**kwargs)
        try:
            fd = os.open(_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # another worker hangs; this one bills on
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        time.sleep(300)  # killed long before this ends

    shards._batch_bill = _hang_once  # type: ignore[assignment]
