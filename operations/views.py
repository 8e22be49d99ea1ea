from __future__ import annotations

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from neruba.errors import envelope
from operations.health import readiness


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Process alive. Touches nothing."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    status, checks = readiness()
    # degraded (the scheduler) still serves: 200, so the load balancer keeps this process.
    return JsonResponse(
        {"status": status, "checks": checks}, status=503 if status == "not_ready" else 200
    )


_schema_view = SpectacularAPIView.as_view()
_swagger_view = SpectacularSwaggerView.as_view(url_name="openapi-schema")


def _docs_allowed(request: HttpRequest) -> bool | None:
    """True: serve. False: refuse. None: ask the staff member to log in first."""
    mode = settings.NERUBA_API_DOCS
    if mode == "public":
        return True
    if mode == "staff":
        user = request.user
        if user.is_authenticated and user.is_staff:
            return True
        return None if not user.is_authenticated else False
    return False


def _not_found() -> JsonResponse:
    return JsonResponse(envelope("not_found", "Not found."), status=404)


def openapi_schema(request: HttpRequest) -> HttpResponse:
    allowed = _docs_allowed(request)
    if not allowed:
        return _not_found()
    request.GET = request.GET.copy()
    request.GET["format"] = "json"
    return _schema_view(request)


def docs(request: HttpRequest) -> HttpResponse:
    allowed = _docs_allowed(request)
    if allowed is None:
        return redirect_to_login(request.get_full_path())
    if not allowed:
        return _not_found()
    return _swagger_view(request)
