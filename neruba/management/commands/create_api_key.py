from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from neruba import services
from neruba.errors import NerubaError


class Command(BaseCommand):
    help = "Create an API key and print it once (it is stored hashed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--scopes", required=True, help="Comma-separated: ingest, read, write.")

    def handle(self, *args: Any, **options: Any) -> None:
        scopes = [s.strip() for s in options["scopes"].split(",") if s.strip()]
        try:
            api_key, raw = services.api_key_create(name=options["name"], scopes=scopes, actor=None)
        except NerubaError as exc:
            raise CommandError(f"{exc.message} {exc.details}") from exc
        self.stderr.write(
            f"Created API key {api_key.name!r} (prefix {api_key.prefix}, scopes "
            f"{','.join(api_key.scopes)}). Store it now; it is not shown again:"
        )
        self.stdout.write(raw)
