"""``manage.py migrate_locked`` from two processes at the same instant on one fresh PostgreSQL
database: both exit 0, three rounds in a row (plain ``migrate`` failed one of the two every
time). Each round migrates a throwaway database created and dropped here."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def _database_url(name: str) -> str:
    base = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(base._replace(path=f"/{name}"))


def _throwaway_name() -> str:
    base = urlsplit(os.environ["DATABASE_URL"]).path.lstrip("/") or "neruba"
    return f"{base}_mig_{uuid.uuid4().hex[:8]}"


def _migrate_together(url: str) -> list[subprocess.CompletedProcess[str]]:
    env = {**os.environ, "DATABASE_URL": url, "NERUBA_ENV": "test"}
    command = [sys.executable, "manage.py", "migrate_locked", "--verbosity", "1"]
    started = [
        subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = []
    for proc in started:
        out, err = proc.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_two_replicas_migrating_one_fresh_database_at_once_both_succeed_three_times() -> None:
    for _ in range(3):
        name = _throwaway_name()
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        try:
            results = _migrate_together(_database_url(name))
            assert [r.returncode for r in results] == [0, 0], [r.stderr[-2000:] for r in results]
            applied = [r for r in results if "Applying" in r.stdout]
            assert len(applied) == 1, "exactly one of them applied the migrations"
            check = subprocess.run(
                [sys.executable, "manage.py", "migrate", "--check", "--plan"],
                cwd=ROOT,
                env={**os.environ, "DATABASE_URL": _database_url(name), "NERUBA_ENV": "test"},
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert check.returncode == 0, check.stdout + check.stderr
        finally:
            with connection.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
