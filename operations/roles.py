"""Console roles, least privilege. The README's role table is written from this list, and
``tests/operations/test_roles.py`` checks each group can do what it says and nothing more.

Permissions are ``app_label.codename``. Superusers bypass groups and see everything.
"""

from __future__ import annotations

from typing import Any

_VIEW_CATALOG = [
    "neruba.view_customer",
    "billing.view_plan",
    "billing.view_price",
    "billing.view_subscription",
    "ingest.view_metric",
]
_VIEW_USAGE = [
    "ingest.view_usageevent",
    "ingest.view_ingestbatch",
    "ingest.view_ingestrejection",
    "ingest.view_backfill",
    "ingest.view_eventcorrection",
]
_VIEW_BILLING = [
    "billing.view_invoice",
    "billing.view_invoiceline",
    "billing.view_creditentry",
    "billing.view_refund",
    "billing.view_dispute",
    "billing.view_billingwindow",
    "billing.view_billingrun",
    "billing.view_billingshard",
    "billing.view_driftfinding",
    "billing.view_paymentfinding",
]
_VIEW_WEBHOOKS = [
    "webhooks.view_stripeevent",
    "webhooks.view_eventattempt",
    "webhooks.view_webhookendpoint",
    "webhooks.view_outboundmessage",
    "webhooks.view_outbounddelivery",
    "webhooks.view_deliveryattempt",
]
_NOTES = ["neruba.view_supportnote", "neruba.add_supportnote", "neruba.view_auditentry"]

ROLES: dict[str, dict[str, Any]] = {
    "Support": {
        "summary": "Answers customers: sees customers, usage, invoices, credits and webhook "
        "events; creates or fixes customers; replays failed ingest items; voids or amends wrong "
        "usage events; writes notes.",
        "permissions": _VIEW_CATALOG
        + _VIEW_USAGE
        + _VIEW_BILLING
        + _VIEW_WEBHOOKS
        + _NOTES
        + [
            "neruba.add_customer",
            "neruba.change_customer",
            "ingest.replay_ingestrejection",
            "ingest.correct_usageevent",
        ],
    },
    "Finance": {
        "summary": "Owns the money: plans, prices and subscriptions; issues credits; voids and "
        "reruns invoices; marks invoices paid; resolves drift and payment findings; reads and "
        "exports the audit log. Cannot replay ingest or webhooks.",
        "permissions": _VIEW_CATALOG
        + _VIEW_USAGE
        + _VIEW_BILLING
        + _VIEW_WEBHOOKS
        + _NOTES
        + [
            "billing.add_plan",
            "billing.change_plan",
            "billing.add_price",
            "billing.change_price",
            "billing.add_subscription",
            "billing.change_subscription",
            "billing.issue_credit",
            "billing.rerun_invoice",
            "billing.mark_invoice_paid",
            "billing.resolve_driftfinding",
            "billing.resolve_paymentfinding",
            "neruba.export_auditentry",
        ],
    },
    "Operations": {
        "summary": "Runs the system: API keys, meters, scheduler locks, billing runs, sweeps "
        "and heartbeats; replays Stripe webhook events; manages outbound webhook endpoints "
        "and replays their deliveries; releases expired locks. Cannot issue "
        "credits or change invoices.",
        "permissions": _VIEW_CATALOG
        + _VIEW_USAGE
        + _VIEW_BILLING
        + _VIEW_WEBHOOKS
        + _NOTES
        + [
            "neruba.view_apikey",
            "neruba.add_apikey",
            "neruba.change_apikey",
            "neruba.view_schedulerlock",
            "neruba.release_schedulerlock",
            "ingest.add_metric",
            "ingest.change_metric",
            "billing.view_providersync",
            "webhooks.replay_stripeevent",
            "webhooks.add_webhookendpoint",
            "webhooks.change_webhookendpoint",
            "webhooks.replay_outbounddelivery",
            "operations.view_heartbeat",
            "operations.view_sweeprun",
        ],
    },
}


def sync_roles(apps: Any) -> None:
    """Creates or updates the groups to exactly the permissions above. Migrations call it with
    their historical app registry; it first creates any permission rows not made yet (they are
    normally made after migrate, too late for a data migration)."""
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None

    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for name, role in ROLES.items():
        group, _ = group_model.objects.get_or_create(name=name)
        perms = []
        for dotted in role["permissions"]:
            app_label, codename = dotted.split(".", 1)
            perms.append(
                permission_model.objects.get(content_type__app_label=app_label, codename=codename)
            )
        group.permissions.set(perms)


def markdown_table() -> str:
    """The README's role table, generated from ``ROLES``."""
    rows = ["| Role | Can see and do |", "| --- | --- |"]
    rows += [f"| {name} | {role['summary']} |" for name, role in ROLES.items()]
    rows.append("| superuser | Everything, including console users and groups. |")
    return "\n".join(rows)
