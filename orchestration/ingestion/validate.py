"""The event rows' checks of `ml.contract.validate_events`, as one DuckDB query.

Ingestion's fast path: the same rules, in the same order, with the same cleaning, but a day of
events is checked in one pass of SQL (a `case` gives each row its first failed reason) instead
of a dozen pandas passes, on the connection the rows are loaded through (the warehouse's own
for DuckDB, see `Warehouse.staging`): a plain file goes from DuckDB's CSV reader to the table
without leaving DuckDB. Cleaning is the contract's to the function: whitespace trimmed
(Arrow's `utf8_trim_whitespace` for rows from the contract's line reader), enums lower-cased,
empty text as null. Parity with `contract.validate_events` is tested row by row
(tests/test_landing_files.py).
"""

import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ml import contract
from orchestration.sql import date_sql, text_sql

ARROW_TYPES = {
    "varchar": pa.string(),
    "bigint": pa.int64(),
    "integer": pa.int32(),
    "date": pa.date32(),
}


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(text_sql(v) for v in values)


# First failed check wins, in contract.REJECT_REASONS' order (the `case` below keeps it).
CHECKS: dict[str, str] = {
    "missing_session_id": "session_id_hash is null",
    "bad_event_type": f"event_type is null or event_type not in ({_in(contract.EVENT_TYPES)})",
    "bad_timestamp": "ts is null",
    "timestamp_outside_day": "ts < {lo} or ts >= {hi}",
    # product events need an action from the enum; pageviews carry none
    "bad_product_action": (
        "(event_type = 'event_product' and (product_action is null"
        f" or product_action not in ({_in(contract.PRODUCT_ACTIONS)})))"
        " or (event_type != 'event_product' and product_action is not null)"
    ),
    "missing_product_sku": "event_type = 'event_product' and product_sku_hash is null",
}
if tuple(CHECKS) != contract.REJECT_REASONS:  # a reason added to the contract needs its SQL
    raise RuntimeError(
        f"orchestration/ingestion/validate.py checks {list(CHECKS)}, the contract "
        f"{list(contract.REJECT_REASONS)}: keep them the same, in the same order"
    )


def arrow_schema(columns: dict[str, str]) -> pa.Schema:
    """The Arrow schema of a table given as {name: portable SQL type} (RAW_TABLES)."""
    return pa.schema([(name, ARROW_TYPES[kind]) for name, kind in columns.items()])


def _clean(values: pa.ChunkedArray, *, lower: bool = False) -> pa.ChunkedArray:
    stripped = pc.utf8_trim_whitespace(values)
    if lower:
        stripped = pc.utf8_lower(stripped)
    return pc.if_else(pc.equal(stripped, ""), pa.scalar(None, pa.string()), stripped)


LOWERED = ("event_type", "product_action")


def check_events(
    rows: pa.Table, row_numbers: np.ndarray, day: dt.date
) -> tuple[pa.Table, pa.Table]:
    """(good, rejected) rows of one landing file's events as the contract's line reader gave
    them (`rows`, their `row_numbers`), as `contract.validate_events` gives them: good rows
    cleaned and typed with `event_day`; rejected rows as read, with `row_number`, `reason` and
    `event_day`. The checks of `checked_events`, on an in-memory DuckDB."""
    contract.check_columns(rows.column_names, contract.EVENT_COLUMNS, "events")
    cleaned = pa.table(
        {
            "row_number": pa.array(row_numbers, pa.int64()),
            **{f"raw_{c}": rows.column(c) for c in contract.EVENT_COLUMNS},
            **{c: _clean(rows.column(c), lower=c in LOWERED) for c in contract.EVENT_COLUMNS},
        }
    )
    with duckdb.connect() as con:
        con.register("cleaned", cleaned)
        cleaned_sql = "(select 0 as file_index, * from cleaned)"
        good, rejected = checked_events(con, cleaned_sql, "checked", day)
        rejected = f"(select * exclude (file_index) from {rejected})"
        return con.sql(good).to_arrow_table(), con.sql(rejected).to_arrow_table()


# A file DuckDB may read straight, as the contract's line reader would: plain ASCII text
# without a quote, control byte, carriage return or empty line (so row n is line n + 1 and
# the only whitespace to trim is the space), no line longer than the contract allows.
_PLAIN_BYTES = bytes(range(0x20, 0x7F)).replace(b'"', b"") + b"\n"


