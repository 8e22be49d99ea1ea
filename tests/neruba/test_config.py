from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings

from neruba import config
from neruba.config import BY_NAME, DEV_SECRET_KEY, VARIABLES, load, markdown_table

ROOT = Path(__file__).resolve().parents[2]
STRONG_KEY = "q7Vd2-Lm9xZp4Rt8Wb1Nc6Hy3Ks0Fg5Ju2Ea7Io9Pl4Uz8Xw1Qv6Mb3Tn0Ry5Sd"

PRODUCTION = {
    "NERUBA_ENV": "production",
    "SECRET_KEY": STRONG_KEY,
    "ALLOWED_HOSTS": "billing.example.com",
    "DATABASE_URL": "postgres://neruba:pw@db.internal:5432/neruba",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "METRICS_TOKEN": "metrics-token-123",
}
REQUIRED = ["SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL"]


def fatal_names(environ: dict[str, str]) -> set[str]:
    return {p.name for p in load(environ).fatal}


def fatal_messages(environ: dict[str, str], name: str) -> list[str]:
    return [p.message for p in load(environ).fatal if p.name == name]


def test_a_complete_production_environment_has_no_fatal_problems() -> None:
    report = load(PRODUCTION)
    assert report.env == "production"
    assert report.fatal == []
    assert report.problems == []


def test_production_without_any_settings_lists_every_required_variable_as_fatal() -> None:
    report = load({"NERUBA_ENV": "production"})
    for name in REQUIRED:
        assert any(
            p.name == name and p.severity == "fatal" and "required in production" in p.message
            for p in report.problems
        ), name


@pytest.mark.parametrize("missing", REQUIRED)
def test_each_missing_required_variable_is_fatal_on_its_own(missing: str) -> None:
    environ = {k: v for k, v in PRODUCTION.items() if k != missing}
    assert fatal_names(environ) == {missing}


def test_development_needs_no_variables_at_all() -> None:
    report = load({})
    assert report.env == "development"
    assert report.fatal == []
    assert report["DATABASE_URL"].startswith("sqlite:")


def test_debug_on_in_production_is_fatal() -> None:
    assert fatal_messages({**PRODUCTION, "DEBUG": "true"}, "DEBUG") == ["must be off in production"]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (DEV_SECRET_KEY, "embedded development key"),
        ("django-insecure-" + "x1y2z3" * 10, "embedded development key"),
        ("short-key", "too weak"),
        ("a" * 64, "too weak"),
    ],
)
def test_a_development_or_weak_secret_key_is_fatal_in_production(key: str, expected: str) -> None:
    messages = fatal_messages({**PRODUCTION, "SECRET_KEY": key}, "SECRET_KEY")
    assert len(messages) == 1 and expected in messages[0]


def test_sqlite_database_url_is_fatal_in_production() -> None:
    environ = {**PRODUCTION, "DATABASE_URL": "sqlite:///var/neruba.sqlite3"}
    assert fatal_names(environ) == {"DATABASE_URL"}
    assert "PostgreSQL" in fatal_messages(environ, "DATABASE_URL")[0]


def test_public_api_docs_are_fatal_in_production() -> None:
    assert fatal_names({**PRODUCTION, "NERUBA_API_DOCS": "public"}) == {"NERUBA_API_DOCS"}
    assert fatal_names({**PRODUCTION, "NERUBA_API_DOCS": "staff"}) == set()


def test_stripe_key_in_production_without_webhook_secrets_is_fatal_by_default() -> None:
    environ = {**PRODUCTION, "STRIPE_SECRET_KEY": "sk_live_abc"}
    assert fatal_names(environ) == {"STRIPE_WEBHOOK_SECRETS"}


def test_a_wildcard_allowed_host_is_fatal_in_production() -> None:
    assert fatal_names({**PRODUCTION, "ALLOWED_HOSTS": "*"}) == {"ALLOWED_HOSTS"}


@pytest.mark.parametrize("env", ["development", "production"])
def test_stripe_key_without_webhook_secrets_is_fatal(env: str) -> None:
    base = PRODUCTION if env == "production" else {}
    environ = {**base, "STRIPE_SECRET_KEY": "sk_test_abc", "STRIPE_WEBHOOK_SECRETS": ""}
    assert fatal_names(environ) == {"STRIPE_WEBHOOK_SECRETS"}
    with_secret = {**environ, "STRIPE_WEBHOOK_SECRETS": "whsec_one,whsec_two"}
    assert fatal_names(with_secret) == set()
    assert load(with_secret)["STRIPE_WEBHOOK_SECRETS"] == ["whsec_one", "whsec_two"]


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("NERUBA_INGEST_MAX_BATCH", "lots", "whole number"),
        ("NERUBA_INGEST_MAX_BATCH", "-5", ">= 0"),
        ("NERUBA_LOCK_TTL", "soon", "duration"),
        ("NERUBA_BILLING_GRACE", "1w", "duration"),
        ("DEBUG", "maybe", "boolean"),
        ("NERUBA_API_THROTTLE", "fast", "rate"),
        ("NERUBA_API_DOCS", "everyone", "must be one of"),
        ("REDIS_URL", "redis.internal/0", "scheme"),
        ("REDIS_URL", "redis-host:6379", "scheme"),
        ("DATABASE_URL", "localhost:5432/neruba", "scheme"),
    ],
)
def test_a_malformed_value_is_reported_as_fatal_and_the_default_is_kept(
    name: str, raw: str, expected: str
) -> None:
    report = load({name: raw})
    messages = [p.message for p in report.fatal if p.name == name]
    assert len(messages) == 1 and expected in messages[0]
    assert report[name] == config.PARSERS[BY_NAME[name].kind](BY_NAME[name].default)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("DATABASE_URL", "neruba:pa55w0rd@db.internal/neruba"),
        ("REDIS_URL", ":pa55w0rd@redis.internal:6379/0"),
    ],
)
def test_a_malformed_secret_is_reported_without_its_value(name: str, raw: str) -> None:
    report = load({**PRODUCTION, name: raw})
    messages = [p.render() for p in report.fatal if p.name == name]
    assert messages, report.problems
    assert not any("pa55w0rd" in m for m in messages)


