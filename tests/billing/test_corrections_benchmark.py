"""``manage.py benchmark corrections`` end to end at a small size (the ratio needs the full
size; a shared machine decides it)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from billing.models import DriftFinding, Invoice
from ingest.models import Backfill, EventCorrection, EventKey, UsageEvent

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_the_corrections_benchmark_backfills_voids_sweeps_and_cleans_up_after_itself() -> None:
    out = StringIO()
    try:
        call_command(
            "benchmark",
            "corrections",
            *("--events", "3000", "--void", "600", "--customers", "3", "--chunk-size", "250"),
            stdout=out,
        )
    except CommandError as exc:  # a missed ratio at this size is not a failure here
        assert "target was missed" in str(exc)
    text = out.getvalue()
    assert "backfill / batch ingest = " in text
    assert "MET (no invoice touched)" in text
    assert "incremental re-checked 1 window(s)" in text and "MET (only the touched" in text
    assert text.count("   voided ") == 3, "progress per chunk (600 events, chunks of 250)"
    assert not UsageEvent.objects.exists() and not Invoice.objects.exists()
    assert not EventCorrection.objects.exists() and not Backfill.objects.exists()
    assert not DriftFinding.objects.exists()
    assert not EventKey.objects.exists(), "the run's keys go with its events"
