"""The rollout controller's looks: the `release_hourly` schedule runs the release loop.

Each tick (SKIFF_RELEASE_CRON, hourly by default) asks for one run of `release_loop` on the
log days yesterday .. today (one run over the range): the server's log -> raw tables ->
experiment marts -> experiment_results -> each problem's rollout step, one look. Yesterday is
read again every time, so the exposures and feedback of its last hour count whatever the
cron (a day's file is small next to dbt's fixed cost), and midnight is one look, not two.
The schedule starts running: with no challenger a look only records that there is nothing
to ramp.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, schedule

from orchestration.partitions import partition_range_tags
from skiff.settings import Settings

RELEASE_SCHEDULE = "release_hourly"


def log_days_to_read(tick: dt.datetime) -> tuple[dt.date, dt.date]:
    """The first and last log day a look at `tick` reads: yesterday and today (UTC)."""
    today = tick.astimezone(dt.UTC).date()
    return today - dt.timedelta(days=1), today


def build_release_schedule(settings: Settings, job: Any):
    automation = settings.automation

    @schedule(
        name=RELEASE_SCHEDULE,
        job=job,
        cron_schedule=automation.release_cron,
        execution_timezone=automation.timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"At {automation.release_cron} ({automation.timezone}): read the "
        "server's log of today into the experiment marts, then let each problem's rollout "
        "controller advance, hold, roll back or promote its challenger (SKIFF_RELEASE_CRON).",
    )
    def release_hourly(context: ScheduleEvaluationContext):
        tick = context.scheduled_execution_time
        first, last = log_days_to_read(tick)
        return RunRequest(
            run_key=f"release-{tick.astimezone(dt.UTC):%Y%m%dT%H%M}",
            tags={**partition_range_tags(first, last), "skiff/trigger": RELEASE_SCHEDULE},
        )

    return release_hourly