def test_durations_are_parsed_to_seconds() -> None:
    report = load(
        {"NERUBA_LOCK_TTL": "2m", "NERUBA_INGEST_MAX_AGE": "35d", "NERUBA_SWEEP_INTERVAL": "90"}
    )
    assert report["NERUBA_LOCK_TTL"] == 120
    assert report["NERUBA_INGEST_MAX_AGE"] == 35 * 86400
    assert report["NERUBA_SWEEP_INTERVAL"] == 90


def test_an_unknown_environment_name_is_fatal() -> None:
    assert "NERUBA_ENV" in fatal_names({"NERUBA_ENV": "staging"})


def test_secrets_are_read_from_name_file_paths(tmp_path: Path) -> None:
    key_file = tmp_path / "secret_key"
    key_file.write_text(STRONG_KEY + "\n")
    db_file = tmp_path / "database_url"
    db_file.write_text("postgres://neruba:from-file@db:5432/neruba")
    environ = {k: v for k, v in PRODUCTION.items() if k not in {"SECRET_KEY", "DATABASE_URL"}}
    environ |= {"SECRET_KEY_FILE": str(key_file), "DATABASE_URL_FILE": str(db_file)}
    report = load(environ)
    assert report.fatal == []
    assert report["SECRET_KEY"] == STRONG_KEY
    assert report["DATABASE_URL"] == "postgres://neruba:from-file@db:5432/neruba"
    assert report.sources["SECRET_KEY"] == "file"


def test_an_unreadable_secret_file_is_fatal(tmp_path: Path) -> None:
    environ = {**PRODUCTION, "SECRET_KEY_FILE": str(tmp_path / "missing")}
    del environ["SECRET_KEY"]
    messages = fatal_messages(environ, "SECRET_KEY")
    assert any("SECRET_KEY_FILE points at an unreadable file" in m for m in messages)


def test_name_file_is_ignored_for_variables_that_are_not_secrets(tmp_path: Path) -> None:
    path = tmp_path / "debug"
    path.write_text("true")
    assert load({"DEBUG_FILE": str(path)})["DEBUG"] is True  # the dev default, not the file
    assert load({"NERUBA_ENV": "test", "DEBUG_FILE": str(path)})["DEBUG"] is False


def test_the_same_environment_always_gives_the_same_report() -> None:
    environ = {
        "NERUBA_ENV": "production",
        "DEBUG": "yes",
        "SECRET_KEY": "weak",
        "DATABASE_URL": "sqlite:///x.db",
        "NERUBA_API_DOCS": "public",
        "STRIPE_SECRET_KEY": "sk_live_x",
        "NERUBA_LOCK_TTL": "forever",
    }
    first = load(environ)
    renders = [[p.render() for p in load(dict(environ)).problems] for _ in range(3)]
    assert all(r == [p.render() for p in first.problems] for r in renders)
    assert len(first.fatal) >= 6
    # Reversing the insertion order of the mapping changes nothing either.
    reversed_env = dict(reversed(list(environ.items())))
    assert [p.render() for p in load(reversed_env).problems] == renders[0]


def test_the_readme_configuration_table_is_generated_from_the_variable_list() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- config-table:start -->\n(.*?)\n<!-- config-table:end -->", readme, re.DOTALL
    )
    assert match, "README has no configuration table markers"
    assert match.group(1) == markdown_table()


def test_every_variable_appears_in_the_readme_table() -> None:
    table = markdown_table()
    for var in VARIABLES:
        assert f"| `{var.name}` |" in table


def test_settings_expose_exactly_the_declared_variables() -> None:
    assert set(settings.NERUBA) == set(BY_NAME)


def test_every_variable_the_code_reads_is_declared() -> None:
    pattern = re.compile(r"""(?:NERUBA|CONFIG)(?:\[|\.get\()\s*["']([A-Z][A-Z0-9_]*)["']""")
    used: dict[str, str] = {}
    for app in ("neruba", "ingest", "billing", "webhooks", "operations"):
        for path in (ROOT / app).rglob("*.py"):
            for name in pattern.findall(path.read_text()):
                used.setdefault(name, str(path.relative_to(ROOT)))
    assert "NERUBA_HEARTBEAT_MAX_AGE" in used  # the scan finds real uses
    undeclared = {name: where for name, where in used.items() if name not in BY_NAME}
    assert undeclared == {}
