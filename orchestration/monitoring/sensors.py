"""The drift sensor: retraining when monitoring stays at ERROR.

`drift_retrain_sensor` reads the monitoring assets' materializations. When a problem's
monitoring is at ERROR severity on `drift_persistence_days` consecutive days (one bad day, a
sale or an outage, retrains nothing), it requests one retraining run of that problem on a
window ending at the day that completed the episode, tagged with the asset, the days and the
scores. Its run key names the episode's first day, so an episode is retrained at most once; an
episode that the champion's training window already reaches is skipped. Promotion still goes
only through the gates of the retraining run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from orchestration.monitoring.config import WATCHES
from skiff.settings import Settings

RUN_KEY_TAG = "dagster/run_key"
RETRAIN_JOBS = {"conversion": "retrain_conversion", "recommender": "retrain_recommender"}


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
