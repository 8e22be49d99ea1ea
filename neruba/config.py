"""Neruba's configuration: one declarative list of environment variables.

The same list drives ``settings.py``, ``manage.py check_env`` and the README's configuration
table (``tests/neruba/test_config.py`` keeps the three in step). Reading is pure: the same
environment mapping in gives the same values and the same problems out, so ``check_env`` is
deterministic.

This module imports nothing from Django so that settings can use it before Django is set up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENVIRONMENTS = ("development", "production", "test")
BASE_DIR = Path(__file__).resolve().parent.parent

DEV_SECRET_KEY = "dev-insecure-neruba-secret-key-change-me-in-production-0123456789"
# Signs smoke and demo webhook events in development; refused in production (see load()).
DEV_WEBHOOK_SECRET = "whsec_ZGV2LW5lcnViYS1sb2NhbC1vbmx5"

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigValueError(ValueError):
    pass


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigValueError(f"expected a boolean (true/false), got {raw!r}")


def parse_int(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError as exc:
        raise ConfigValueError(f"expected a whole number, got {raw!r}") from exc
    if value < 0:
        raise ConfigValueError(f"expected a number >= 0, got {raw!r}")
    return value


def parse_duration(raw: str) -> int:
    """Seconds from ``90``, ``90s``, ``5m``, ``1h`` or ``35d``."""
    match = _DURATION.match(raw)
    if not match:
        raise ConfigValueError(f"expected a duration such as 300s, 5m, 1h or 35d, got {raw!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def parse_str(raw: str) -> str:
    return raw.strip()


def parse_url(raw: str) -> str:
    value = raw.strip()
    # "host:6379" parses with the scheme "host"; every URL we take has "scheme://".
    if value and ("://" not in value or not urlsplit(value).scheme):
        raise ConfigValueError(f"expected a URL with a scheme, got {value!r}")
    return value


def parse_rate(raw: str) -> str:
    value = raw.strip()
    if not re.match(r"^\d+/(s|sec|second|m|min|minute|h|hour|d|day)$", value):
        raise ConfigValueError(f"expected a rate such as 1000/s or 60000/min, got {raw!r}")
    return value


PARSERS: dict[str, Callable[[str], Any]] = {
    "bool": parse_bool,
    "int": parse_int,
    "duration": parse_duration,
    "list": parse_list,
    "str": parse_str,
    "url": parse_url,
    "choice": parse_str,
    "rate": parse_rate,
}


@dataclass(frozen=True)
class Var:
    """One environment variable. ``default`` is the embedded development default (a string, as
    it would appear in the environment); ``production_default`` overrides it in production."""

    name: str
    kind: str
    default: str
    description: str
    required_in_production: bool = False
    secret: bool = False
    choices: tuple[str, ...] = ()
    production_default: str | None = None
    test_default: str | None = None

    def default_for(self, env: str) -> str:
        if env == "production" and self.production_default is not None:
            return self.production_default
        if env == "test" and self.test_default is not None:
            return self.test_default
        return self.default


VARIABLES: tuple[Var, ...] = (
    Var(
        "NERUBA_ENV",
        "choice",
        "development",
        "Which embedded defaults apply.",
        choices=ENVIRONMENTS,
    ),
    Var(
        "SECRET_KEY",
        "str",
        DEV_SECRET_KEY,
        "Django secret key (50+ random characters).",
        required_in_production=True,
        secret=True,
        production_default="",
    ),
    Var(
        "DEBUG",
        "bool",
        "true",
        "Django debug pages. Never on in production.",
        production_default="false",
        test_default="false",
    ),
    Var(
        "ALLOWED_HOSTS",
        "list",
        "localhost,127.0.0.1,[::1],testserver",
        "Host names this deployment answers to.",
        required_in_production=True,
        production_default="",
    ),
    Var(
        "CSRF_TRUSTED_ORIGINS",
        "list",
        "",
        "Origins trusted for console form posts (https://billing.example.com) when behind a proxy.",
    ),
    Var(
        "DATABASE_URL",
        "url",
        "sqlite:///var/neruba.sqlite3",
        "Database URL. PostgreSQL in production (postgres://user:pass@host:5432/db).",
        required_in_production=True,
        secret=True,
        production_default="",
    ),
    Var(
        "REDIS_URL",
        "url",
        "",
        "Redis URL for the Celery broker, cache and throttling. "
        "Empty in development: Celery uses a filesystem broker under var/.",
        required_in_production=True,
        secret=True,
    ),
    Var(
        "NERUBA_API_DOCS",
        "choice",
        "public",
        "Who may read /docs and /openapi.json.",
        choices=("off", "staff", "public"),
        production_default="off",
    ),
    Var(
        "NERUBA_TRUST_PROXY_HEADERS",
        "bool",
        "false",
        "Trust X-Forwarded-Proto and the last X-Forwarded-For address from the one reverse "
        "proxy (sets SECURE_PROXY_SSL_HEADER; the API throttles that address).",
    ),
    Var(
        "NERUBA_SSL_REDIRECT",
        "bool",
        "false",
        "Redirect plain HTTP to HTTPS (health, readiness and metrics are exempt).",
        production_default="true",
    ),
    Var(
        "NERUBA_HSTS_SECONDS",
        "int",
        "0",
        "Strict-Transport-Security max-age.",
        production_default="31536000",
    ),
    Var("METRICS_TOKEN", "str", "", "Bearer token required by /metrics when set.", secret=True),
    Var(
        "NERUBA_WORKER_METRICS_PORT",
        "int",
        "0",
        "Port on which each Celery worker serves its Prometheus metrics (0: off). Set "
        "PROMETHEUS_MULTIPROC_DIR on the worker too so its pool processes are counted.",
    ),
    Var("LOG_LEVEL", "choice", "INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    Var(
        "LOG_FORMAT",
        "choice",
        "text",
        "Log lines as plain text or JSON.",
        choices=("text", "json"),
        production_default="json",
    ),
    Var("NERUBA_API_THROTTLE", "rate", "120000/min", "Requests allowed per API key."),
    Var(
        "NERUBA_API_ADDRESS_THROTTLE",
        "rate",
        "300/min",
        "Requests without a valid API key allowed per client address (checked before any key "
        "is looked up).",
    ),
    Var(
        "NERUBA_ADMIN_LOGIN_MAX_FAILURES",
        "int",
        "10",
        "Failed console logins from one address before it is locked out for 15 minutes.",
    ),
    Var("NERUBA_INGEST_MAX_BATCH", "int", "1000", "Most events in one ingest request."),
    Var("NERUBA_INGEST_MAX_BYTES", "int", "5242880", "Largest ingest request body (413 above)."),
    Var(
        "NERUBA_INGEST_MAX_PROPERTIES_BYTES",
        "int",
        "8192",
        "Largest properties object of one event.",
    ),
    Var("NERUBA_INGEST_MAX_AGE", "duration", "35d", "Oldest event timestamp accepted."),
    Var(
        "NERUBA_INGEST_MAX_SKEW",
        "duration",
        "5m",
        "How far in the future an event timestamp may be.",
    ),
    Var(
        "NERUBA_INGEST_RETENTION",
        "duration",
        "90d",
        "How long ingest batches and rejections are kept before the retention sweep prunes them.",
    ),
    Var(
        "NERUBA_EVENT_ARCHIVE_AFTER",
        "duration",
        "0s",
        "Months of usage events older than this may be archived (detached and exported) by "
        "`manage.py archive_events`; 0s (the default) archives nothing: billing records are kept.",
    ),
    Var(
        "NERUBA_BILLING_GRACE",
        "duration",
        "1h",
        "Wait after a window closes before it is billed, so late events land first.",
    ),
    Var(
        "NERUBA_BILLING_SHARDS",
        "int",
        "0",
        "0: the beat's billing scan bills every window in one process. N > 0: it splits the due "
        "windows into N customer-range shards that Celery workers bill in parallel.",
    ),
    Var("NERUBA_BILLING_SCAN_INTERVAL", "duration", "60s", "How often beat starts a billing scan."),
    Var("NERUBA_LOCK_TTL", "duration", "120s", "Lease length of scheduler locks."),
    Var(
        "NERUBA_LOCK_WAIT",
        "duration",
        "2s",
        "Longest wait for a scheduler lock row; a wait that runs out counts as lock_held.",
    ),
    Var(
        "NERUBA_HEARTBEAT_MAX_AGE",
        "duration",
        "180s",
        "Readiness is degraded (and smoke fails) when the scheduler heartbeat is older than this.",
    ),
    Var(
        "NERUBA_BEAT_LEASE",
        "duration",
        "30s",
        "Lease of the active celery beat; a standby beat takes over within about this long "
        "after the active one dies.",
    ),
    Var(
        "NERUBA_RECONCILE_AFTER",
        "duration",
        "3d",
        "Invoices pushed to Stripe with no payment outcome after this are reconciled.",
    ),
    Var(
        "NERUBA_SWEEP_INTERVAL",
        "duration",
        "15m",
        "How often beat runs the usage_drift, stuck_runs, webhook_retries and outbox sweeps.",
    ),
    Var(
        "NERUBA_SWEEP_RECONCILIATION_INTERVAL",
        "duration",
        "6h",
        "How often beat runs the payment reconciliation sweep (one Stripe request per invoice "
        "waiting past NERUBA_RECONCILE_AFTER).",
    ),
    Var(
        "NERUBA_SWEEP_RETENTION_INTERVAL",
        "duration",
        "1d",
        "How often beat runs the retention sweep.",
    ),
    Var(
        "NERUBA_DRIFT_FULL_INTERVAL",
        "duration",
        "1d",
        "The usage drift sweep re-checks every invoiced window this often; in between it only "
        "re-checks windows that late events touched.",
    ),
    Var(
        "STRIPE_SECRET_KEY",
        "str",
        "",
        "Stripe API key. Empty: the local payment provider keeps invoices open until marked paid.",
        secret=True,
    ),
    Var(
        "STRIPE_WEBHOOK_SECRETS",
        "list",
        DEV_WEBHOOK_SECRET,
        "Comma-separated webhook signing secrets (several during rotation). Development has a "
        "local-only default so `smoke` can sign its own event; production refuses it.",
        secret=True,
        production_default="",
    ),
    Var(
        "STRIPE_WEBHOOK_TOLERANCE",
        "duration",
        "300s",
        "Largest age (or future skew) of a webhook signature timestamp.",
    ),
    Var(
        "STRIPE_WEBHOOK_MAX_ATTEMPTS",
        "int",
        "8",
        "Processing attempts before a Stripe event is dead.",
    ),
    Var("STRIPE_WEBHOOK_MAX_BYTES", "int", "1048576", "Largest webhook body accepted."),
    Var(
        "NERUBA_OUTBOUND_MAX_ATTEMPTS",
        "int",
        "8",
        "Delivery attempts of an outbound webhook before it is dead.",
    ),
    Var(
        "NERUBA_OUTBOUND_DISABLE_AFTER",
        "duration",
        "5d",
        "An endpoint failing continuously this long is disabled (with the reason).",
    ),
    Var(
        "NERUBA_OUTBOUND_ROTATION_GRACE",
        "duration",
        "24h",
        "After a secret rotation the old secret also signs for this long.",
    ),
    Var(
        "NERUBA_OUTBOUND_ALLOW_PRIVATE",
        "bool",
        "true",
        "Allow endpoints on loopback, private, link-local or metadata addresses (and http:// "
        "in production). Off in production.",
        production_default="false",
    ),
    Var(
        "NERUBA_OUTBOUND_CONNECT_TIMEOUT",
        "duration",
        "3s",
        "Connect timeout of an outbound webhook request.",
    ),
    Var(
        "NERUBA_OUTBOUND_READ_TIMEOUT",
        "duration",
        "10s",
        "Read timeout of an outbound webhook request.",
    ),
)

BY_NAME = {var.name: var for var in VARIABLES}


@dataclass(frozen=True)
class Problem:
    severity: str  # "fatal" or "warning"
    name: str
    message: str

    def render(self) -> str:
        return f"{self.severity.upper():7} {self.name}: {self.message}"


@dataclass
class Config:
    env: str
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # env, file, default
    problems: list[Problem] = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "fatal"]

    @property
    def stripe_enabled(self) -> bool:
        return bool(self.values.get("STRIPE_SECRET_KEY"))


def _raw_value(var: Var, environ: Mapping[str, str], problems: list[Problem]) -> tuple[str, str]:
    """Raw string and its source. Secrets may come from ``NAME_FILE`` (Docker secrets)."""
    file_name = f"{var.name}_FILE"
    if var.secret and environ.get(file_name):
        path = Path(environ[file_name])
        try:
            return path.read_text().rstrip("\r\n"), "file"
        except OSError as exc:
            problems.append(
                Problem(
                    "fatal", var.name, f"{file_name} points at an unreadable file ({exc.strerror})"
                )
            )
    if var.name in environ:
        return environ[var.name], "env"
    return "", "default"


def _weak_secret_key(key: str) -> str | None:
    if not key:
        return None
    if key == DEV_SECRET_KEY or key.startswith(("django-insecure", "dev-insecure")):
        return "is the embedded development key"
    if len(key) < 50 or len(set(key)) < 5:
        return "is too weak (use 50+ random characters)"
    return None


def _parsed(
    *, var: Var, raw: str, source: str, env: str, problems: list[Problem]
) -> tuple[Any, str]:
    """One variable's value and source; a bad value is a fatal problem and falls back to the
    environment's default."""
    try:
        value = PARSERS[var.kind](raw)
        if var.choices and value not in var.choices:
            raise ConfigValueError(f"must be one of {', '.join(var.choices)}, got {value!r}")
    except ConfigValueError as exc:
        message = str(exc)
        if var.secret:
            # A malformed secret is still a secret: name the problem, never the value.
            message = message.split(", got ")[0] + " (value not shown: secret)"
        problems.append(Problem("fatal", var.name, message))
        value = PARSERS[var.kind](var.default_for(env)) if var.name != "NERUBA_ENV" else env
        return value, "default"
    return value, source


