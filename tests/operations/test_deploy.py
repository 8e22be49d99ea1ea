"""What CI can check of the deploy artifacts without a Docker engine."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_parses_with_web_worker_beat_postgres_and_redis() -> None:
    services = _compose()["services"]
    assert set(services) == {"web", "worker", "beat", "db", "redis"}
    assert services["db"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    for role in ("web", "worker", "beat"):
        assert services[role]["command"] == [role]
        assert services[role]["depends_on"]["db"]["condition"] == "service_healthy"
        env = services[role]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["REDIS_URL"].startswith("redis://")


def test_every_compose_role_is_handled_by_the_entrypoint() -> None:
    entrypoint = (DEPLOY / "entrypoint.sh").read_text()
    handled = set(re.findall(r"^\s{2}([a-z]+)\)$", entrypoint, flags=re.M))
    roles = {
        s["command"][0]
        for s in _compose()["services"].values()
        if "command" in s and s.get("image", "").startswith("neruba")
    }
    assert roles <= handled
    # check_env runs before anything else, migrations before gunicorn.
    assert entrypoint.index("check_env") < entrypoint.index("manage.py migrate_locked")
    assert entrypoint.index("manage.py migrate_locked") < entrypoint.index("exec gunicorn")
    assert "manage.py migrate " not in entrypoint, "every migrate takes the advisory lock"


def test_the_systemd_web_unit_migrates_under_the_advisory_lock() -> None:
    unit = (DEPLOY / "systemd" / "neruba-web.service").read_text()
    assert "ExecStartPre=/opt/neruba/.venv/bin/python manage.py migrate_locked" in unit
    assert "manage.py migrate " not in unit


def test_dockerfile_is_multi_stage_runs_unprivileged_and_checks_readiness() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, flags=re.M)) >= 2
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in {"root", "0"}
    assert "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile


def test_gunicorn_config_loads_and_marks_dead_workers_for_multiprocess_metrics() -> None:
    config = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    assert config["workers"] >= 1 and config["bind"]
    assert callable(config["child_exit"])


def test_production_env_example_names_only_declared_variables() -> None:
    from neruba.config import BY_NAME

    extra = {"POSTGRES_PASSWORD"}
    for line in (DEPLOY / "env.production.example").read_text().splitlines():
        line = line.lstrip("# ").strip()
        match = re.match(r"^([A-Z][A-Z0-9_]+)=", line)
        if match:
            name = match.group(1).removesuffix("_FILE")
            assert name in BY_NAME or name in extra, name
