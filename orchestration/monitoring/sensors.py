"""The drift sensor: retraining when monitoring stays at ERROR.

`drift_retrain_sensor` reads the monitoring assets' materializations. When a problem's
monitoring is at ERROR severity on `drift_persistence_days` consecutive days (one bad day, a
sale or an outage, retrains nothing), it requests a retraining run of that problem on a window
ending at the newest day of the episode, tagged with the asset, the days, the scores and the
attempt. An episode that the champion's training window already reaches is skipped. Promotion
still goes only through the gates of the retraining run.

Decisions:

- Attempts. An episode (problem, first day) is retrained by attempts: attempt 1 has the run key
  `drift-<problem>-<first day>` (as before), attempt n >= 2 `drift-<problem>-<first day>-<n>`.
  An attempt still queued or running is never duplicated. An attempt that succeeded and whose
  champion step admitted a model settles the episode: it is not requested again. An attempt that
  failed, was canceled, or succeeded with its gates refusing the candidate (the champion step
  records the decision `kept` or `no champion`: a refusal is a successful run, not a failed one)
  is followed by the next attempt once `SKIFF_RETRAIN_COOLDOWN_HOURS` (default 24) have passed
  since it ended, and only while the drift lasts: while the episode is still the one at the
  problem's newest monitored day. Attempts are found by their run keys, so the sensor needs no
  state for them and the retries survive a lost cursor.
- Time. Besides the new records, every tick looks at each problem's newest monitored day, so a
  retry comes when its cool-down ends, not when the next day happens to be monitored.
- Cursor. The cursor is JSON, `{asset name: newest storage id seen}`, one entry per monitored
  asset, and each asset's new records are read page by page until none are left: no record is
  skipped whatever the counts, and one asset's ids running ahead moves no other asset's cursor.
  An old integer cursor (one id shared by every asset) is read as that id for every asset.

The attempts' bookkeeping (run keys, the outcome of each attempt's runs, the cool-down setting)
is in orchestration/monitoring/drift_attempts.py; its names are re-exported here.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from orchestration.monitoring.config import WATCHES
from orchestration.monitoring.drift_attempts import CHAMPIONS as CHAMPIONS
from orchestration.monitoring.drift_attempts import (
    COOLDOWN_VARIABLE,
    attempts,
    retrain_cooldown_hours,
    run_key,
)
from orchestration.monitoring.drift_attempts import FINISHED as FINISHED
from orchestration.monitoring.drift_attempts import REFUSED_DECISIONS as REFUSED_DECISIONS
from orchestration.monitoring.drift_attempts import RUN_KEY_TAG as RUN_KEY_TAG
from orchestration.monitoring.drift_attempts import Attempt as Attempt
from skiff.settings import Settings

RETRAIN_JOBS = {"conversion": "retrain_conversion", "recommender": "retrain_recommender"}
PAGE_SIZE = 1000


# --- cursor -----------------------------------------------------------------------------------


def read_cursor(text: str | None) -> dict[str, int]:
    """The newest storage id seen of each monitored asset (0: none yet).

    Reads the JSON cursor, and the old integer cursor (one id for every asset) it replaces."""
    if not text:
        return {name: 0 for name in WATCHES}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"drift sensor cursor {text!r} is neither JSON nor an integer") from exc
    if isinstance(value, int) and not isinstance(value, bool):
        return {name: value for name in WATCHES}
    if not isinstance(value, dict) or not all(isinstance(v, int) for v in value.values()):
        raise ValueError(f"drift sensor cursor {text!r} is not {{asset: storage id}}")
    return {name: int(value.get(name, 0)) for name in WATCHES}


def write_cursor(seen: Mapping[str, int]) -> str:
    return json.dumps(dict(sorted(seen.items())), separators=(",", ":"))


def new_records(
    context: SensorEvaluationContext, asset_name: str, after: int, page_size: int = PAGE_SIZE
) -> Iterable[Any]:
    """Every materialization record of `asset_name` after storage id `after`, oldest first,
    page by page until none are left."""
    while True:
        result = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset_name), after_storage_id=after),
            limit=page_size,
            ascending=True,
        )
        yield from result.records
        if not result.records or not result.has_more:
            return
        after = result.records[-1].storage_id


# --- severities -------------------------------------------------------------------------------


def _latest_by_day(
    context: SensorEvaluationContext, asset_name: str, days: list[dt.date]
) -> dict[dt.date, Any]:
    """The latest materialization of each of `days` (where there is one), paging newest
    first until every day is found or the records run out (a day materialized many times
    cannot hide the others)."""
    wanted = {d.isoformat() for d in days}
    latest: dict[dt.date, Any] = {}
    cursor = None
    while True:
        result = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset_name), asset_partitions=sorted(wanted)),
            limit=PAGE_SIZE,
            cursor=cursor,
        )  # newest first
        for record in result.records:
            latest.setdefault(dt.date.fromisoformat(record.partition_key), record)
        if len(latest) == len(wanted) or not result.has_more:
            return latest
        cursor = result.cursor


def _latest_records(
    context: SensorEvaluationContext, problem: str, day: dt.date, span: int
) -> dict[str, dict[dt.date, Any]]:
    days = [day - dt.timedelta(days=i) for i in range(span)]
    return {
        asset_name: _latest_by_day(context, asset_name, days)
        for asset_name, watched in WATCHES.items()
        if watched == problem
    }


def _worst_by_day(latest: Mapping[str, Mapping[dt.date, Any]]) -> dict[dt.date, str]:
    from ml.monitoring import worst

    per_day: dict[dt.date, list[str]] = {}
    for by_day in latest.values():
        for d, record in by_day.items():
            per_day.setdefault(d, []).append(_severity(record))
    return {d: worst(*values) for d, values in per_day.items()}


def _severity(record: Any) -> str:
    return record.asset_materialization.metadata["severity"].value


def problem_severities(
    context: SensorEvaluationContext, problem: str, day: dt.date, span: int
) -> dict[dt.date, str]:
    """The worst severity of `problem`'s monitoring assets on each of the `span` days up to
    `day`, from their latest materializations (a day with none is missing)."""
    return _worst_by_day(_latest_records(context, problem, day, span))


def _newest_day(context: SensorEvaluationContext, problem: str) -> dt.date | None:
    """The newest day any of `problem`'s monitoring assets has graded."""
    days = [
        max(partitions)
        for asset_name, watched in WATCHES.items()
        if watched == problem
        and (partitions := context.instance.get_materialized_partitions(AssetKey(asset_name)))
    ]
    return dt.date.fromisoformat(max(days)) if days else None


