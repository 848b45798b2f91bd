"""`worst_recent_day` of every dbt-tested asset: its dbt tests' worst result over the last days.

A dbt test judges the days of the run that built them (a range in a backfill), so its results
are not partition results: each carries its days in its description and its `days` metadata
(`orchestration/dbt/assets.py`), and the latest one is the last run's. A failure on Monday
would hide behind Tuesday's pass. This check, one per asset with dbt tests, reads each of the
asset's dbt tests' recorded results, gives every day its latest verdict (a failed ERROR test
-> error, a failed WARN test -> warn, else ok), and reports the worst of the `RECENT_DAYS`
days ending with the latest day tested, naming the day(s) — the summary ingestion and
monitoring also have (`orchestration.monitoring.grading.summary_check`). It runs in the jobs
that build the dbt assets, after them.
"""

import datetime as dt
from collections.abc import Iterable, Iterator

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetsDefinition,
    DagsterEventType,
    DagsterInstance,
    multi_asset_check,
)

from orchestration.monitoring.grading import RECENT_DAYS, SUMMARY_CHECK, summary_check

# Enough results per test to cover RECENT_DAYS days run one at a time, re-runs included.
HISTORY = 4 * RECENT_DAYS


def days_of(label: str) -> list[dt.date]:
    """The days of a result's `days` metadata: `2026-01-05` or `2026-01-05 .. 2026-01-07`."""
    first, _, last = (part.strip() for part in label.partition(".."))
    start = dt.date.fromisoformat(first)
    end = dt.date.fromisoformat(last) if last else start
    return [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]


def day_severities(instance: DagsterInstance, checks: Iterable[AssetCheckKey]) -> dict:
    """Each day's worst latest verdict over `checks` (their recorded results that name days)."""
    from ml.monitoring import worst

    per_day: dict[dt.date, list[str]] = {}
    for key in checks:
        seen: set[dt.date] = set()
        records = instance.event_log_storage.get_asset_check_execution_history(key, limit=HISTORY)
        for record in records:  # newest first: a day's latest verdict comes first
            event = record.event.dagster_event if record.event else None
            if event is None or event.event_type != DagsterEventType.ASSET_CHECK_EVALUATION:
                continue  # planned, never evaluated (the step failed or was skipped)
            evaluation = event.asset_check_evaluation_data
            label = evaluation.metadata.get("days")
            if label is None:
                continue
            if evaluation.passed:
                verdict = "ok"
            else:
                failed_error = evaluation.severity == AssetCheckSeverity.ERROR
                verdict = "error" if failed_error else "warn"
            for day in days_of(str(label.value)):
                if day not in seen:
                    seen.add(day)
                    per_day.setdefault(day, []).append(verdict)
    return {day: worst(*verdicts) for day, verdicts in per_day.items()}


def build_dbt_summary_checks(dbt_assets: AssetsDefinition, name: str):
    """One `worst_recent_day` check per asset of `dbt_assets` that has dbt tests."""
    tests: dict[AssetKey, list[AssetCheckKey]] = {}
    for spec in dbt_assets.check_specs:
        tests.setdefault(spec.asset_key, []).append(spec.key)
    specs = [
        AssetCheckSpec(
            SUMMARY_CHECK,
            asset=key,
            description=f"The worst result of this model's dbt tests over the last {RECENT_DAYS}"
            " days tested, and which day it was: WARN when any of them failed (that run's own"
            " test result carries its severity).",
        )
        for key in sorted(tests, key=lambda k: k.to_user_string())
    ]

    @multi_asset_check(specs=specs, name=name)
    def dbt_worst_recent_day(context: AssetCheckExecutionContext) -> Iterator[AssetCheckResult]:
        for key in sorted(tests, key=lambda k: k.to_user_string()):
            days = day_severities(context.instance, tests[key])
            if not days:
                yield AssetCheckResult(
                    asset_key=key,
                    check_name=SUMMARY_CHECK,
                    passed=True,
                    severity=AssetCheckSeverity.WARN,
                    description="no dbt test result with its days recorded yet",
                )
                continue
            last = max(days)
            window = {d: s for d, s in days.items() if (last - d).days < RECENT_DAYS}
            yield summary_check(key.to_user_string(), last, window, what="tested")

    return dbt_worst_recent_day
