"""API-key authentication, scope permissions and per-key throttling for the DRF API."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from neruba import context
from neruba.models import ApiKey

if TYPE_CHECKING:
    from rest_framework.views import APIView

KEYWORD = "Api-Key"
# `Bearer` is the Stripe, OpenMeter and Lago convention: their clients send the key that way.
KEYWORDS = frozenset({"api-key", "bearer"})
HEADER_HINT = "`Authorization: Api-Key <key>` or `Authorization: Bearer <key>`"

# Verified keys are remembered in-process for a few seconds: single-event ingest is bound by
# database round trips, and the key lookup was one of them. The price is that a revoked key
# keeps working on each worker for at most this long. Off in tests, where revocation is
# asserted immediately.
API_KEY_CACHE_SECONDS = 0.0 if getattr(settings, "TESTING", False) else 5.0
_API_KEY_CACHE_MAX = 1024
_verified: dict[bytes, tuple[float, ApiKey]] = {}
_verified_lock = threading.Lock()


def _verified_key(key: str) -> ApiKey:
    """``ApiKey.objects.get_from_key`` behind the short in-process cache. Entries are keyed by
    a digest of the presented key, so the cache never holds a secret."""
    if API_KEY_CACHE_SECONDS <= 0:
        return ApiKey.objects.get_from_key(key)
    digest = hashlib.sha256(key.encode()).digest()
    now = time.monotonic()
    hit = _verified.get(digest)
    if hit is not None and hit[0] > now:
        return hit[1]
    api_key = ApiKey.objects.get_from_key(key)
    with _verified_lock:
        if len(_verified) >= _API_KEY_CACHE_MAX:
            _verified.clear()
        _verified[digest] = (now + API_KEY_CACHE_SECONDS, api_key)
    return api_key


class ApiKeyAuthentication(BaseAuthentication):
    """``Authorization: Api-Key <prefix>.<secret>`` or ``Authorization: Bearer <prefix>.<secret>``
    (the same key either way). The key is verified against its SHA-512 hash; revoked and expired
    keys are refused."""

    def authenticate(self, request: Request) -> tuple[None, ApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        keyword, _, key = header.partition(" ")
        # Authentication schemes are case-insensitive (RFC 9110 §11.1).
        if keyword.lower() not in KEYWORDS or not key.strip():
            raise exceptions.AuthenticationFailed(f"Use the header {HEADER_HINT}.")
        key = key.strip()
        try:
            api_key = _verified_key(key)
        except ApiKey.DoesNotExist:
            raise exceptions.AuthenticationFailed("The API key is not valid.") from None
        if api_key.has_expired:
            raise exceptions.AuthenticationFailed("The API key has expired.")
        context.api_key_prefix.set(api_key.prefix)
        return (None, api_key)

    def authenticate_header(self, request: Request) -> str:
        return KEYWORD


class HasApiKey(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        if not isinstance(request.auth, ApiKey):
            raise exceptions.NotAuthenticated(f"An API key is required: {HEADER_HINT}.")
        return True


class ScopeDenied(exceptions.PermissionDenied):
    neruba_code = "missing_scope"


class HasScope(HasApiKey):
    """Checks the scope the view names for the request's method in ``required_scopes``."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        super().has_permission(request, view)
        scopes: dict[str, str] = getattr(view, "required_scopes", {})
        method = "GET" if request.method == "HEAD" else request.method or ""
        needed = scopes.get(method, scopes.get("*"))
        if needed is None:
            if not hasattr(view, (request.method or "").lower()):
                return True  # no such method: dispatch answers 405 with the Allow header
            raise ScopeDenied("This operation is not available to API keys.")
        if not request.auth.has_scope(needed):  # type: ignore[union-attr]
            raise ScopeDenied(f"The API key lacks the `{needed}` scope.", code="missing_scope")
        return True


class ApiKeyRateThrottle(BaseThrottle):
    """Per-key fixed-window rate limit (``NERUBA_API_THROTTLE``); 429 with Retry-After.

    A counter per key and window (one cache INCR a request) rather than DRF's timestamp list,
    whose cost grows with the rate itself. In production the cache is Redis, so the limit holds
    across gunicorn workers and hosts."""

    _PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def __init__(self) -> None:
        self._wait: float | None = None

    def rate(self) -> tuple[int, int]:
        num, period = api_settings.DEFAULT_THROTTLE_RATES["api_key"].split("/")
        return int(num), self._PERIODS[period[0]]

    def allow_request(self, request: Request, view: APIView) -> bool:
        limit, period = self.rate()
        ident = request.auth.prefix if isinstance(request.auth, ApiKey) else self.get_ident(request)
        now = time.time()
        key = f"throttle:{ident}:{int(now // period)}"
        if cache.add(key, 1, timeout=period * 2):
            count = 1
        else:
            try:
                count = cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.add(key, 1, timeout=period * 2)
                count = 1
        if count > limit:
            self._wait = period - (now % period)
            return False
        return True

    def wait(self) -> float | None:
        return self._wait


def api_key_from_request(request: HttpRequest | Request) -> ApiKey | None:
    auth: Any = getattr(request, "auth", None)
    return auth if isinstance(auth, ApiKey) else None
