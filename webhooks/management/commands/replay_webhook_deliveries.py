"""``manage.py replay_webhook_deliveries``: send outbound webhook deliveries again.

1. Select deliveries: one message (``--message msg_…``), an endpoint's (``--endpoint ID``,
   with ``--dead`` for its dead ones only), or a type (``--type``) since a time (``--since``).
2. Without ``--apply``, print each delivery that would be queued; nothing is written.
3. With ``--apply`` (and ``--reason``), queue them through ``deliveries_replay``: same message
   id (webhook-id) and body, an audit entry per endpoint. Deliveries being sent right now are
   never selected.
4. Print "queued X of Y"; exit non-zero when the replay failed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from neruba.errors import NerubaError
from neruba.models import OutboxMessage
from webhooks import outbound
from webhooks.models import WebhookEndpoint


def _since(value: str) -> datetime:
    parsed = parse_datetime(value)
    if parsed is None:
        raise CommandError(f"--since: expected an ISO date-time, got {value!r}")
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, UTC)


class Command(BaseCommand):
    help = "Replay outbound webhook deliveries (dry run unless --apply)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--message", help="One message id (msg_…): all its deliveries.")
        parser.add_argument("--endpoint", type=int, help="An endpoint id.")
        parser.add_argument("--dead", action="store_true", help="Dead deliveries only.")
        parser.add_argument("--type", help="Message type, e.g. invoice.paid.")
        parser.add_argument("--since", type=_since, help="Messages created at or after (ISO).")
        parser.add_argument("--limit", type=int, default=10000, help="At most this many.")
        parser.add_argument("--apply", action="store_true", help="Really queue them.")
        parser.add_argument("--reason", default="", help="Kept in the audit log (with --apply).")

    def handle(self, *args: Any, **options: Any) -> None:
        if not (options["message"] or options["endpoint"] or options["type"] or options["dead"]):
            raise CommandError("choose deliveries: --message, --endpoint, --type or --dead")
        message = endpoint = None
        if options["message"]:
            message = OutboxMessage.objects.filter(msg_id=options["message"]).first()
            if message is None:
                raise CommandError(f"no message {options['message']}")
        if options["endpoint"]:
            endpoint = WebhookEndpoint.objects.filter(pk=options["endpoint"]).first()
            if endpoint is None:
                raise CommandError(f"no endpoint {options['endpoint']}")
        selection = outbound.deliveries_for_replay(
            message=message,
            endpoint=endpoint,
            type=options["type"],
            since=options["since"],
            dead_only=options["dead"],
        )
        ids = list(selection.values_list("id", flat=True)[: options["limit"]])
        deliveries = outbound.deliveries_for_replay(ids=ids)
        apply = options["apply"]
        rows = list(deliveries)
        mode = "queueing" if apply else "dry run (use --apply to queue)"
        self.stdout.write(f"{len(rows)} deliver(ies) selected; {mode}")
        for number, d in enumerate(rows, start=1):
            self.stdout.write(
                f"[{number}/{len(rows)}] {d.message.msg_id} {d.message.type} -> "
                f"{d.endpoint.url} ({d.status}, {d.attempts} attempts)"
            )
        if not apply:
            self.stdout.write(f"would queue {len(rows)} of {len(rows)}")
            return
        reason = options["reason"].strip()
        if not reason:
            raise CommandError("--apply needs --reason (kept in the audit log)")
        try:
            plan = outbound.deliveries_replay(
                deliveries=deliveries, actor=None, reason=reason, dry_run=False
            )
        except NerubaError as exc:
            raise CommandError(f"replay failed: {exc.message}") from exc
        self.stdout.write(f"queued {len(plan.deliveries)} of {len(rows)}")
