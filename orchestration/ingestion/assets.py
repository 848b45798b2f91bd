"""Landing files -> raw warehouse tables: every row checked, bad rows quarantined, none lost.

One factory builds both landing assets (events and products), so they behave the same way:
each run reads the landing folders of its partition days, validates every line with
`ml.contract` (a line that is no row, or a row that fails a check, is quarantined with its row
number and reason), and replaces those days in the raw table and in its `_rejected` twin. Only
what makes a whole file unreadable fails the run, naming it: a missing day folder or file, a
file the folder may not hold, a wrong header, a misnamed or damaged gzip file. An empty file is
an empty day. `rows_reconcile` counts the files' rows again, apart from the loader.
"""

import datetime as dt
import gzip
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    multi_asset,
)

from ml import contract
from orchestration.partitions import partition_days
from orchestration.policy import WAREHOUSE_STEP
from orchestration.sql import date_sql

# A day whose quarantined share passes this is flagged (warning) on the asset's page.
MAX_QUARANTINE_SHARE = 0.05


@dataclass(frozen=True)
class LandingTable:
    name: str
    file_name: str
    columns: tuple[str, ...]
    day_column: str
    validate: Callable[[pd.DataFrame, dt.date, np.ndarray], contract.Validated]
    description: str


EVENTS = LandingTable(
    name="raw_browsing_events",
    file_name=contract.EVENTS_FILE,
    columns=contract.EVENT_COLUMNS,
    day_column="event_day",
    validate=contract.validate_events,
    description="Browsing events of one landing day (Coveo SIGIR eCom 2021 schema), validated.",
)
PRODUCTS = LandingTable(
    name="raw_products",
    file_name=contract.PRODUCTS_FILE,
    columns=contract.PRODUCT_COLUMNS,
    day_column="snapshot_day",
    validate=contract.validate_products,
    description="The product catalogue as known on each landing day, validated.",
)


@dataclass(frozen=True)
class LandingDay:
    """One day of one table as read from its files: rows to load and rows to quarantine."""

    good: pd.DataFrame
    rejected: pd.DataFrame
    files: tuple[Path, ...]


def read_landing_day(landing: Path, table: LandingTable, day: dt.date) -> LandingDay:
    """Read and check every file of `table` in the day's folder (see `contract.day_files`)."""
    folder = landing / day.isoformat()
    if not folder.is_dir():
        raise Failure(
            description=f"No landing folder for {day} ({folder}). Land the day's files first, "
            "or generate data with `skiff generate`.",
            allow_retries=False,  # data not landed yet: a retry a minute later will not help
        )
    goods, rejects = [], []
    try:
        files = contract.day_files(folder, table.file_name)
        if not files:
            raise contract.SchemaError(
                f"{folder}: no {table.file_name} (nor .csv.gz, nor parts "
                f"{contract.landing_file_pattern(table.file_name).pattern})"
            )
        for path in files:
            landed = contract.read_landing_file(path, table.columns)
            validated = table.validate(landed.rows, day, landed.row_numbers)
            lines = landed.rejected.assign(**{table.day_column: day})
            goods.append(validated.good)
            rejects.append(
                pd.concat([f for f in (lines, validated.rejected) if len(f)] or [lines])
                .sort_values("row_number", kind="stable")
                .reset_index(drop=True)
            )
    except contract.SchemaError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    return LandingDay(
        pd.concat(goods, ignore_index=True), pd.concat(rejects, ignore_index=True), tuple(files)
    )


def count_file_rows(path: Path) -> int:
    """Rows of a landing file counted without the loader: its non-empty lines after the first
    (a row is a line; a line break in a value is not supported, see `ml/contract.py`)."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    lines = data.split(b"\n")[1:]
    return len(lines) - lines.count(b"") - lines.count(b"\r")


def _reason_table(reasons: pd.Series) -> str:
    if not reasons.sum():
        return "No row was quarantined."
    lines = ["| reason | rows |", "|---|---:|"]
    lines += [
        f"| `{reason}` | {int(count):,} |"
        for reason, count in reasons.sort_values(ascending=False).items()
    ]
    return "\n".join(lines)


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
        check_specs=[reconcile, quarantine],
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        group_name="ingestion",
        **WAREHOUSE_STEP,
    )
    def _ingest(context: AssetExecutionContext) -> Iterator:
        warehouse = context.resources.warehouse
        days = partition_days(context)
        # Day by day: memory stays at one day's rows however long the range, and each day is
        # replaced in one transaction.
        rows_loaded, rows_in_files, reasons, by_day = 0, 0, pd.Series(dtype="int64"), {}
        for day in days:
            landed = read_landing_day(landing, table, day)
            warehouse.replace_days(table.name, table.day_column, [day], landed.good)
            warehouse.replace_days(rejected_name, table.day_column, [day], landed.rejected)
            in_files = sum(count_file_rows(path) for path in landed.files)
            by_day[day.isoformat()] = {
                "loaded": len(landed.good),
                "quarantined": len(landed.rejected),
                "rows_in_files": in_files,
            }
            context.log.info(
                f"{table.name} {day}: {in_files:,} rows in {len(landed.files)} file(s), loaded "
                f"{len(landed.good):,}, quarantined {len(landed.rejected):,}"
            )
            rows_loaded += len(landed.good)
            rows_in_files += in_files
            reasons = reasons.add(landed.rejected["reason"].value_counts(), fill_value=0)
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
                "quarantine_reasons": MetadataValue.md(_reason_table(reasons)),
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
            metadata={
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
            metadata={"quarantine_share": float(share), "threshold": MAX_QUARANTINE_SHARE},
        )

    return _ingest


def build_ingestion_assets(
    partitions_def: PartitionsDefinition, landing: Path
) -> list[AssetsDefinition]:
    return [build_landing_asset(t, partitions_def, landing) for t in (EVENTS, PRODUCTS)]
