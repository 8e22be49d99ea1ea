"""``manage.py check_env`` and ``check --deploy`` run as an operator would: a fresh process with
nothing but the environment we give it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from neruba.config import VARIABLES
from tests.neruba.test_config import PRODUCTION

ROOT = Path(__file__).resolve().parents[2]


def clean_environ(**extra: str) -> dict[str, str]:
    """The test process's environment without anything Neruba reads."""
    declared = {var.name for var in VARIABLES} | {f"{var.name}_FILE" for var in VARIABLES}
    environ = {
        key: value
        for key, value in os.environ.items()
        if key not in declared and not key.startswith(("NERUBA_", "DJANGO_", "STRIPE_", "PYTEST_"))
    }
    return {**environ, **extra}


def manage(*args: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_env_lists_each_missing_production_setting_and_exits_1() -> None:
    result = manage("check_env", environ=clean_environ(NERUBA_ENV="production"))
    assert result.returncode == 1, result.stdout + result.stderr
    for name in ("SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL"):
        assert f"FATAL   {name}: is required in production" in result.stdout
    assert "check_env: NERUBA_ENV=production" in result.stdout
    assert "4 fatal" in result.stdout


def test_check_env_reports_unsafe_production_settings() -> None:
    environ = clean_environ(
        **{
            **PRODUCTION,
            "DEBUG": "true",
            "SECRET_KEY": "dev-insecure-key",
            "DATABASE_URL": "sqlite:///var/prod.sqlite3",
            "NERUBA_API_DOCS": "public",
            "STRIPE_SECRET_KEY": "sk_live_abc",
        }
    )
    result = manage("check_env", environ=environ)
    assert result.returncode == 1
    for line in (
        "FATAL   DEBUG: must be off in production",
        "FATAL   SECRET_KEY: is the embedded development key",
        "FATAL   DATABASE_URL: must be PostgreSQL in production",
        "FATAL   NERUBA_API_DOCS: public API docs in production",
        "FATAL   STRIPE_WEBHOOK_SECRETS: Stripe is enabled",
    ):
        assert line in result.stdout
    assert "dev-insecure-key" not in result.stdout and "sk_live_abc" not in result.stdout


def test_check_env_passes_a_complete_production_environment() -> None:
    result = manage("check_env", environ=clean_environ(**PRODUCTION))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check_env: 0 fatal, 0 warning(s)" in result.stdout


def test_check_env_gives_byte_identical_output_for_the_same_environment() -> None:
    environ = clean_environ(NERUBA_ENV="production", DEBUG="on", NERUBA_LOCK_TTL="soon")
    first = manage("check_env", "--values", environ=environ)
    second = manage("check_env", "--values", environ=environ)
    assert first.returncode == second.returncode == 1
    assert first.stdout == second.stdout
    assert "NERUBA_LOCK_TTL" in first.stdout


def test_check_deploy_is_clean_with_a_complete_production_environment() -> None:
    result = manage("check", "--deploy", environ=clean_environ(**PRODUCTION))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


def test_production_refuses_to_start_with_fatal_problems() -> None:
    environ = clean_environ(**PRODUCTION, DEBUG="true")
    result = manage("check", environ=environ)
    assert result.returncode != 0
    assert "refuses to start in production" in result.stderr
    assert "DEBUG: must be off in production" in result.stderr


def test_check_env_values_never_print_secrets() -> None:
    result = manage("check_env", "--values", environ=clean_environ(**PRODUCTION))
    assert result.returncode == 0
    for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "METRICS_TOKEN"):
        assert PRODUCTION[name] not in result.stdout + result.stderr
        assert f"  {name} = (set) [env]" in result.stdout
    assert "  ALLOWED_HOSTS = ['billing.example.com'] [env]" in result.stdout
