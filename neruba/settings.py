"""Neruba settings: every value comes from ``neruba.config.VARIABLES``."""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import environ
from django.core.exceptions import ImproperlyConfigured

from neruba.config import BASE_DIR, load

if "pytest" in sys.modules:
    os.environ.setdefault("NERUBA_ENV", "test")
CONFIG = load(os.environ)
NERUBA_ENV: str = CONFIG.env
PRODUCTION = NERUBA_ENV == "production"
TESTING = NERUBA_ENV == "test" or "pytest" in sys.modules

# Production refuses to start with fatal problems; check_env itself must still load to report them.
if PRODUCTION and CONFIG.fatal and sys.argv[1:2] != ["check_env"]:
    raise ImproperlyConfigured(
        "Neruba refuses to start in production:\n"
        + "\n".join(p.render() for p in CONFIG.fatal)
        + "\nRun `manage.py check_env` for the full report."
    )

SECRET_KEY: str = CONFIG["SECRET_KEY"] or "unset-production-key-refused-at-start-by-check-env"
DEBUG: bool = CONFIG["DEBUG"]
ALLOWED_HOSTS: list[str] = CONFIG["ALLOWED_HOSTS"]
CSRF_TRUSTED_ORIGINS: list[str] = CONFIG["CSRF_TRUSTED_ORIGINS"]

INSTALLED_APPS = [
    "django.contrib.admin.apps.SimpleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    "axes",
    "neruba",
    "ingest",
    "billing",
    "webhooks",
    "operations",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "neruba.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: turns a locked-out console login into a 429 page.
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "neruba.urls"
WSGI_APPLICATION = "neruba.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
_env = environ.Env()
_db_url: str = CONFIG["DATABASE_URL"] or "sqlite:///var/neruba.sqlite3"
if _db_url.startswith("sqlite:///") and not _db_url.startswith("sqlite:////"):
    # Relative SQLite paths live under the project folder, whatever the working directory.
    _db_url = "sqlite:////" + str(BASE_DIR / _db_url.removeprefix("sqlite:///")).lstrip("/")
DATABASES = {"default": _env.db_url_config(_db_url)}
_default_db = DATABASES["default"]
if _default_db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock at BEGIN so two
    # writers queue on busy_timeout instead of failing mid-transaction with "database is locked".
    _default_db["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    (BASE_DIR / "var").mkdir(exist_ok=True)
else:
    _default_db["ENGINE"] = "django.db.backends.postgresql"
    _default_db.setdefault("CONN_MAX_AGE", 60)
    _default_db["CONN_HEALTH_CHECKS"] = True
    # Server-side prepared statements for the queries that bind on the server (ingest's hot
    # statements; Django's own cursors bind on the client and are unaffected): the big ingest
    # statement is then parsed and planned once per connection, not once per request. Not for
    # a transaction-pooling PgBouncer in front of PostgreSQL (Neruba's deploy has none).
    _default_db.setdefault("OPTIONS", {}).setdefault("prepare_threshold", 5)
    # Each pytest process may get its own test database (parallel runs on one server).
    _suffix = os.environ.get("NERUBA_TEST_DB_SUFFIX", "")
    _default_db["TEST"] = {"NAME": f"test_{_default_db['NAME']}{_suffix}"}
_default_db["ATOMIC_REQUESTS"] = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache and Celery ---------------------------------------------------------------------
REDIS_URL: str = CONFIG["REDIS_URL"]
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"neruba{os.environ.get('NERUBA_TEST_DB_SUFFIX', '')}",
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    # Billing tasks are acked late; the visibility timeout must exceed the longest task.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    _broker_dir = BASE_DIR / "var" / "celery"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        # Broadcast (celery control) files; kombu's default is a folder in the working directory.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = TESTING and not os.environ.get("NERUBA_CELERY_REAL")
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULE_FILENAME = str(BASE_DIR / "var" / "celerybeat-schedule")
CELERY_TIMEZONE = "UTC"

# --- Auth, console ---------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if TESTING:
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGIN_URL = "admin:login"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Console login lockout (django-axes): N failures from one address lock it out for 15 minutes.
# Off in tests unless a test turns it on, since the test client logs in without a request.
AXES_ENABLED = not TESTING
AXES_FAILURE_LIMIT: int = CONFIG["NERUBA_ADMIN_LOGIN_MAX_FAILURES"]
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False  # no banner line on every command and process start
AXES_ENABLE_ADMIN = False
AXES_CLIENT_IP_CALLABLE = "neruba.middleware.client_ip"
AXES_LOCKOUT_TEMPLATE = "admin/neruba/locked_out.html"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# --- Security --------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
SECURE_SSL_REDIRECT: bool = CONFIG["NERUBA_SSL_REDIRECT"]
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS: int = CONFIG["NERUBA_HSTS_SECONDS"]
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if CONFIG["NERUBA_TRUST_PROXY_HEADERS"]:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    USE_X_FORWARDED_HOST = True
# Bodies are bounded per endpoint (ingest, webhooks) by their own limits; this caps the rest.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(CONFIG["NERUBA_INGEST_MAX_BYTES"], 2_621_440)

# --- DRF ------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["neruba.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["neruba.auth.HasApiKey"],
    "DEFAULT_THROTTLE_CLASSES": ["neruba.auth.ApiKeyRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"api_key": CONFIG["NERUBA_API_THROTTLE"]},
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "neruba.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "neruba.schema.NerubaAutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Neruba API",
    "DESCRIPTION": "Usage ingest, catalog, subscriptions, invoices and credits. "
    "Authenticate with `Authorization: Api-Key <key>` or `Authorization: Bearer <key>`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Who may read the docs is decided by NERUBA_API_DOCS in operations.views, not by DRF auth.
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "neruba.schema.add_error_responses",
    ],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
NERUBA_API_DOCS: str = CONFIG["NERUBA_API_DOCS"]

# --- Logging --------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_context": {"()": "neruba.logging.RequestContextFilter"},
        "redact": {"()": "neruba.logging.RedactSecretsFilter"},
    },
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s "
            "%(api_key_prefix)s %(idempotency_key)s %(stripe_event_id)s",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": CONFIG["LOG_FORMAT"],
            "filters": ["request_context", "redact"],
        }
    },
    "root": {"handlers": ["console"], "level": CONFIG["LOG_LEVEL"]},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Neruba ---------------------------------------------------------------------------------
NERUBA = {name: CONFIG[name] for name in CONFIG.values}
NERUBA_LOCK_TTL = timedelta(seconds=CONFIG["NERUBA_LOCK_TTL"])
