"""``manage.py benchmark {ingest,billing,webhooks,console,drift,outbound,corrections}``: ratios
against a raw-database baseline measured in the same run, so an operator can size a deployment
on their own hardware.

Each app owns its benchmark in ``<app>/benchmark.py`` as ``add_arguments(parser)`` and
``run(command, **options) -> bool`` (False when a target was missed)."""

from __future__ import annotations

import importlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

SUITES = {
    "ingest": "ingest.benchmark",
    "billing": "billing.benchmark",
    "webhooks": "webhooks.benchmark",
    "console": "operations.benchmark_console",
    "drift": "billing.benchmark_drift",
    "outbound": "webhooks.benchmark_outbound",
    "corrections": "billing.benchmark_corrections",
}


class Command(BaseCommand):
    help = "Measure ingest, billing or webhook throughput against a raw-database baseline."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="suite", required=True)
        for name, module in SUITES.items():
            suite_parser = sub.add_parser(name, help=f"{name} benchmark")
            try:
                importlib.import_module(module).add_arguments(suite_parser)
            except ModuleNotFoundError:
                continue

    def handle(self, *args: Any, **options: Any) -> None:
        suite = options["suite"]
        try:
            module = importlib.import_module(SUITES[suite])
        except ModuleNotFoundError as exc:
            raise CommandError(f"the {suite} benchmark is not available yet") from exc
        if not module.run(self, **options):
            raise CommandError(f"benchmark {suite}: a target was missed (see above)")
