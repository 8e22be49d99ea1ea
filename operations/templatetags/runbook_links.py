"""``{% runbook_links opts %}``: the runbook sections that concern a console object."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()

# model label -> (link text, runbook slug, section anchor)
RUNBOOK_LINKS: dict[str, list[tuple[str, str, str]]] = {
    "webhooks.stripeevent": [
        ("Runbook: failed and dead events", "webhooks", "failed-and-dead-events"),
        ("Runbook: replaying Stripe events", "webhooks", "replaying-stripe-events"),
    ],
    "ingest.ingestrejection": [
        ("Runbook: failed items", "ingest", "failed-items"),
        ("Runbook: replaying rejections", "ingest", "replaying-rejections"),
    ],
    "ingest.usageevent": [("Runbook: retracing an event", "ingest", "retracing-an-event")],
    "billing.billingrun": [("Runbook: stuck run or lock", "billing-runs", "stuck-run-or-lock")],
    "neruba.schedulerlock": [
        ("Runbook: stuck run or lock", "billing-runs", "stuck-run-or-lock"),
    ],
    "billing.invoice": [("Runbook: reruns", "billing-runs", "reruns")],
    "billing.driftfinding": [("Runbook: resolving a finding", "drift", "resolving-a-finding")],
    "billing.providersync": [("Runbook: payment reconciliation", "reconciliation", "what-it-does")],
}


@register.simple_tag
def runbook_links(opts: Any) -> list[dict[str, str]]:
    return [
        {"label": label, "url": f"/console/runbooks/{slug}#{anchor}"}
        for label, slug, anchor in RUNBOOK_LINKS.get(opts.label_lower, [])
    ]
