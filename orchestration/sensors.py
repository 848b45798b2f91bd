"""Sensors: new landing days, drift that calls for retraining, and failed runs.

- `landing_sensor` runs the nightly job for a day folder that appears (or changes) in
  `$SKIFF_HOME/landing`, once its two files have been still for `LANDING_SETTLE_SECONDS`.
- `drift_retrain_sensor` reads the monitoring assets' materializations. When a problem's
  monitoring is at ERROR severity on `drift_persistence_days` consecutive days (one bad day, a
  sale or an outage, retrains nothing), it requests one retraining run of that problem on a
  window ending at the day that completed the episode, tagged with the asset, the days and the
  scores. Its run key names the episode's first day, so an episode is retrained at most once;
  an episode that the champion's training window already reaches is skipped. Promotion still
  goes only through the gates of the retraining run.
- `run_failure_alert` writes one clear message per failed run to the logs (and posts it to
  `SKIFF_ALERT_WEBHOOK_URL` when set). It is on by default; the other two start stopped.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from ml import contract
from orchestration.assets.monitoring import WATCHES
from skiff.settings import Settings

LANDING_SETTLE_SECONDS = 30
RUN_KEY_TAG = "dagster/run_key"
RETRAIN_JOBS = {"conversion": "retrain_conversion", "recommender": "retrain_recommender"}
alerts = logging.getLogger("skiff.alerts")


# --- landing ----------------------------------------------------------------------------------


def landing_days(settings: Settings, today: dt.date, now: float) -> dict[dt.date, str]:
    """Complete landing days with a signature of their files (mtime and size): folders named
    YYYY-MM-DD, from the first partition up to yesterday, both files present and unchanged for
    LANDING_SETTLE_SECONDS."""
    days: dict[dt.date, str] = {}
    if not settings.landing.is_dir():
        return days
    for folder in sorted(settings.landing.iterdir()):
        try:
            day = dt.date.fromisoformat(folder.name)
        except ValueError:
            continue  # _truth and anything else that is not a day
        files = [folder / contract.EVENTS_FILE, folder / contract.PRODUCTS_FILE]
        if not (settings.partitions_start <= day < today) or not all(f.is_file() for f in files):
            continue
        stats = [f.stat() for f in files]
        newest = max(s.st_mtime for s in stats)
        if now - newest < LANDING_SETTLE_SECONDS:
            continue  # still being written
        days[day] = f"{int(newest)}-{sum(s.st_size for s in stats)}"
    return days


def _materialized_since(context: SensorEvaluationContext, day: dt.date, since: float) -> bool:
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=AssetKey("raw_browsing_events"), asset_partitions=[day.isoformat()]
        ),
        limit=1,
    ).records
    return bool(records) and records[0].timestamp >= since


def build_landing_sensor(settings: Settings, job: Any):
    @sensor(
        name="landing_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.STOPPED,
        description="Runs the nightly job for each new (or re-landed) day folder in "
        "$SKIFF_HOME/landing once its files are complete; skips days already materialized "
        "from the same files.",
    )
    def landing_sensor(context: SensorEvaluationContext):
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        now = time.time()
        today = dt.datetime.now(dt.UTC).date()
        requests = []
        for day, signature in landing_days(settings, today, now).items():
            key = day.isoformat()
            if seen.get(key) == signature:
                continue
            seen[key] = signature
            mtime = float(signature.split("-")[0])
            if _materialized_since(context, day, mtime):
                continue
            context.log.info(f"landing day {key} is new or changed: requesting its run")
            requests.append(
                RunRequest(
                    run_key=f"landing-{key}-{signature}",
                    partition_key=key,
                    tags={"skiff/trigger": "landing"},
                )
            )
        context.update_cursor(json.dumps(seen, sort_keys=True))
        return requests or SkipReason("no new landing day")

    return landing_sensor


# --- drift ------------------------------------------------------------------------------------


def _latest_by_day(
    context: SensorEvaluationContext, asset_name: str, days: list[dt.date]
) -> dict[dt.date, Any]:
    """The latest materialization of each of `days` (where there is one)."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=AssetKey(asset_name), asset_partitions=[d.isoformat() for d in days]
        ),
        limit=len(days) * 50,
    ).records  # newest first
    latest: dict[dt.date, Any] = {}
    for record in records:
        day = dt.date.fromisoformat(record.partition_key)
        latest.setdefault(day, record.asset_materialization)
    return latest


