from __future__ import annotations

from django.db import migrations


def forwards(apps, schema_editor):
    from operations.roles import sync_roles

    sync_roles(apps)


class Migration(migrations.Migration):
    """Finance may export the audit log and the credit ledger as CSV."""

    dependencies = [
        ("operations", "0002_roles"),
        ("neruba", "0003_audit_export_permission"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
