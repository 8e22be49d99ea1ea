"""``manage.py replay_stripe_events``: process stored Stripe events again.

1. Select events by ``--ids``, ``--failed``, ``--dead``, ``--type`` and ``--since``.
2. Without ``--apply``, dry-run each one: print what its handler would change; nothing is
   written.
3. With ``--apply`` (and ``--reason``), replay each through ``event_replay``: an attempt with
   trigger ``replay`` and an audit entry per event. A failure is reported and the next event
   goes on.
4. Print "processed X of Y"; exit non-zero when any event failed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from neruba.errors import NerubaError
from webhooks import selectors, services
from webhooks.models import StripeEvent


def _since(value: str) -> datetime:
    parsed = parse_datetime(value)
    if parsed is None:
        raise CommandError(f"--since: expected an ISO date-time, got {value!r}")
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, UTC)


class Command(BaseCommand):
    help = "Replay stored Stripe webhook events (dry run unless --apply)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--ids", nargs="+", default=[], help="Stripe event ids (evt_…).")
        parser.add_argument("--failed", action="store_true", help="Events in status failed.")
        parser.add_argument("--dead", action="store_true", help="Events in status dead.")
        parser.add_argument("--type", action="append", default=[], help="Event type (repeat).")
        parser.add_argument("--since", type=_since, help="Received at or after (ISO).")
        parser.add_argument("--limit", type=int, default=1000, help="At most this many events.")
        parser.add_argument(
            "--dry-run", action="store_true", default=True, help="Show only (the default)."
        )
        parser.add_argument("--apply", action="store_true", help="Really replay.")
        parser.add_argument("--reason", default="", help="Kept in the audit log (with --apply).")

    def handle(self, *args: Any, **options: Any) -> None:
        statuses = [
            s
            for flag, s in (
                ("failed", StripeEvent.Status.FAILED),
                ("dead", StripeEvent.Status.DEAD),
            )
            if options[flag]
        ]
        if not (options["ids"] or statuses or options["type"] or options["since"]):
            raise CommandError("choose events: --ids, --failed, --dead, --type or --since")
        apply = options["apply"]
        reason = options["reason"].strip() or "replay_stripe_events command"
        events = list(
            selectors.events_for_replay(
                ids=options["ids"],
                statuses=statuses,
                types=options["type"],
                since=options["since"],
            )[: options["limit"]]
        )
        total, processed, failed = len(events), 0, 0
        mode = "replaying" if apply else "dry run (use --apply to replay)"
        self.stdout.write(f"{total} event(s) selected; {mode}")
        for number, event in enumerate(events, start=1):
            label = f"[{number}/{total}] {event.stripe_id} {event.type} ({event.status})"
            try:
                if apply:
                    attempt = services.event_replay(event=event, actor=None, reason=reason)
                    outcome, notes = attempt.outcome, attempt.error or attempt.notes
                else:
                    result = services.event_dry_run(event=event)
                    outcome, notes = f"would be {result.outcome}", "; ".join(result.notes)
            except NerubaError as exc:
                outcome, notes = "failed", exc.message
            except Exception as exc:  # keep going: one broken event must not stop the rest
                outcome, notes = "failed", f"{type(exc).__name__}: {exc}"
            if outcome == "failed":
                failed += 1
            else:
                processed += 1
            self.stdout.write(f"{label}: {outcome} {notes}".rstrip())
        if apply:
            self.stdout.write(f"processed {processed} of {total}; {failed} failed")
        else:
            self.stdout.write(f"dry run: would process {processed} of {total}; {failed} would fail")
        if failed:
            raise CommandError(f"{failed} of {total} event(s) failed")
