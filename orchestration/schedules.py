"""The nightly schedule: the previous day end to end, at a fixed hour in a configured zone."""

from __future__ import annotations

import datetime as dt
from typing import Any

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from skiff.settings import Settings


def previous_day(tick: dt.datetime) -> dt.date:
    """The latest UTC day that has ended at `tick` (partitions are UTC days), whatever the
    schedule's time zone: 03:00 in Tokyo is 18:00 UTC the day before, whose previous day is
    the one that just ended."""
    return tick.astimezone(dt.UTC).date() - dt.timedelta(days=1)


def build_nightly_schedule(settings: Settings, job: Any):
    automation = settings.automation

    @schedule(
        name="nightly",
        job=job,
        cron_schedule=automation.nightly_cron,
        execution_timezone=automation.timezone,
        default_status=DefaultScheduleStatus.STOPPED,
        description=f"At {automation.nightly_cron} ({automation.timezone}): the previous UTC "
        "day end to end: ingestion, dbt, predictions, monitoring (SKIFF_NIGHTLY_CRON, "
        "SKIFF_TIMEZONE).",
    )
    def nightly(context: ScheduleEvaluationContext):
        day = previous_day(context.scheduled_execution_time)
        if day < settings.partitions_start:
            return SkipReason(f"{day} is before the first partition {settings.partitions_start}")
        return RunRequest(
            run_key=f"nightly-{day.isoformat()}",
            partition_key=day.isoformat(),
            tags={"skiff/trigger": "nightly"},
        )

    return nightly
