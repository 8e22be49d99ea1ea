"""``manage.py migrate_locked``: ``migrate``, one process at a time per database.

Two replicas starting together on a fresh PostgreSQL database both ran ``migrate``; the second
failed (``django_migrations already exists``, a duplicate ``pg_type``) because nothing orders
them. This takes a PostgreSQL session advisory lock on its own connection first, so the second
waits, then finds everything applied and does nothing. The lock dies with the process (a
killed migrate frees it). SQLite (one file, development) migrates directly.

1. Open a separate connection and wait (bounded by ``--wait``) for the advisory lock.
2. Run ``migrate --noinput`` with the remaining options.
3. Release the lock (closing the connection does it too).
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

# One bigint key for "Neruba migrations" (any fixed number no other lock in the database uses).
MIGRATE_LOCK_KEY = 7_318_202_613


class Command(BaseCommand):
    help = "Apply migrations while holding a PostgreSQL advisory lock (safe from every replica)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default="default")
        parser.add_argument(
            "--wait",
            type=float,
            default=900.0,
            help="Seconds to wait for another process's migrate to finish (default 900).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"]
        verbosity = options["verbosity"]
        if connections[alias].vendor != "postgresql":
            call_command("migrate", database=alias, interactive=False, verbosity=verbosity)
            return
        holder = connections.create_connection(alias)
        try:
            self._lock(holder, wait=options["wait"], verbosity=verbosity)
            call_command("migrate", database=alias, interactive=False, verbosity=verbosity)
        finally:
            holder.close()  # ends the session, and with it the advisory lock

    def _lock(self, holder: Any, *, wait: float, verbosity: int) -> None:
        deadline = time.monotonic() + wait
        told = False
        with holder.cursor() as cursor:
            while True:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [MIGRATE_LOCK_KEY])
                if cursor.fetchone()[0]:
                    return
                if not told and verbosity:
                    self.stdout.write("Another process is migrating this database; waiting.")
                    told = True
                if time.monotonic() > deadline:
                    raise CommandError(
                        f"Gave up after {wait:.0f}s waiting for another migrate to finish."
                    )
                time.sleep(0.2)