def problem_severities(
    context: SensorEvaluationContext, problem: str, day: dt.date, span: int
) -> dict[dt.date, str]:
    """The worst severity of `problem`'s monitoring assets on each of the `span` days up to
    `day`, from their latest materializations (a day with none is missing)."""
    from ml.monitoring import worst

    days = [day - dt.timedelta(days=i) for i in range(span)]
    per_day: dict[dt.date, list[str]] = {}
    for asset_name, watched in WATCHES.items():
        if watched != problem:
            continue
        for d, materialization in _latest_by_day(context, asset_name, days).items():
            per_day.setdefault(d, []).append(materialization.metadata["severity"].value)
    return {d: worst(*values) for d, values in per_day.items()}


def retrain_request(
    settings: Settings,
    problem: str,
    asset_name: str,
    day: dt.date,
    first: dt.date,
    metadata: Mapping[str, Any],
) -> RunRequest:
    """The retraining run of `problem` for the drift episode `first` .. `day`."""
    train_days = settings.automation.retrain_train_days
    if problem == "conversion":
        ops = {
            "conversion_training_set": {
                "config": {"train_days": train_days, "test_day": day.isoformat()}
            }
        }
    else:
        ops = {
            "recommender_training_set": {
                "config": {"train_days": train_days, "end_day": day.isoformat()}
            }
        }
    return RunRequest(
        run_key=f"drift-{problem}-{first.isoformat()}",
        job_name=RETRAIN_JOBS[problem],
        run_config={"ops": ops},
        tags={
            "skiff/trigger": "drift",
            "skiff/drift_asset": asset_name,
            "skiff/drift_day": day.isoformat(),
            "skiff/drift_first_day": first.isoformat(),
            "skiff/drift_scores": metadata["alerts"].value,
        },
    )


def _champion_reaches(settings: Settings, problem: str, first: dt.date) -> bool:
    """Whether the current champion was trained on data from `first` on (already adapted)."""
    from ml.registry import Registry

    champion = Registry(settings.registry).role(problem, "champion")
    if champion is None:
        return False
    return dt.date.fromisoformat(champion.training_window["train_end"]) >= first


def _already_run(context: SensorEvaluationContext, run_key: str) -> bool:
    """A run with this key exists: launched by this sensor's daemon, or in process by
    `skiff demo` (which tags its runs the same way)."""
    runs = context.instance.get_runs(filters=RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
    return bool(runs)


def build_drift_sensor(settings: Settings, jobs: list[Any]):
    persistence = settings.automation.drift_persistence_days

    @sensor(
        name="drift_retrain_sensor",
        jobs=jobs,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED,
        description=f"Requests one retraining run of a problem when its monitoring is at ERROR "
        f"severity on {persistence} consecutive days (SKIFF_DRIFT_PERSISTENCE_DAYS), on a "
        "window ending at that day; tags say which asset, days and scores.",
    )
    def drift_retrain_sensor(context: SensorEvaluationContext):
        from ml.monitoring import drift_episode

        after = int(context.cursor) if context.cursor else 0
        newest = after
        requests: dict[str, RunRequest] = {}
        for asset_name, problem in WATCHES.items():
            records = context.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(asset_name), after_storage_id=after),
                limit=1000,
                ascending=True,
            ).records
            for record in records:
                newest = max(newest, record.storage_id)
                metadata = record.asset_materialization.metadata
                if metadata["severity"].value != "error" or record.partition_key is None:
                    continue
                day = dt.date.fromisoformat(record.partition_key)
                severities = problem_severities(context, problem, day, persistence + 60)
                first = drift_episode(severities, day, persistence)
                if first is None:
                    context.log.info(
                        f"{asset_name} {day} is at error; not yet {persistence} days in a row"
                    )
                    continue
                if _champion_reaches(settings, problem, first):
                    context.log.info(
                        f"{problem} drift since {first}: the champion already trained on it"
                    )
                    continue
                request = retrain_request(settings, problem, asset_name, day, first, metadata)
                if _already_run(context, request.run_key):
                    continue
                requests.setdefault(request.run_key, request)
                context.log.info(
                    f"{problem} drift since {first} ({asset_name} on {day}: "
                    f"{metadata['alerts'].value}): requesting {request.job_name}"
                )
        context.update_cursor(str(newest))
        return list(requests.values()) or SkipReason("no drift episode calls for retraining")

    return drift_retrain_sensor


# --- failures ---------------------------------------------------------------------------------


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


def build_failure_sensor(settings: Settings):
    webhook = settings.automation.alert_webhook

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
            except httpx.HTTPError as exc:
                context.log.warning(f"could not post the alert to the webhook: {exc}")

    return run_failure_alert
