from __future__ import annotations

from django.db import migrations

# On PostgreSQL the database itself refuses UPDATE and DELETE of audit rows, whatever code path
# tries (TRUNCATE, used only by test teardown, is a statement, not a row operation).
FORWARD = """
CREATE OR REPLACE FUNCTION neruba_audit_append_only() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'audit entries are append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER neruba_auditentry_append_only BEFORE UPDATE OR DELETE ON neruba_auditentry
  FOR EACH ROW EXECUTE FUNCTION neruba_audit_append_only();
"""
BACKWARD = """
DROP TRIGGER IF EXISTS neruba_auditentry_append_only ON neruba_auditentry;
DROP FUNCTION IF EXISTS neruba_audit_append_only();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("neruba", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
