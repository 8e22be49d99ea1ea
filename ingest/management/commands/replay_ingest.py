from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime

from ingest.models import IngestRejection, Outcome
from ingest.services import rejection_replay
from neruba.errors import NerubaError


def _since(raw: str) -> datetime:
    value = parse_datetime(raw)
    if value is None or value.tzinfo is None:
        raise CommandError(f"--since must be an ISO 8601 time with an offset, got {raw!r}")
    return value


class Command(BaseCommand):
    help = (
        "Replay failed ingest items after their cause was fixed. Dry run unless --apply: "
        "shows what each replay would do."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--ids", help="Comma-separated rejection ids.")
        which.add_argument("--code", help="Every open failure with this error code.")
        parser.add_argument("--since", type=_since, help="Only rejections created since (ISO).")
        parser.add_argument("--apply", action="store_true", help="Replay for real.")
        parser.add_argument(
            "--reason",
            default="",
            help="Kept in the audit log (default: 'manage.py replay_ingest').",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        apply = options["apply"]
        reason = options["reason"].strip() or "manage.py replay_ingest"
        # 1. Select: open failures only (conflicts stand: the original event is kept).
        rejections = IngestRejection.objects.filter(
            status=IngestRejection.Status.OPEN, outcome=Outcome.FAILED
        ).order_by("created_at", "id")
        if options["ids"]:
            try:
                ids = [int(x) for x in options["ids"].split(",") if x.strip()]
            except ValueError:
                raise CommandError("--ids takes comma-separated numbers") from None
            rejections = rejections.filter(pk__in=ids)
            missing = set(ids) - set(rejections.values_list("pk", flat=True))
            for pk in sorted(missing):
                self.stderr.write(f"rejection {pk}: not found or not an open failure, skipped")
        else:
            rejections = rejections.filter(error_code=options["code"])
        if options["since"]:
            rejections = rejections.filter(created_at__gte=options["since"])

        # 2. Replay (or preview) one by one; one item's error never stops the run.
        total = rejections.count()
        mode = "apply" if apply else "dry run"
        self.stdout.write(f"replay_ingest ({mode}): {total} rejection(s)")
        counts = {"replayed": 0, "duplicate": 0, "still_failing": 0, "errors": 0}
        for n, rejection in enumerate(rejections.iterator(), start=1):
            try:
                result = rejection_replay(
                    rejection=rejection, actor=None, reason=reason, dry_run=not apply
                )
            except NerubaError as exc:
                counts["errors"] += 1
                self.stderr.write(f"[{n}/{total}] rejection {rejection.pk}: {exc.message}")
                continue
            if result.outcome == Outcome.REPLAY:
                counts["replayed"] += 1
            elif result.outcome == Outcome.DUPLICATE:
                counts["duplicate"] += 1
            else:
                counts["still_failing"] += 1
            self.stdout.write(
                f"[{n}/{total}] rejection {rejection.pk} ({rejection.idempotency_key}): "
                f"{result.describe()}"
            )

        # 3. Summary; non-zero exit when anything failed.
        verb = "replayed" if apply else "would replay"
        self.stdout.write(
            f"{mode}: {total} selected, {verb} {counts['replayed']}, "
            f"{counts['duplicate']} already stored, {counts['still_failing']} still failing, "
            f"{counts['errors']} errors"
            + ("" if apply else " — nothing was changed; run with --apply")
        )
        if counts["still_failing"] or counts["errors"]:
            raise CommandError(
                f"{counts['still_failing'] + counts['errors']} rejection(s) could not be replayed"
            )
