from __future__ import annotations

from django.db import migrations


def forwards(apps, schema_editor):
    from operations.roles import sync_roles

    sync_roles(apps)


class Migration(migrations.Migration):
    """Every role that sees billing runs sees their shards."""

    dependencies = [
        ("operations", "0004_i12_roles_payment_findings"),
        ("billing", "0008_i18_billing_shards"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
