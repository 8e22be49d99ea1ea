from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from operations.smoke import smoke_run


class Command(BaseCommand):
    help = (
        "Known-good checks after a deploy: readiness, ingest (accepted, duplicate, "
        "conflict, lookup), a signed webhook, the scheduler heartbeat."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", help="Deployment to check (default: in-process).")
        parser.add_argument(
            "--api-key",
            help="Key with ingest and read scopes (default: a temporary key, revoked afterwards).",
        )
        parser.add_argument(
            "--webhook-secret",
            help="Signing secret (default: the first of STRIPE_WEBHOOK_SECRETS).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = smoke_run(
            base_url=options["base_url"],
            api_key=options["api_key"],
            webhook_secret=options["webhook_secret"],
            emit=self.stdout.write,
        )
        if not report.ok:
            raise CommandError("smoke failed: open the runbook named under the failed step")
