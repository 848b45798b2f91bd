"""The server's log -> raw warehouse tables, one UTC log day at a time, nothing lost.

`serving_log` reads `$SKIFF_HOME/serving/events-YYYY-MM-DD.jsonl` of each day of its run, checks
every line against `ml.serving_log` and replaces those days in four raw tables:
`serving_exposures`, `serving_feedback`, `serving_shadows` and `serving_log_quarantine` (the
lines refused, with `line_number` and `reason`). Every row keeps its `log_day` and
`line_number`, so a record can be traced to its line and dbt can deduplicate deterministically.

Decisions:
- The partitions end today (`end_offset=1`): the server is still writing today's file and the
  rollout loop reads it every hour. A rerun replaces the day, so a line that was half-written
  at the last read (`cut_short`) is loaded by the next one.
- The file is read once, as bytes; the loader and the `lines_reconcile` check both work on
  those bytes, so lines appended by the server in between cannot make the count disagree.
  The check counts line breaks (plus a last line without one) apart from the parser, and
  compares with the rows counted back from the four tables.
- No file for a day is a day with no traffic: 0 rows, not an error (a replica that served
  nothing that day writes no file).
- The tables' columns follow the contract (`ml.serving_log`: its fields, then the optional
  ones). A table created by an older version lacks the fields added since: before loading,
  the columns it lacks are added (null in the rows already there, which is what a line of the
  older server that lacked the field gives), so an existing warehouse keeps its days.
"""

import datetime as dt
from pathlib import Path

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
)

from ml import serving_log
from ml.experiments import log_file
from orchestration.markdown import reason_table
from orchestration.partitions import partition_days
from orchestration.policy import warehouse_asset
from orchestration.sql import days_sql
from skiff.settings import Settings

ASSET = "serving_log"
GROUP = "experiments"
RECONCILE_CHECK = "lines_reconcile"
DAY_COLUMN = "log_day"
# The log's `at`, renamed: AT is a keyword of SQL (`at time zone`), DuckDB refuses it as a name.
AT_COLUMN = "logged_at"

# weights and the lists (items, context, propensities, teams) are JSON text: varchar
_TYPES = {"str": "varchar", "number": "double", "int": "bigint", "bool": "boolean"}


def _table_columns(kind: str) -> dict[str, str]:
    """Portable SQL types of a kind's raw table, from the contract's field types."""
    fields = {n: t for n, (t, _) in serving_log.FIELDS[kind].items()}
    fields.update(serving_log.OPTIONAL[kind])
    columns = {DAY_COLUMN: "date", "line_number": "bigint"}
    for name, kind_of_value in fields.items():
        if name == "at":
            columns[AT_COLUMN] = "timestamp"
        else:
            columns[name] = _TYPES.get(kind_of_value, "varchar")
    return columns


# raw table -> (frame of ParsedLog, column types)
TABLES: dict[str, tuple[str, dict[str, str]]] = {
    "serving_exposures": ("exposures", _table_columns("exposure")),
    "serving_feedback": ("feedback", _table_columns("feedback")),
    "serving_shadows": ("shadows", _table_columns("shadow")),
    "serving_log_quarantine": (
        "quarantine",
        {DAY_COLUMN: "date", "line_number": "bigint", "reason": "varchar", "line": "varchar"},
    ),
}


def serving_log_partitions(settings: Settings) -> DailyPartitionsDefinition:
    """UTC log days from SKIFF_PARTITIONS_START up to and including today."""
    return DailyPartitionsDefinition(
        start_date=settings.partitions_start.isoformat(), timezone="UTC", end_offset=1
    )


def count_lines(data: bytes) -> int:
    """Lines of a log file counted without the parser: its line breaks, plus a last line that
    lacks one."""
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def read_day(folder: Path, day: dt.date) -> tuple[serving_log.ParsedLog, int]:
    """The day's records and quarantine, and its lines counted apart (no file: nothing)."""
    path = log_file(folder, day)
    data = path.read_bytes() if path.exists() else b""
    return serving_log.parse_log(data), count_lines(data)


