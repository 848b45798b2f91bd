"""Landing files -> raw warehouse tables: every row checked, bad rows quarantined, none lost.

One factory builds both landing assets (events and products), so they behave the same way:
each run reads the landing folders of its partition days, validates every line with
`ml.contract`'s rules (a line that is no row, or a row that fails a check, is quarantined with
its row number and reason), and replaces those days in the raw table and in its `_rejected`
twin, a day at a time, from what orchestration/ingestion/landing.py staged on the warehouse's
staging connection (`Warehouse.staging`: on DuckDB the warehouse's own). Only
what makes a whole file unreadable fails the run, naming it: a missing day folder or file, a
file the folder may not hold, a wrong header, a misnamed or damaged gzip file. An empty file is
an empty day. `rows_reconcile` counts the files' rows again, apart from the loader.
"""

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    multi_asset,
)

from orchestration.ingestion.landing import (
    EVENTS,
    PRODUCTS,
    LandingTable,
    read_landing_day,
)
from orchestration.markdown import markdown_table, reason_table
from orchestration.monitoring.grading import RECENT_DAYS, SUMMARY_CHECK, summary_check
from orchestration.partitions import partition_days
from orchestration.policy import WAREHOUSE_STEP
from orchestration.sql import date_sql

# A day whose quarantined share passes this is flagged (warning) on the asset's page.
MAX_QUARANTINE_SHARE = 0.05


def _day_severity(counts: dict[str, int]) -> str:
    read = counts["loaded"] + counts["quarantined"]
    return "warn" if read and counts["quarantined"] / read > MAX_QUARANTINE_SHARE else "ok"


def _recent_days(
    context: AssetExecutionContext, asset: str, last: dt.date, by_day: dict[str, dict[str, int]]
) -> AssetCheckResult:
    """`worst_recent_day`: each landing day of the window ending with `last` judged on its own
    quarantine share, from this run's counts and, for the days before, the `rows_by_day` of
    each day's latest materialization."""
    severities = {dt.date.fromisoformat(d): _day_severity(c) for d, c in by_day.items()}
    for back in range(1, RECENT_DAYS):
        day = last - dt.timedelta(days=back)
        if day in severities:
            continue
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[day.isoformat()]),
            limit=1,
        ).records
        recorded = records[0].asset_materialization.metadata.get("rows_by_day") if records else None
        counts = (recorded.value if recorded is not None else {}).get(day.isoformat())
        if counts:
            severities[day] = _day_severity(counts)
    window = {d: s for d, s in severities.items() if (last - d).days < RECENT_DAYS}
    return summary_check(asset, last, window, what="landed")


def _day_table(by_day: dict[str, dict[str, int]]) -> str:
    """Each landing day's rows in the files, loaded and quarantined, in day order."""
    frame = pd.DataFrame([{"day": day, **counts} for day, counts in sorted(by_day.items())])
    return markdown_table(frame, ["day", "rows_in_files", "loaded", "quarantined"])


