from __future__ import annotations

from django.db import migrations


def forwards(apps, schema_editor):
    from operations.roles import sync_roles

    sync_roles(apps)


class Migration(migrations.Migration):
    """Everyone sees outbound webhooks; Operations manages endpoints and replays deliveries."""

    dependencies = [
        ("operations", "0005_i18_roles_shards"),
        ("webhooks", "0003_i15_outbound_webhooks"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
