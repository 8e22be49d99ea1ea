"""Celery beat with a standby: ``LeasedScheduler`` schedules only while it holds the
``celery-beat`` lease (``neruba.locks``, in the database every process already shares).

Run two beat processes (two hosts, or two containers): the one holding the lease schedules,
the other ticks every third of the lease and tries to take it. When the active beat dies (a
crash, a lost host) its lease runs out and the standby takes over within
``NERUBA_BEAT_LEASE`` plus one tick. A beat that cannot renew (the database unreachable, the
lease taken) stops scheduling at once: two beats never both think they are active for longer
than one tick, and every scheduled job is a ``leased_run`` anyway, so an overlap would at
worst record a ``lock_held`` run. The console home and ``neruba_beat_active`` show which beat
holds the lease.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery.beat import PersistentScheduler
from django.conf import settings
from django.db import DatabaseError, connection

from neruba.locks import Lease, default_holder, lock_acquire, lock_heartbeat, lock_release

logger = logging.getLogger(__name__)

BEAT_LOCK = "celery-beat"


def beat_lease_ttl() -> timedelta:
    return timedelta(seconds=settings.NERUBA["NERUBA_BEAT_LEASE"])


class LeasedScheduler(PersistentScheduler):
    """``PersistentScheduler`` that sends nothing unless it holds the beat lease."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._holder = f"beat:{default_holder()}"
        self._lease: Lease | None = None
        super().__init__(*args, **kwargs)

    @property
    def active(self) -> bool:
        return self._lease is not None

    def _hold(self) -> bool:
        ttl = beat_lease_ttl()
        try:
            if self._lease is not None:
                if lock_heartbeat(lease=self._lease, ttl=ttl):
                    return True
                logger.warning("beat %s lost its lease; standing by", self._holder)
                self._lease = None
            self._lease = lock_acquire(name=BEAT_LOCK, holder=self._holder, ttl=ttl)
        except DatabaseError:
            # Nobody can prove it is the active beat without the database: stop scheduling.
            logger.warning("beat %s cannot reach the database; standing by", self._holder)
            self._lease = None
            connection.close()
            return False
        if self._lease is not None:
            logger.info("beat %s is active (token %s)", self._holder, self._lease.token)
        return self._lease is not None

    def tick(self, *args: Any, **kwargs: Any) -> float:
        every = beat_lease_ttl().total_seconds() / 3
        if not self._hold():
            return every  # standby: try again in a third of the lease
        return min(super().tick(*args, **kwargs), every)

    def close(self) -> None:
        # A clean stop hands over at once instead of after the lease.
        if self._lease is not None:
            try:
                lock_release(lease=self._lease)
            except DatabaseError:
                pass
            self._lease = None
        super().close()
