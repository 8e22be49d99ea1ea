"""Demo data for ``make run``: realistic, idempotent, made through the same services clients use."""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.utils import timezone

from billing import services as billing_services
from billing.demo import seed_invoices
from billing.models import Plan, Subscription
from ingest import services as ingest_services
from ingest.demo import seed_events
from ingest.models import Metric
from neruba import services as kernel_services
from neruba.models import Customer
from webhooks.demo import seed_webhooks

DEMO_USERS = {"support": "Support", "finance": "Finance", "operations": "Operations"}

CUSTOMERS = [
    ("acme", "Acme Corp", "billing@acme.example", "USD"),
    ("globex", "Globex Inc", "ap@globex.example", "USD"),
    ("initech", "Initech GmbH", "finance@initech.example", "EUR"),
]
METRICS = [
    ("api_calls", "API calls", "count", ""),
    ("compute_seconds", "Compute seconds", "sum", "seconds"),
    ("storage_gb", "Peak storage (GB)", "max", "gb"),
    ("active_users", "Monthly active users", "unique_count", "user_id"),
]


def seed_admin() -> tuple[str, str]:
    """Creates the admin (and one demo user per role) once; the password is kept under var/ so
    every ``make run`` can print the same login."""
    password_file = Path(settings.BASE_DIR) / "var" / "admin-password.txt"
    if password_file.exists():
        password = password_file.read_text().strip()
    else:
        password = secrets.token_urlsafe(12)
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
    admin, created = User.objects.get_or_create(
        username="admin",
        defaults={"is_staff": True, "is_superuser": True, "email": "admin@neruba.local"},
    )
    if created or not admin.check_password(password):
        admin.set_password(password)
        admin.save()
    for username, group_name in DEMO_USERS.items():
        user, made = User.objects.get_or_create(username=username, defaults={"is_staff": True})
        if made or not user.check_password(password):
            user.set_password(password)
            user.save()
        user.groups.add(Group.objects.get(name=group_name))
    return "admin", password


def seed_catalog() -> dict[str, int]:
    counts = {"customers": 0, "metrics": 0, "plans": 0, "subscriptions": 0}
    for external_id, name, email, currency in CUSTOMERS:
        if not Customer.objects.filter(external_id=external_id).exists():
            kernel_services.customer_create(
                external_id=external_id, name=name, email=email, currency=currency
            )
            counts["customers"] += 1
    for code, name, aggregation, field in METRICS:
        if not Metric.objects.filter(code=code).exists():
            ingest_services.metric_create(
                code=code, name=name, aggregation=aggregation, field=field
            )
            counts["metrics"] += 1
    metrics = {m.code: m for m in Metric.objects.all()}
    plans = [
        (
            "starter",
            "Starter",
            "USD",
            "month",
            1900,
            [
                {"metric": metrics["api_calls"], "model": "per_unit", "unit_amount": "0.05"},
                {"metric": metrics["storage_gb"], "model": "per_unit", "unit_amount": "25"},
            ],
        ),
        (
            "growth",
            "Growth",
            "USD",
            "month",
            9900,
            [
                {
                    "metric": metrics["api_calls"],
                    "model": "graduated",
                    "tiers": [
                        {"up_to": 10000, "unit_amount": "0.04"},
                        {"up_to": 100000, "unit_amount": "0.02"},
                        {"up_to": None, "unit_amount": "0.01"},
                    ],
                },
                {"metric": metrics["compute_seconds"], "model": "per_unit", "unit_amount": "0.3"},
                {"metric": metrics["active_users"], "model": "per_unit", "unit_amount": "50"},
            ],
        ),
        (
            "eu-daily",
            "EU daily",
            "EUR",
            "day",
            100,
            [
                {"metric": metrics["api_calls"], "model": "per_unit", "unit_amount": "0.1"},
            ],
        ),
    ]
    for code, name, currency, interval, base, prices in plans:
        if not Plan.objects.filter(code=code).exists():
            billing_services.plan_create(
                code=code,
                name=name,
                currency=currency,
                interval=interval,
                base_amount=base,
                prices=prices,
            )
            counts["plans"] += 1
    start = (timezone.now() - timedelta(days=62)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    for external_id, plan_code in [
        ("acme", "starter"),
        ("globex", "growth"),
        ("initech", "eu-daily"),
    ]:
        customer = Customer.objects.get(external_id=external_id)
        if not Subscription.objects.filter(customer=customer).exists():
            billing_services.subscription_create(
                customer=customer, plan=Plan.objects.get(code=plan_code), started_at=start
            )
            counts["subscriptions"] += 1
    return counts


def seed_all() -> dict[str, int]:
    with transaction.atomic():
        counts = seed_catalog()
    counts.update(seed_events())
    counts.update(seed_webhooks())
    # Billing runs last: it invoices the past windows of the events seeded above.
    counts.update(seed_invoices())
    return counts
