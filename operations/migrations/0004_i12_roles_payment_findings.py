from __future__ import annotations

from django.db import migrations


def forwards(apps, schema_editor):
    from operations.roles import sync_roles

    sync_roles(apps)


class Migration(migrations.Migration):
    """Every role sees payment findings; Finance closes them."""

    dependencies = [
        ("operations", "0003_roles_export"),
        ("billing", "0006_i12_reverse_cash_credits"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