def _lines_fit(data: bytes, limit: int) -> bool:
    """No line of `data` is longer than `limit` bytes: every aligned stretch of limit / 2
    bytes holds a line break (a longer line would cover one whole), else counted exactly."""
    step = max(limit // 2, 1)
    if all(data.find(b"\n", i, i + step) >= 0 for i in range(0, len(data) - step, step)):
        return True
    breaks = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    return bool(np.diff(np.append(breaks, len(data)), prepend=-1).max(initial=0) <= limit)


def is_plain(path: Path, data: bytes) -> bool:
    """Whether DuckDB may read the events file at `path` itself (see above): `data` is its
    bytes as `contract.file_bytes` gives them (gunzipped, no BOM), so only a file whose bytes
    those are can be, and its header must be exactly the contract's columns."""
    end = data.find(b"\n")
    return (
        not path.name.endswith(".gz")
        and len(data) == path.stat().st_size
        and 0 <= end < len(data) - 1  # a header line, then a row
        and not data.translate(None, _PLAIN_BYTES)  # no byte outside plain text
        and b"\n\n" not in data
        and sorted(data[:end].decode().split(",")) == sorted(contract.EVENT_COLUMNS)
        and _lines_fit(data, contract.MAX_LINE_BYTES + 1)  # + 1: the line break
    )


def stage_plain_events(
    con: duckdb.DuckDBPyConnection, name: str, files: list[tuple[int, Path, str]], day: dt.date
) -> tuple[str, str] | None:
    """The (good, rejected) relations on `con` of a day's plain events files (`is_plain`),
    given as (index, path, header line), read by DuckDB in one pass and checked there
    (`checked_events`), into temporary tables named after `name`; the rejected rows carry
    their file's `file_index`. None when the files' headers differ (each is then read on its
    own), or a line has another field count: the contract's reader names it
    (`contract.read_landing_file`, then `check_events`)."""
    headers = {header for _, _, header in files}
    if len(headers) > 1:  # the same columns in another order: one query would mix them up
        return None
    columns = "{" + ", ".join(f"{text_sql(c)}: 'varchar'" for c in headers.pop().split(",")) + "}"
    paths = ", ".join(text_sql(str(path)) for _, path, _ in files)
    try:
        # a table keeps the files' order, and each file's (insertion order is preserved)
        con.execute(
            f"create or replace temp table {name}_read as select * from read_csv([{paths}],"
            f" header = true, columns = {columns}, delim = ',', quote = '\"', escape = '\"',"
            " strict_mode = true, auto_detect = false, null_padding = false, filename = true)"
        )
    except duckdb.Error:  # a line with another field count
        return None
    indexes = ", ".join(f"({index}, {text_sql(str(path))})" for index, path, _ in files)
    raw = ", ".join(f"r.{c} as raw_{c}" for c in contract.EVENT_COLUMNS)
    # DuckDB's trim takes spaces only, all a plain file can hold; calling it only where a value
    # starts or ends with one costs a third less than calling it on every value
    clean = ", ".join(
        f"{'lower' if c in LOWERED else ''}(nullif(case when starts_with(r.{c}, ' ')"
        f" or ends_with(r.{c}, ' ') then trim(r.{c}) else r.{c} end, '')) as {c}"
        for c in contract.EVENT_COLUMNS
    )
    # row n of a file is its n-th row in the table: rowid less the file's first rowid, plus 1
    cleaned = f"""(
        with files (file_index, filename) as (values {indexes}),
        firsts as (select filename, min(rowid) as first from {name}_read group by filename),
        known as (select files.*, firsts.first from files inner join firsts using (filename))
        select
            known.file_index, r.rowid - known.first + 1 as row_number, {raw}, {clean}
        from {name}_read as r
        inner join known on r.filename = known.filename
    )"""
    return checked_events(con, cleaned, name, day)


def checked_events(
    con: duckdb.DuckDBPyConnection, cleaned: str, name: str, day: dt.date
) -> tuple[str, str]:
    """The (good, rejected) relations on `con` of one landing day's events in `cleaned`
    (file_index, row_number, raw_<column> as read, <column> cleaned), checked in one pass into
    a temporary table `name` (each row's first failed check): good rows typed with
    `event_day`, rejected rows as read, with `file_index`, `row_number`, `reason` and
    `event_day`."""
    lo, hi = contract.day_bounds_ms(day)
    reason = "case " + " ".join(
        f"when {sql.format(lo=lo, hi=hi)} then {text_sql(check)}" for check, sql in CHECKS.items()
    )
    con.execute(
        f"""
        create or replace temp table {name} as
        with typed as (
            select
                *,
                case
                    when regexp_full_match(server_timestamp_epoch_ms, '[0-9]{{1,15}}')
                        then try_cast(server_timestamp_epoch_ms as bigint)
                end as ts
            from {cleaned}
        )
        select *, {reason} end as reason, {date_sql(day)} as event_day
        from typed
        """
    )
    good = ", ".join(
        "ts as server_timestamp_epoch_ms" if c == "server_timestamp_epoch_ms" else c
        for c in contract.EVENT_COLUMNS
    )
    raw = ", ".join(f"raw_{c} as {c}" for c in contract.EVENT_COLUMNS)
    return (
        f"(select {good}, event_day from {name} where reason is null)",
        f"(select file_index, row_number, {raw}, reason, event_day from {name}"
        " where reason is not null)",
    )