def build_serving_log_asset(settings: Settings) -> AssetsDefinition:
    folder = settings.home / "serving"

    @warehouse_asset(
        name=ASSET,
        group_name=GROUP,
        # what the server logs is the published champions' and challengers' answers
        deps=["conversion_champion", "recommender_champion"],
        kinds={"python"},
        partitions_def=serving_log_partitions(settings),
        backfill_policy=BackfillPolicy.single_run(),
        check_specs=[
            AssetCheckSpec(
                RECONCILE_CHECK,
                asset=ASSET,
                description="Lines in the log files (their line breaks, counted apart from the "
                "parser) = rows of those days in serving_exposures + serving_feedback + "
                "serving_shadows + serving_log_quarantine, counted back from the warehouse.",
            )
        ],
        description="The server's exposure, feedback and shadow log of one UTC day "
        f"({folder}/events-YYYY-MM-DD.jsonl), checked line by line (ml/serving_log.py) into "
        "raw tables serving_exposures, serving_feedback, serving_shadows; refused lines in "
        "serving_log_quarantine with their reason. A rerun replaces the day.",
    )
    def _serving_log(context: AssetExecutionContext) -> MaterializeResult:
        warehouse = context.resources.warehouse
        days = partition_days(context)
        counts = dict.fromkeys(TABLES, 0)
        reasons, lines_in_files, by_day = pd.Series(dtype="int64"), 0, {}
        for table, (_, table_columns) in TABLES.items():
            added = warehouse.add_missing_columns(table, table_columns)
            if added:
                context.log.info(f"{table}: added the contract's new columns {added}")
        for day in days:
            parsed, lines = read_day(folder, day)
            for table, (attribute, table_columns) in TABLES.items():
                frame = getattr(parsed, attribute).rename(columns={"at": AT_COLUMN})
                frame = frame.assign(**{DAY_COLUMN: day})
                warehouse.replace_days(table, DAY_COLUMN, [day], frame, columns=table_columns)
                counts[table] += len(frame)
            reasons = reasons.add(parsed.quarantine["reason"].value_counts(), fill_value=0)
            lines_in_files += lines
            by_day[day.isoformat()] = {"lines": lines, "quarantined": len(parsed.quarantine)}
            context.log.info(
                f"{ASSET} {day}: {lines:,} lines, {len(parsed.exposures):,} exposures, "
                f"{len(parsed.feedback):,} feedback, {len(parsed.shadows):,} shadows, "
                f"{len(parsed.quarantine):,} quarantined"
            )

        schema = warehouse.schema_name
        in_run = f"{DAY_COLUMN} in ({days_sql(days)})"
        counted = warehouse.query(
            "select "
            + ", ".join(
                f"(select count(*) from {schema}.{table} where {in_run}) as {table}"
                for table in TABLES
            )
        ).iloc[0]
        rows_in_tables = int(sum(int(counted[table]) for table in TABLES))
        return MaterializeResult(
            metadata={
                "days": MetadataValue.text(f"{days[0]} .. {days[-1]}"),
                "lines": lines_in_files,
                "exposures": counts["serving_exposures"],
                "feedback": counts["serving_feedback"],
                "shadows": counts["serving_shadows"],
                "quarantined": counts["serving_log_quarantine"],
                "dagster/row_count": counts["serving_exposures"],
                "quarantine_reasons": MetadataValue.md(reason_table(reasons, "lines")),
                "quarantined_by_reason": MetadataValue.json(
                    {str(r): int(n) for r, n in reasons.items()}
                ),
                "lines_by_day": MetadataValue.json(by_day),
            },
            check_results=[
                AssetCheckResult(
                    check_name=RECONCILE_CHECK,
                    passed=rows_in_tables == lines_in_files,
                    metadata={
                        "lines_in_files": lines_in_files,
                        "rows_in_tables": rows_in_tables,
                        **{table: int(counted[table]) for table in TABLES},
                    },
                )
            ],
        )

    return _serving_log
