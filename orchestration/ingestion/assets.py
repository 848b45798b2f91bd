"""Landing files -> raw warehouse tables: every row checked, bad rows quarantined, none lost.

One factory builds both landing assets (events and products), so they behave the same way:
each run reads the landing folders of its partition days, validates every line with
`ml.contract`'s rules (a line that is no row, or a row that fails a check, is quarantined with
its row number and reason), and replaces those days in the raw table and in its `_rejected`
twin. Rows stay in Arrow from the file to the warehouse; a plain events file (no quote, no
control byte, ASCII) is read and checked by DuckDB in one query, any other by the contract's
line reader, then the same checks (orchestration/ingestion/validate.py). Only
what makes a whole file unreadable fails the run, naming it: a missing day folder or file, a
file the folder may not hold, a wrong header, a misnamed or damaged gzip file. An empty file is
an empty day. `rows_reconcile` counts the files' rows again, apart from the loader.
"""

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
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
    Failure,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    multi_asset,
)

from ml import contract
from orchestration.ingestion.validate import arrow_schema, check_events, read_plain_events
from orchestration.markdown import markdown_table, reason_table
from orchestration.monitoring.grading import RECENT_DAYS, SUMMARY_CHECK, summary_check
from orchestration.partitions import partition_days
from orchestration.policy import WAREHOUSE_STEP
from orchestration.sql import date_sql
from orchestration.warehouse import RAW_TABLES

# A day whose quarantined share passes this is flagged (warning) on the asset's page.
MAX_QUARANTINE_SHARE = 0.05


@dataclass(frozen=True)
class LandingTable:
    name: str
    file_name: str
    columns: tuple[str, ...]
    day_column: str
    # (rows as read, their row numbers, day) -> (good, rejected), in Arrow
    validate: Callable[[pa.Table, np.ndarray, dt.date], tuple[pa.Table, pa.Table]]
    description: str
    # a faster reader of a file's (good, rejected) rows, or None where it does not apply
    read_plain: Callable[[Path, bytes, dt.date], tuple[pa.Table, pa.Table] | None] | None = None


def _validate_products(
    rows: pa.Table, row_numbers: np.ndarray, day: dt.date
) -> tuple[pa.Table, pa.Table]:
    # The catalogue is small (tens of thousands of rows a day): the contract's pandas checks.
    frame = rows.to_pandas(types_mapper={pa.string(): contract.STRING}.get)
    checked = contract.validate_products(frame, day, row_numbers)
    return _arrow(checked.good, "raw_products"), _arrow(checked.rejected, "raw_products_rejected")


def _arrow(frame: pd.DataFrame, table: str) -> pa.Table:
    schema = arrow_schema(RAW_TABLES[table])
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


EVENTS = LandingTable(
    name="raw_browsing_events",
    file_name=contract.EVENTS_FILE,
    columns=contract.EVENT_COLUMNS,
    day_column="event_day",
    validate=check_events,
    description="Browsing events of the run's landing days (one, or a range in a single-run "
    "backfill; Coveo SIGIR eCom 2021 schema), validated.",
    read_plain=read_plain_events,
)
PRODUCTS = LandingTable(
    name="raw_products",
    file_name=contract.PRODUCTS_FILE,
    columns=contract.PRODUCT_COLUMNS,
    day_column="snapshot_day",
    validate=_validate_products,
    description="The product catalogue as known on each of the run's landing days, validated.",
)


@dataclass(frozen=True)
class LandingDay:
    """One day of one table as read from its files: rows to load and rows to quarantine."""

    good: pa.Table
    rejected: pa.Table
    files: tuple[Path, ...]
    rows_in_files: int  # counted apart from the reader (`count_file_rows`)


def read_landing_day(landing: Path, table: LandingTable, day: dt.date) -> LandingDay:
    """Read and check every file of `table` in the day's folder (see `contract.day_files`)."""
    folder = landing / day.isoformat()
    if not folder.is_dir():
        raise Failure(
            description=f"No landing folder for {day} ({folder}). Land the day's files first, "
            "or generate data with `skiff generate`.",
            allow_retries=False,  # data not landed yet: a retry a minute later will not help
        )
    goods, rejects, in_files = [], [], 0
    rejected_name = f"{table.name}_rejected"
    try:
        files = contract.day_files(folder, table.file_name)
        if not files:
            raise contract.SchemaError(
                f"{folder}: no {table.file_name} (nor .csv.gz, nor parts "
                f"{contract.landing_file_pattern(table.file_name).pattern})"
            )
        for path in files:
            data = contract.file_bytes(path)
            in_files += count_file_rows(data)
            plain = table.read_plain(path, data, day) if table.read_plain else None
            if plain is None:
                landed = contract.read_landing_file(path, table.columns)
                rows = pa.Table.from_pandas(landed.rows, preserve_index=False)
                good, rejected = table.validate(rows, landed.row_numbers, day)
                lines = _arrow(landed.rejected.assign(**{table.day_column: day}), rejected_name)
                rejected = pa.concat_tables([lines, rejected.cast(lines.schema)])
            else:
                good, rejected = plain
            goods.append(good.cast(arrow_schema(RAW_TABLES[table.name])))
            rejected = rejected.cast(arrow_schema(RAW_TABLES[rejected_name]))
            rejects.append(rejected.sort_by("row_number"))
    except contract.SchemaError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    return LandingDay(pa.concat_tables(goods), pa.concat_tables(rejects), tuple(files), in_files)


def count_file_rows(data: bytes) -> int:
    """Rows of a landing file (its text, as `contract.file_bytes` gives it) counted without
    the loader: its non-empty lines after the first (a row is a line; a line break in a value
    is not supported, see `ml/contract.py`); a line holding only a carriage return is empty.
    Without a carriage return or an empty line inside, that is the line breaks, less one for
    a final one (a scan of the bytes: 0.01 s for a 30 MB day, against 0.1 s line by line)."""
    if not data:
        return 0
    if b"\r" not in data and b"\n\n" not in data and not data.startswith(b"\n"):
        return data.count(b"\n") - data.endswith(b"\n")
    buf = np.frombuffer(data, dtype=np.uint8)
    breaks = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], breaks + 1))
    lengths = np.append(breaks, len(data)) - starts
    only_cr = (lengths == 1) & (buf[np.minimum(starts, len(data) - 1)] == 13)
    return int(((lengths > 0) & ~only_cr)[1:].sum())


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
        # replaced in one transaction.
        rows_loaded, rows_in_files, reasons, by_day = 0, 0, pd.Series(dtype="int64"), {}
        for day in days:
            landed = read_landing_day(landing, table, day)
            warehouse.replace_days(table.name, table.day_column, [day], landed.good)
            warehouse.replace_days(rejected_name, table.day_column, [day], landed.rejected)
            in_files = landed.rows_in_files
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
            day_reasons = landed.rejected.column("reason").value_counts().to_pylist()
            counts = pd.Series({r["values"]: r["counts"] for r in day_reasons}, dtype="int64")
            reasons = reasons.add(counts, fill_value=0)
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
