"""Validates the environment against Neruba's declared variables.

Deterministic: the same environment in gives the same report and exit code out. Exit 1 when
any problem is fatal, 0 otherwise (warnings are printed but do not fail).
"""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from neruba.config import VARIABLES, load, markdown_table


class Command(BaseCommand):
    help = "Check environment variables: missing, malformed and unsafe-for-production settings."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--markdown", action="store_true", help="Print the README configuration table and exit."
        )
        parser.add_argument(
            "--values",
            action="store_true",
            help="Also list every variable with its source (secrets hidden).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["markdown"]:
            self.stdout.write(markdown_table())
            return
        config = load(os.environ)
        self.stdout.write(f"check_env: NERUBA_ENV={config.env}")
        if options["values"]:
            for var in VARIABLES:
                value = config.values[var.name]
                shown = "(set)" if var.secret and value else repr(value)
                self.stdout.write(f"  {var.name} = {shown} [{config.sources[var.name]}]")
        for problem in config.problems:
            self.stdout.write(problem.render())
        fatal = len(config.fatal)
        warnings = len(config.problems) - fatal
        self.stdout.write(f"check_env: {fatal} fatal, {warnings} warning(s)")
        if fatal:
            raise CommandError("configuration has fatal problems", returncode=1)
