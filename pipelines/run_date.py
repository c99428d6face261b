"""The run date of a pipeline run: the `run_date` parameter when set, else the day the orchestrator scheduled the run.

A scheduled retraining run must read that day's data: the KFP backend (>= 2.17) hands the preprocess task the
run's scheduled time (its creation time when nobody scheduled it) and SageMaker the execution's start time, both
ISO 8601. Stdlib only: the KFP component and the SageMaker entry point import it inside their containers.
"""

from __future__ import annotations

import datetime as dt

from ncf.errors import UserError


def resolve(run_date: str, scheduled_time: str) -> str:
    """`run_date` if set; else the UTC day of `scheduled_time`; else "" (the step's default: today, UTC).

    "" also when the orchestrator left the placeholder unresolved (kfp.local passes `{{$...}}` through as is).
    """
    if run_date:
        return run_date
    if not scheduled_time or scheduled_time.startswith("{{"):
        return ""
    try:
        when = dt.datetime.fromisoformat(scheduled_time)
    except ValueError:
        raise UserError(f"scheduled time {scheduled_time!r}: expected an ISO 8601 timestamp") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d")
