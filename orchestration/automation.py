"""Automation across domains: the nightly schedule and the run-failure alert.

- `nightly` runs the previous UTC day end to end (ingestion, dbt, predictions, monitoring) at
  a fixed hour in a configured zone (SKIFF_NIGHTLY_CRON, SKIFF_TIMEZONE). It starts stopped.
- `run_failure_alert` writes one clear message per failed run to the logs (and posts it to
  `SKIFF_ALERT_WEBHOOK_URL` when set). It is on by default.

The sensors that belong to a domain live there: the landing sensor in `ingestion/`, the drift
sensor in `monitoring/`.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    run_failure_sensor,
    schedule,
)

from skiff.settings import Settings

alerts = logging.getLogger("skiff.alerts")


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


def failure_message(context: RunFailureSensorContext) -> str:
    run = context.dagster_run
    steps = [
        f"{event.step_key}: {event.step_failure_data.error.message.strip()}"
        if event.step_failure_data and event.step_failure_data.error
        else str(event.step_key)
        for event in context.get_step_failure_events()
    ]
    first = run.tags.get("dagster/asset_partition_range_start")
    days = run.tags.get("dagster/partition") or (
        f"{first} .. {run.tags.get('dagster/asset_partition_range_end')}" if first else ""
    )
    lines = [
        f"Skiff run FAILED: job {run.job_name}, run {run.run_id}"
        + (f", days {days}" if days else "")
        + (f", trigger {run.tags['skiff/trigger']}" if "skiff/trigger" in run.tags else ""),
        *(f"  step {s}" for s in steps),
    ]
    if not steps and context.failure_event.message:
        lines.append(f"  {context.failure_event.message}")
    return "\n".join(lines)


def webhook_error(exc: Exception) -> str:
    """What a failed post says in the logs: the exception's type and the HTTP status, if any.
    Never the exception's text: httpx's quotes the URL, and the webhook's URL holds its token."""
    status = getattr(getattr(exc, "response", None), "status_code", None)  # HTTPStatusError's
    return type(exc).__name__ + (f", HTTP {status}" if status is not None else "")


def build_failure_sensor(settings: Settings):
    webhook = settings.automation.alert_webhook
    if webhook:  # httpx logs every request's URL at INFO, and this URL holds its token
        logging.getLogger("httpx").setLevel(logging.WARNING)

    @run_failure_sensor(
        name="run_failure_alert",
        default_status=DefaultSensorStatus.RUNNING,
        description="One clear message per failed run in the logs (job, days, failed steps "
        "and their errors), posted to SKIFF_ALERT_WEBHOOK_URL when it is set.",
    )
    def run_failure_alert(context: RunFailureSensorContext) -> None:
        message = failure_message(context)
        context.log.error(message)
        alerts.error(message)
        if webhook:
            import httpx

            run = context.dagster_run
            payload = {
                "text": message,
                "job": run.job_name,
                "run_id": run.run_id,
                "tags": dict(run.tags),
            }
            try:
                httpx.post(webhook, json=payload, timeout=5).raise_for_status()
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                context.log.warning(
                    f"could not post the alert to the webhook (SKIFF_ALERT_WEBHOOK_URL): "
                    f"{webhook_error(exc)}"
                )

    return run_failure_alert
