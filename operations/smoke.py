"""The known-good sequence after every deploy or environment change.

Each step answers pass/fail with its timing; a failure names the runbook section to open.
Smoke data belongs to the ``neruba-smoke`` customer, which never has a subscription, so it
is never billed.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import stripe
from django.conf import settings
from django.test import Client
from django.utils import timezone

from ingest import services as ingest_services
from ingest.models import IngestRejection, Metric
from neruba import services as kernel_services
from neruba.models import ApiKey, Customer
from webhooks import outbound
from webhooks.models import StripeEvent

SMOKE_CUSTOMER = "neruba-smoke"
SMOKE_METRIC = "neruba_smoke"
RUNBOOK = "docs/runbooks"


@dataclass
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


class InProcess:
    """Runs requests through the whole Django stack in this process."""

    def __init__(self) -> None:
        host = next((h for h in settings.ALLOWED_HOSTS if h and "*" not in h), "localhost")
        self.client = Client(SERVER_NAME=host.lstrip("."))
        self.secure = bool(settings.SECURE_SSL_REDIRECT)
        self.label = "in-process"

    def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> Response:
        extra = {
            f"HTTP_{k.upper().replace('-', '_')}": v
            for k, v in headers.items()
            if k.lower() != "content-type"
        }
        content_type = headers.get("Content-Type", "application/json")
        # The 4xx answers smoke provokes on purpose (a conflict, a bad signature) are its own
        # checks, reported on its step line: Django's request warnings would print each one
        # again (twice, through two handlers).
        quiet = logging.getLogger("django.request")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            if method == "GET":
                response = self.client.get(path, secure=self.secure, **extra)
            else:
                response = self.client.post(
                    path, data=body or b"", content_type=content_type, secure=self.secure, **extra
                )
        finally:
            quiet.setLevel(level)
        return Response(response.status_code, response.content)


class Remote:
    """Talks to a deployment over HTTP(S), as its clients do."""

    def __init__(self, base_url: str, timeout: float = 10) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.label = self.base

    def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> Response:
        req = urllib.request.Request(  # noqa: S310 - the operator chose the URL
            self.base + path,
            data=body,
            method=method,
            headers=headers,
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return Response(resp.status, resp.read())
        except urllib.error.HTTPError as exc:
            return Response(exc.code, exc.read())


@dataclass
class Step:
    name: str
    ok: bool
    ms: float
    detail: str = ""
    runbook: str = ""

    def render(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        line = f"{verdict} {self.name:<22} {self.ms:7.1f} ms  {self.detail}"
        if not self.ok and self.runbook:
            line += f"\n     -> runbook: {self.runbook}"
        return line


@dataclass
class SmokeReport:
    target: str
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)


class StepFailed(Exception):
    pass


def smoke_fixtures_ensure() -> None:
    """The smoke customer (never subscribed, so never billed) and metric."""
    if not Customer.objects.filter(external_id=SMOKE_CUSTOMER).exists():
        kernel_services.customer_create(
            external_id=SMOKE_CUSTOMER, name="Neruba smoke checks", email="", currency="USD"
        )
    if not Metric.objects.filter(code=SMOKE_METRIC).exists():
        ingest_services.metric_create(code=SMOKE_METRIC, name="Smoke checks", aggregation="count")


def _smoke_event(key: str, run: str) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "customer": SMOKE_CUSTOMER,
        "metric": SMOKE_METRIC,
        "timestamp": timezone.now().isoformat(),
        "properties": {"smoke_run": run},
    }


def smoke_run(
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    webhook_secret: str | None = None,
    emit: Callable[[str], None] = print,
) -> SmokeReport:
    """Runs every step even after a failure, so one run shows everything that is wrong."""
    transport: InProcess | Remote = Remote(base_url) if base_url else InProcess()
    console_base = (base_url or "").rstrip("/")

    def runbook_url(runbook: str) -> str:
        # "webhooks.md#signature-failures" -> the console page that renders that section.
        page, _, anchor = runbook.partition("#")
        path = f"/console/runbooks/{page.removesuffix('.md')}" + (f"#{anchor}" if anchor else "")
        if console_base:
            return console_base + path
        return f"{path} (in the console; file {RUNBOOK}/{runbook})"

    report = SmokeReport(target=transport.label)
    run = uuid.uuid4().hex[:12]
    key = f"smoke-{run}"
    temporary_key: ApiKey | None = None
    if api_key is None:
        temporary_key, api_key = kernel_services.api_key_create(
            name=f"smoke {run}", scopes=["ingest", "read"], actor=None
        )
    auth = {"Authorization": f"Api-Key {api_key}", "Content-Type": "application/json"}
    readiness: dict[str, Any] = {}

    def step(name: str, runbook: str, check: Callable[[], str]) -> None:
        started = time.perf_counter()
        try:
            detail, ok = check(), True
        except StepFailed as exc:
            detail, ok = str(exc), False
        except Exception as exc:  # a broken deployment may fail in any way; report it
            detail, ok = f"{exc.__class__.__name__}: {exc}", False
        result = Step(
            name, ok, (time.perf_counter() - started) * 1000, detail, runbook_url(runbook)
        )
        report.steps.append(result)
        emit(result.render())

    def check_readiness() -> str:
        resp = transport.request("GET", "/readyz", {})
        readiness.update(resp.json() or {})
        if resp.status != 200:
            bad = [
                f"{k}: {v.get('detail')}"
                for k, v in readiness.get("checks", {}).items()
                if not v.get("ok")
            ]
            raise StepFailed(f"{resp.status} not ready ({'; '.join(bad) or 'no detail'})")
        # degraded serves traffic (200): the scheduler heartbeat step below is what fails.
        return str(readiness.get("status", "ready"))

    def post_event(payload: dict[str, Any], expected: str, status: int) -> str:
        resp = transport.request("POST", "/api/v1/events", auth, json.dumps(payload).encode())
        body = resp.json() or {}
        outcome = body.get("outcome") or (body.get("results") or [{}])[0].get("outcome")
        if resp.status != status or outcome != expected:
            raise StepFailed(f"expected {status} {expected}, got {resp.status} {outcome or body}")
        return f"{resp.status} {outcome}"

    def check_lookup() -> str:
        resp = transport.request("GET", f"/api/v1/events/{key}", auth)
        body = resp.json() or {}
        if resp.status != 200 or body.get("idempotency_key") != key:
            raise StepFailed(f"expected 200 with the event, got {resp.status} {body}")
        return f"found, {len(body.get('history', []))} outcome(s) in its history"

    def check_webhook() -> str:
        secrets = settings.NERUBA["STRIPE_WEBHOOK_SECRETS"]
        secret = webhook_secret or (secrets[0] if secrets else "")
        if not secret:
            raise StepFailed("no webhook secret configured (STRIPE_WEBHOOK_SECRETS)")
        event_id = f"evt_smoke_{run}"
        body = json.dumps(
            {
                "id": event_id,
                "object": "event",
                "type": "neruba.smoke",
                "api_version": None,
                "created": int(time.time()),
                "livemode": False,
                "data": {"object": {"id": f"smoke_{run}", "object": "neruba_smoke"}},
            }
        ).encode()
        header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret)
        resp = transport.request(
            "POST",
            "/webhooks/stripe",
            {"Stripe-Signature": header, "Content-Type": "application/json"},
            body,
        )
        if resp.status != 200:
            error = (resp.json() or {}).get("error", {})
            raise StepFailed(f"{resp.status} {error.get('code', '')}: {error.get('message', '')}")
        if not StripeEvent.objects.filter(stripe_id=event_id).exists() and base_url is None:
            raise StepFailed("answered 200 but the event was not stored")
        again = transport.request(
            "POST",
            "/webhooks/stripe",
            {"Stripe-Signature": header, "Content-Type": "application/json"},
            body,
        )
        if (again.json() or {}).get("status") != "duplicate":
            raise StepFailed(f"redelivery was not recognised as stored: {again.status}")
        return "signed, stored, redelivery recognised"

    def check_outbound() -> str:
        result = outbound.smoke_send()
        if not result["endpoints"]:
            return f"no endpoint subscribed to {outbound.SMOKE_TYPE}: nothing sent"
        bad = [r for r in result["results"] if r["outcome"] != "delivered"]
        if bad:
            raise StepFailed(
                "; ".join(
                    f"endpoint {r['endpoint']}: {r['outcome']} "
                    f"{r['status_code'] or ''} {r['error']}".strip()
                    for r in bad
                )
            )
        return f"{result['msg_id']} signed and delivered to {result['endpoints']} endpoint(s)"

    def check_heartbeat() -> str:
        scheduler = readiness.get("checks", {}).get("scheduler")
        if scheduler is None:
            raise StepFailed("readiness did not report the scheduler")
        if not scheduler.get("ok"):
            raise StepFailed(scheduler.get("detail", "scheduler heartbeat missing"))
        return scheduler.get("detail", "ok")

    try:
        smoke_fixtures_ensure()
        event = _smoke_event(key, run)
        step("readiness", "incident-triage.md#readiness", check_readiness)
        step(
            "ingest accepted", "ingest.md#failed-items", lambda: post_event(event, "accepted", 201)
        )
        step(
            "ingest duplicate",
            "ingest.md#duplicates-and-conflicts",
            lambda: post_event(event, "duplicate", 200),
        )
        step(
            "ingest conflict",
            "ingest.md#duplicates-and-conflicts",
            lambda: post_event(
                {**event, "properties": {"smoke_run": run, "changed": True}}, "conflict", 409
            ),
        )
        step("event lookup", "ingest.md#retracing-an-event", check_lookup)
        # The conflict step is meant to be refused; its rejection is smoke's own traffic, not
        # work for a person, so it is dismissed at once (audited) and the backlog stays at zero.
        for rejection in IngestRejection.objects.filter(
            idempotency_key=key, customer_ref=SMOKE_CUSTOMER, status=IngestRejection.Status.OPEN
        ):
            ingest_services.rejection_dismiss(
                rejection=rejection, actor=None, reason="smoke check: the conflict is expected"
            )
        step("webhook signed+stored", "webhooks.md#signature-failures", check_webhook)
        step(
            "outbound webhook delivered",
            "outbound-webhooks.md#smoke-check-fails",
            check_outbound,
        )
        step("scheduler heartbeat", "billing-runs.md#scheduler-heartbeat", check_heartbeat)
    finally:
        if temporary_key is not None:
            kernel_services.api_key_revoke(
                api_key=temporary_key, actor=None, reason="smoke run finished"
            )
    passed = sum(s.ok for s in report.steps)
    emit(
        f"smoke: {'PASS' if report.ok else 'FAIL'} {passed}/{len(report.steps)} steps "
        f"against {report.target}"
    )
    return report