def _production_problems(*, values: dict[str, Any]) -> list[Problem]:
    """The settings that are legal anywhere but unsafe in production."""
    problems: list[Problem] = []
    if values["DEBUG"]:
        problems.append(Problem("fatal", "DEBUG", "must be off in production"))
    weak = _weak_secret_key(values["SECRET_KEY"])
    if weak:
        problems.append(Problem("fatal", "SECRET_KEY", weak))
    db = values["DATABASE_URL"]
    if db and urlsplit(db).scheme not in {"postgres", "postgresql", "pgsql", "psql"}:
        problems.append(
            Problem(
                "fatal",
                "DATABASE_URL",
                "must be PostgreSQL in production (SQLite is for development)",
            )
        )
    if values["NERUBA_API_DOCS"] == "public":
        problems.append(
            Problem("fatal", "NERUBA_API_DOCS", "public API docs in production: use off or staff")
        )
    if "*" in values["ALLOWED_HOSTS"]:
        problems.append(Problem("fatal", "ALLOWED_HOSTS", "a wildcard host is unsafe"))
    if not values["NERUBA_SSL_REDIRECT"] and not values["NERUBA_TRUST_PROXY_HEADERS"]:
        problems.append(
            Problem(
                "warning",
                "NERUBA_SSL_REDIRECT",
                "off without a trusted TLS proxy: traffic may be plain HTTP",
            )
        )
    if not values["METRICS_TOKEN"]:
        problems.append(
            Problem(
                "warning",
                "METRICS_TOKEN",
                "unset: /metrics is readable by anyone who can reach it",
            )
        )
    return problems


