"""schemathesis against /openapi.json: every operation, authenticated, in-process through the
WSGI app, with positive and negative generated data. No 500s, and every response conforms to
the schema (documented status, documented body)."""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from neruba.wsgi import application

MAX_EXAMPLES = 30


def _fuzz(operation, mode: GenerationMode, headers: dict[str, str]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases on every run: a stable CI signal
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        # Every check but positive_data_acceptance: a schema-valid event can still name an
        # unknown customer or an out-of-window timestamp, which must be refused (422).
        case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

    run()


@pytest.fixture
def _keep_test_connection():
    """Like Django's test client: the WSGI calls must not close the connection that holds the
    test's transaction (close_old_connections would, on PostgreSQL)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.mark.django_db
@pytest.mark.usefixtures("_keep_test_connection")
def test_every_operation_answers_without_server_errors_and_conforms(make_api_key, catalog) -> None:
    _, raw = make_api_key("ingest", "read", "write")
    headers = {"Authorization": f"Api-Key {raw}"}
    schema = schemathesis.openapi.from_wsgi("/openapi.json", application)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, "the schema should list every API operation"
    failures = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, headers)
            except Exception as exc:  # collect every operation's failure, then report all
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    assert not failures, "\n\n".join(failures)
