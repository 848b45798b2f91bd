"""The landing sensor: runs the nightly job for a day folder that appears (or changes) in
`$SKIFF_HOME/landing`, once its files have been still for `LANDING_SETTLE_SECONDS`."""

from __future__ import annotations

import datetime as dt
import json
import time
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

from ml import contract
from skiff.settings import Settings

LANDING_SETTLE_SECONDS = 30


def landing_days(settings: Settings, today: dt.date, now: float) -> dict[dt.date, str]:
    """Complete landing days with a signature of their files (mtime and size): folders named
    YYYY-MM-DD, from the first partition up to yesterday, holding at least one events file and
    one products file (`contract.day_files`), every file unchanged for LANDING_SETTLE_SECONDS.
    A file the folder may not hold is in the signature too: the run then fails naming it."""
    days: dict[dt.date, str] = {}
    if not settings.landing.is_dir():
        return days
    patterns = [
        contract.landing_file_pattern(n) for n in (contract.EVENTS_FILE, contract.PRODUCTS_FILE)
    ]
    for folder in sorted(settings.landing.iterdir()):
        try:
            day = dt.date.fromisoformat(folder.name)
        except ValueError:
            continue  # _truth and anything else that is not a day
        if not (settings.partitions_start <= day < today) or not folder.is_dir():
            continue
        files = [f for f in folder.iterdir() if f.is_file()]
        if not all(any(p.fullmatch(f.name) for f in files) for p in patterns):
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
