from django.db import migrations


def _fillfactor(value: str):
    def apply(apps, schema_editor):
        # Duplicate counters no longer update the event row (see EventDuplicates), so the room
        # 0004 left on each page for those updates is only wasted space for billing to scan.
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f"ALTER TABLE ingest_usageevent {value}")

    return apply


class Migration(migrations.Migration):
    dependencies = [("ingest", "0005_event_duplicates")]

    operations = [
        migrations.RunPython(
            _fillfactor("RESET (fillfactor)"), _fillfactor("SET (fillfactor = 90)")
        )
    ]
