"""Running the code location's jobs in process on the persistent instance (the UI shows the runs).

Used by the command line, the demo, the benchmarks and the tests alike.
"""

from __future__ import annotations

import datetime as dt

from skiff.settings import Settings


def run_job(
    settings: Settings,
    job_name: str,
    first: dt.date | None = None,
    last: dt.date | None = None,
    ops: dict | None = None,
    tags: dict[str, str] | None = None,
    partition: dt.date | None = None,
) -> bool:
    """Run one of the code location's jobs in process on the persistent instance (so the UI
    shows it), for days [first, last] in one run when the job is partitioned."""
    from dagster import DagsterInstance
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    from orchestration.definitions import build_definitions

    job = build_definitions(settings).resolve_job_def(job_name)
    tags = dict(tags or {})
    if first is not None:
        tags |= {
            ASSET_PARTITION_RANGE_START_TAG: first.isoformat(),
            ASSET_PARTITION_RANGE_END_TAG: (last or first).isoformat(),
        }
    with DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance,
            # progress at INFO (a line per day, dbt node, epoch); DEBUG stays in the UI's logs
            run_config={
                "loggers": {"console": {"config": {"log_level": "INFO"}}},
                **({"ops": ops} if ops else {}),
            },
            tags=tags,
            partition_key=partition.isoformat() if partition else None,
            raise_on_error=False,
        )
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure:
                print(f"step {event.step_key} failed: {event.step_failure_data.error.message}")
    return result.success


def run_days(settings: Settings, first: dt.date, last: dt.date) -> bool:
    """Materialize landing days [first, last] through the marts in one run."""
    from orchestration.definitions import DAILY_REFRESH

    return run_job(settings, DAILY_REFRESH, first, last)


SUMMARY_TABLES = (
    ("raw", "raw_browsing_events"),
    ("raw", "raw_browsing_events_rejected"),
    ("raw", "raw_products"),
    ("main", "stg_browsing_events"),
    ("main", "int_events_sessionized"),
    ("main", "sessions"),
    ("main", "conversion_examples"),
    ("main", "session_sequences"),
)


def summarize(settings: Settings) -> str:
    """Rows per table, sessions and conversion rate, read back from the warehouse."""
    from orchestration.resources import build_warehouse

    warehouse = build_warehouse(settings)
    lines = [f"{'table':<32}{'rows':>12}"]
    for schema, table in SUMMARY_TABLES:
        schema = settings.raw_schema if schema == "raw" else settings.models_schema
        count = warehouse.query(f"select count(*) as n from {schema}.{table}").iloc[0]["n"]
        lines.append(f"{schema + '.' + table:<32}{int(count):>12,}")
    stats = warehouse.query(
        "select count(*) as sessions, avg(case when purchased then 1.0 else 0.0 end) as rate,"
        f" count(distinct session_day) as days from {settings.models_schema}.sessions"
    ).iloc[0]
    lines.append(
        f"\n{int(stats['sessions']):,} sessions over {int(stats['days'])} days; "
        f"conversion rate {float(stats['rate'] or 0):.2%}"
    )
    return "\n".join(lines)
