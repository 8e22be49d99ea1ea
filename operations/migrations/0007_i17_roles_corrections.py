from __future__ import annotations

from django.db import migrations


def forwards(apps, schema_editor):
    from operations.roles import sync_roles

    sync_roles(apps)


class Migration(migrations.Migration):
    """Support may void or amend usage events; every role sees backfills and corrections."""

    dependencies = [
        ("operations", "0006_i15_roles_outbound_webhooks"),
        ("ingest", "0010_i17_backfills_corrections"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