# --- requests ---------------------------------------------------------------------------------


def retrain_request(
    settings: Settings,
    problem: str,
    asset_name: str,
    day: dt.date,
    first: dt.date,
    metadata: Mapping[str, Any],
    attempt: int = 1,
    retry_of: str | None = None,
    reason: str | None = None,
) -> RunRequest:
    """Attempt `attempt` at retraining `problem` for the drift episode `first` .. `day`."""
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
    tags = {
        "skiff/trigger": "drift",
        "skiff/drift_asset": asset_name,
        "skiff/drift_day": day.isoformat(),
        "skiff/drift_first_day": first.isoformat(),
        "skiff/drift_scores": metadata["alerts"].value,
        "skiff/drift_attempt": str(attempt),
        "skiff/drift_reason": reason or f"{problem} at error since {first} (first attempt)",
    }
    if retry_of:
        tags["skiff/drift_retry_of"] = retry_of
    return RunRequest(
        run_key=run_key(problem, first, attempt),
        job_name=RETRAIN_JOBS[problem],
        run_config={"ops": ops},
        tags=tags,
    )


def _champion_reaches(settings: Settings, problem: str, first: dt.date) -> bool:
    """Whether the current champion was trained on data from `first` on (already adapted)."""
    from ml.registry import Registry

    champion = Registry(settings.registry).role(problem, "champion")
    if champion is None:
        return False
    return dt.date.fromisoformat(champion.training_window["train_end"]) >= first


@dataclass
class Episode:
    problem: str
    first: dt.date
    day: dt.date  # the newest day of the episode seen
    asset_name: str
    metadata: Mapping[str, Any]
    current: bool  # the episode the problem's newest monitored day is in


def _episode_at(
    context: SensorEvaluationContext, problem: str, day: dt.date, persistence: int
) -> Episode | None:
    """The drift episode `day` completes, with the asset at error on `day` that names it."""
    from ml.monitoring import drift_episode

    latest = _latest_records(context, problem, day, persistence + 60)
    first = drift_episode(_worst_by_day(latest), day, persistence)
    if first is None:
        return None
    asset_name, record = next(
        (name, by_day[day])
        for name, by_day in latest.items()
        if day in by_day and _severity(by_day[day]) == "error"
    )
    return Episode(problem, first, day, asset_name, record.asset_materialization.metadata, False)


