"""``manage.py resolve_drift --finding ID [--finding ID ...] --action rerun|credit|ignore
--reason "..." [--apply]``: resolves drift findings. Dry run by default: prints what would
happen (the re-priced window's diff). ``rerun`` voids and supersedes an unpaid invoice;
``credit`` settles a paid one (a correction credit when over-billed, a supplementary invoice
when under-billed); ``ignore`` accepts the drift with the reason. Audited."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.drift import ACTIONS, finding_resolve
from billing.models import DriftFinding
from neruba.errors import NerubaError


class Command(BaseCommand):
    help = "Resolve drift findings (dry run unless --apply)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--finding", type=int, action="append", required=True, help="Finding id (repeatable)."
        )
        parser.add_argument("--action", choices=ACTIONS, required=True)
        parser.add_argument("--reason", default="", help="Why (required with --apply).")
        parser.add_argument("--apply", action="store_true", help="Make the change.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["apply"] and not options["reason"].strip():
            raise CommandError("--reason is required with --apply")
        failed = done = 0
        for finding_id in options["finding"]:
            finding = DriftFinding.objects.filter(pk=finding_id).first()
            if finding is None:
                failed += 1
                self.stderr.write(f"finding {finding_id}: no such finding")
                continue
            try:
                result = finding_resolve(
                    finding=finding,
                    action=options["action"],
                    actor=None,
                    reason=options["reason"],
                    dry_run=not options["apply"],
                )
            except NerubaError as exc:
                failed += 1
                self.stderr.write(f"finding {finding_id}: {exc.message} {exc.details}")
                continue
            done += 1
            self.stdout.write(result.render())
        mode = "applied" if options["apply"] else "dry run (use --apply to make the change)"
        self.stdout.write(f"{done} finding(s) resolved, {failed} failed, {mode}")
        if failed:
            raise CommandError(f"{failed} finding(s) failed")
