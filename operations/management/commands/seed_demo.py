from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from operations import demo


class Command(BaseCommand):
    help = "Load demo data (idempotent): customers, metrics, plans, subscriptions, logins."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-users", action="store_true", help="Do not create the admin and role demo logins."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        counts = demo.seed_all()
        created = ", ".join(f"{v} {k}" for k, v in counts.items())
        self.stdout.write(f"seed_demo: created {created} (existing rows kept)")
        if not options["no_users"]:
            username, password = demo.seed_admin()
            self.stdout.write(
                f"Console login: {username} / {password}  "
                f"(also support, finance, operations with the same password)"
            )
