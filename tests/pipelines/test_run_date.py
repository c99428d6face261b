"""pipelines/run_date.py: the run's day from the orchestrator's scheduled time, unless run_date is set."""

from __future__ import annotations

import pytest

from ncf.errors import UserError
from pipelines.run_date import resolve


@pytest.mark.parametrize(("run_date", "scheduled", "expected"), [
    ("", "2026-11-27T02:00:00Z", "2026-11-27"),               # KFP >= 2.17: RFC 3339, UTC
    ("", "2026-11-27T23:59:58.123Z", "2026-11-27"),           # SageMaker's Execution.StartDateTime
    ("", "2026-11-28T01:30:00+02:00", "2026-11-27"),          # an offset is converted to UTC first
    ("", "2026-11-27T02:00:00", "2026-11-27"),                # no offset: UTC
    ("2026-01-01", "2026-11-27T02:00:00Z", "2026-01-01"),     # an explicit run date wins (backfills)
    ("", "{{$.pipeline_job_schedule_time_utc}}", ""),         # kfp.local leaves the placeholder: today, UTC
    ("", "", ""),
])
def test_resolve(run_date, scheduled, expected):
    assert resolve(run_date, scheduled) == expected


def test_a_malformed_time_names_itself():
    with pytest.raises(UserError, match="'yesterday'"):
        resolve("", "yesterday")