def build_drift_sensor(
    settings: Settings,
    jobs: list[Any],
    *,
    clock: Callable[[], float] = time.time,
    page_size: int = PAGE_SIZE,
):
    """The sensor; `clock` (epoch seconds) is what the cool-down is measured against."""
    persistence = settings.automation.drift_persistence_days
    cooldown_hours = retrain_cooldown_hours(settings)

    @sensor(
        name="drift_retrain_sensor",
        jobs=jobs,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED,
        description=f"Requests a retraining run of a problem when its monitoring is at ERROR "
        f"severity on {persistence} consecutive days (SKIFF_DRIFT_PERSISTENCE_DAYS), on a "
        "window ending at the episode's newest day; an attempt that failed or whose gates "
        f"refused is followed by another after {cooldown_hours} h while the drift lasts "
        f"({COOLDOWN_VARIABLE}); tags say which asset, days, scores and attempt.",
    )
    def drift_retrain_sensor(context: SensorEvaluationContext):
        seen = read_cursor(context.cursor)
        at_error: set[tuple[str, dt.date]] = set()
        for asset_name, problem in WATCHES.items():
            for record in new_records(context, asset_name, seen[asset_name], page_size):
                seen[asset_name] = max(seen[asset_name], record.storage_id)
                if _severity(record) == "error" and record.partition_key is not None:
                    at_error.add((problem, dt.date.fromisoformat(record.partition_key)))

        episodes: dict[tuple[str, dt.date], Episode] = {}
        for problem in dict.fromkeys(WATCHES.values()):
            newest = _newest_day(context, problem)
            current = newest and _episode_at(context, problem, newest, persistence)
            if current:
                current.current = True
                episodes[(problem, current.first)] = current
        for problem, day in sorted(at_error):
            episode = _episode_at(context, problem, day, persistence)
            if episode is None:
                context.log.info(
                    f"{problem} {day} is at error; not yet {persistence} days in a row"
                )
            elif (problem, episode.first) not in episodes:
                episodes[(problem, episode.first)] = episode
            elif day > (known := episodes[(problem, episode.first)]).day:
                known.day, known.asset_name, known.metadata = (
                    day,
                    episode.asset_name,
                    episode.metadata,
                )

        requests = [
            request
            for episode in episodes.values()
            if (request := next_request(context, settings, episode, cooldown_hours, clock()))
        ]
        context.update_cursor(write_cursor(seen))
        return requests or SkipReason("no drift episode calls for retraining")

    return drift_retrain_sensor


def next_request(
    context: SensorEvaluationContext,
    settings: Settings,
    episode: Episode,
    cooldown_hours: int,
    now: float,
) -> RunRequest | None:
    """The next attempt at `episode`, or None (with the reason in the log)."""
    problem, first = episode.problem, episode.first
    what = f"{problem} drift since {first} ({episode.asset_name} on {episode.day})"
    if _champion_reaches(settings, problem, first):
        context.log.info(f"{what}: the champion already trained on it")
        return None
    made = attempts(context, problem, first)
    if not made:
        request = retrain_request(
            settings, problem, episode.asset_name, episode.day, first, episode.metadata
        )
        context.log.info(
            f"{what}: {episode.metadata['alerts'].value}: requesting {request.job_name}"
        )
        return request
    if running := [a for a in made if a.state == "running"]:
        context.log.info(f"{what}: attempt {running[0].number} is in flight: {running[0].why}")
        return None
    if adapted := [a for a in made if a.state == "adapted"]:
        context.log.info(f"{what}: attempt {adapted[0].number} settled it: {adapted[0].why}")
        return None
    last = made[-1]
    if not episode.current:
        context.log.info(f"{what}: attempt {last.number} did not adapt, but the drift is over")
        return None
    due = (last.ended or 0.0) + cooldown_hours * 3600
    if now < due:
        when = dt.datetime.fromtimestamp(due, dt.UTC).isoformat(timespec="minutes")
        context.log.info(f"{what}: attempt {last.number} {last.why}; next attempt after {when}")
        return None
    reason = f"attempt {last.number}: {last.why}; the {cooldown_hours} h cool-down has passed"
    request = retrain_request(
        settings,
        problem,
        episode.asset_name,
        episode.day,
        first,
        episode.metadata,
        attempt=last.number + 1,
        retry_of=last.run_id,
        reason=reason,
    )
    context.log.info(f"{what}: {reason}: requesting {request.run_key}")
    return request