def build_landing_asset(
    table: LandingTable, partitions_def: PartitionsDefinition, landing: Path
) -> AssetsDefinition:
    rejected_name = f"{table.name}_rejected"
    reconcile = AssetCheckSpec(
        "rows_reconcile",
        asset=table.name,
        description="Rows in the landing files (their non-empty lines, counted apart from the "
        "loader) = rows in the table + rows in the quarantine, counted back from the warehouse.",
    )
    quarantine = AssetCheckSpec(
        "quarantine_share",
        asset=table.name,
        description=f"Warns when more than {MAX_QUARANTINE_SHARE:.0%} of a run's rows are bad.",
    )
    recent = AssetCheckSpec(
        SUMMARY_CHECK,
        asset=table.name,
        description=f"The worst of the last {RECENT_DAYS} landing days ending with the run's "
        f"last: a day warns when more than {MAX_QUARANTINE_SHARE:.0%} of its rows are bad, so "
        "an earlier day's warning stays in sight behind a later run's pass.",
    )

    @multi_asset(
        name=f"ingest_{table.name}",
        specs=[
            AssetSpec(table.name, description=table.description, kinds={"python"}),
            AssetSpec(
                rejected_name,
                description=f"Quarantine of {table.name}: rows as read, with `row_number` "
                "and the `reason` they were refused.",
                kinds={"python"},
            ),
        ],
        check_specs=[reconcile, quarantine, recent],
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        group_name="ingestion",
        **WAREHOUSE_STEP,
    )
    def _ingest(context: AssetExecutionContext) -> Iterator:
        warehouse = context.resources.warehouse
        days = partition_days(context)
        # Day by day: memory stays at one day's rows however long the range, and each day is
        # replaced in one transaction per table.
        rows_loaded, rows_in_files, reasons, by_day = 0, 0, pd.Series(dtype="int64"), {}
        for day in days:
            with warehouse.staging() as con:
                landed = read_landing_day(con, landing, table, day)
                for name, rows in ((table.name, landed.good), (rejected_name, landed.rejected)):
                    warehouse.replace_days_from(con, name, table.day_column, [day], rows)
            in_files = landed.rows_in_files
            by_day[day.isoformat()] = {
                "loaded": landed.loaded,
                "quarantined": landed.quarantined,
                "rows_in_files": in_files,
            }
            context.log.info(
                f"{table.name} {day}: {in_files:,} rows in {len(landed.files)} file(s), loaded "
                f"{landed.loaded:,}, quarantined {landed.quarantined:,}"
            )
            rows_loaded += landed.loaded
            rows_in_files += in_files
            reasons = reasons.add(pd.Series(landed.reasons, dtype="int64"), fill_value=0)
        rows_quarantined = int(reasons.sum())
        rows_read = rows_loaded + rows_quarantined
        share = rows_quarantined / rows_read if rows_read else 0.0
        day_range = f"{days[0]} .. {days[-1]}" if len(days) > 1 else str(days[0])
        yield MaterializeResult(
            asset_key=table.name,
            metadata={
                "days": MetadataValue.text(day_range),
                "rows_read": rows_read,
                "rows_loaded": rows_loaded,
                "rows_quarantined": rows_quarantined,
                "quarantine_share": float(share),
                "dagster/row_count": rows_loaded,
                "quarantine_reasons": MetadataValue.md(reason_table(reasons)),
                # per day, to read (the totals above are the run's, over all its days) ...
                "by_day": MetadataValue.md(_day_table(by_day)),
                # ... and to read back (`skiff run` prints it)
                "rows_by_day": MetadataValue.json(by_day),
            },
        )
        yield MaterializeResult(
            asset_key=rejected_name,
            metadata={"days": MetadataValue.text(day_range), "dagster/row_count": rows_quarantined},
        )

        in_run = f"{table.day_column} between {date_sql(days[0])} and {date_sql(days[-1])}"
        counted = warehouse.query(
            f"select (select count(*) from {warehouse.schema_name}.{table.name}"
            f" where {in_run}) as loaded,"
            f" (select count(*) from {warehouse.schema_name}.{rejected_name}"
            f" where {in_run}) as quarantined"
        ).iloc[0]
        loaded, quarantined = int(counted["loaded"]), int(counted["quarantined"])
        yield AssetCheckResult(
            asset_key=table.name,
            check_name="rows_reconcile",
            passed=loaded + quarantined == rows_in_files,
            description=f"{day_range}: {rows_in_files:,} rows in the files, {loaded:,} in the "
            f"table + {quarantined:,} in the quarantine",
            metadata={
                "days": MetadataValue.text(day_range),
                "rows_in_files": rows_in_files,
                "rows_in_table": loaded,
                "rows_in_quarantine": quarantined,
            },
        )
        yield AssetCheckResult(
            asset_key=table.name,
            check_name="quarantine_share",
            passed=share <= MAX_QUARANTINE_SHARE,
            severity=AssetCheckSeverity.WARN,
            description=f"{day_range}: {share:.2%} of the rows quarantined (warns above "
            f"{MAX_QUARANTINE_SHARE:.0%})",
            metadata={
                "days": MetadataValue.text(day_range),
                "quarantine_share": float(share),
                "threshold": MAX_QUARANTINE_SHARE,
            },
        )
        yield _recent_days(context, table.name, days[-1], by_day)

    return _ingest


def build_ingestion_assets(
    partitions_def: PartitionsDefinition, landing: Path
) -> list[AssetsDefinition]:
    return [build_landing_asset(t, partitions_def, landing) for t in (EVENTS, PRODUCTS)]