def load(environ: Mapping[str, str]) -> Config:
    problems: list[Problem] = []
    env = environ.get("NERUBA_ENV", "development").strip() or "development"
    if env not in ENVIRONMENTS:
        problems.append(
            Problem("fatal", "NERUBA_ENV", f"must be one of {', '.join(ENVIRONMENTS)}, got {env!r}")
        )
        env = "production"  # an unknown environment gets the strictest defaults
    config = Config(env=env)
    production = env == "production"

    for var in VARIABLES:
        raw, source = _raw_value(var, environ, problems)
        if source == "default":
            raw = var.default_for(env)
        value, source = _parsed(var=var, raw=raw, source=source, env=env, problems=problems)
        if var.name == "NERUBA_ENV":
            value = env
        config.values[var.name] = value
        config.sources[var.name] = source
        if production and var.required_in_production and not value:
            problems.append(Problem("fatal", var.name, "is required in production"))

    if production:
        problems.extend(_production_problems(values=config.values))
    if config.values["STRIPE_SECRET_KEY"] and not config.values["STRIPE_WEBHOOK_SECRETS"]:
        problems.append(
            Problem(
                "fatal",
                "STRIPE_WEBHOOK_SECRETS",
                "Stripe is enabled (STRIPE_SECRET_KEY) but no webhook secret is set",
            )
        )
    if production and DEV_WEBHOOK_SECRET in config.values["STRIPE_WEBHOOK_SECRETS"]:
        problems.append(
            Problem("fatal", "STRIPE_WEBHOOK_SECRETS", "contains the development secret")
        )
    for secret in config.values["STRIPE_WEBHOOK_SECRETS"]:
        if not secret.startswith("whsec_"):
            problems.append(
                Problem("warning", "STRIPE_WEBHOOK_SECRETS", "a secret does not start with whsec_")
            )
            break

    order = {var.name: i for i, var in enumerate(VARIABLES)}
    config.problems = sorted(
        problems, key=lambda p: (order.get(p.name, 999), p.severity, p.message)
    )
    return config


def markdown_table() -> str:
    """The README's configuration table, generated from the list."""
    rows = [
        "| Variable | Type | Development default | Production | Description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for var in VARIABLES:
        dev = (
            "*(secret)*"
            if var.secret and var.default
            else (f"`{var.default}`" if var.default else "—")
        )
        if var.required_in_production:
            prod = "**required**"
        elif var.production_default is not None:
            prod = f"`{var.production_default}`" if var.production_default else "—"
        else:
            prod = "same"
        kind = var.kind if not var.choices else " \\| ".join(var.choices)
        extra = " Also `NAME_FILE`." if var.secret else ""
        rows.append(f"| `{var.name}` | {kind} | {dev} | {prod} | {var.description}{extra} |")
    return "\n".join(rows)
