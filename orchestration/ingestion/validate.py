"""The event rows' checks of `ml.contract.validate_events`, as one DuckDB query over Arrow.

Ingestion's fast path: the same rules, in the same order, with the same cleaning, but a day of
events is checked in one pass of SQL (a `case` gives each row its first failed reason) instead
of a dozen pandas passes, and the rows stay in Arrow from the parse to the warehouse. Cleaning
is the contract's to the function: whitespace trimmed by Arrow's `utf8_trim_whitespace`, enums
lower-cased by `utf8_lower` (what pandas' Arrow strings call), empty text as null. Parity with
`contract.validate_events` is tested row by row (tests/test_landing_files.py).
"""

import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ml import contract
from orchestration.sql import text_sql

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
    """(good, rejected) rows of one landing file's events, as `contract.validate_events` gives
    them: good rows cleaned and typed with `event_day`; rejected rows as read, with
    `row_number`, `reason` and `event_day`."""
    contract.check_columns(rows.column_names, contract.EVENT_COLUMNS, "events")
    cleaned = pa.table(
        {
            "row_number": pa.array(row_numbers, pa.int64()),
            **{f"raw_{c}": rows.column(c) for c in contract.EVENT_COLUMNS},
            **{c: _clean(rows.column(c), lower=c in LOWERED) for c in contract.EVENT_COLUMNS},
        }
    )
    con = duckdb.connect()
    try:
        con.register("cleaned", cleaned)
        return _split(con, "cleaned", day)
    finally:
        con.close()


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


def read_plain_events(path: Path, data: bytes, day: dt.date) -> tuple[pa.Table, pa.Table] | None:
    """(good, rejected) of an events file DuckDB reads itself, checked in the same query; None
    when the file is not plain (see above), its header not exactly the contract's columns, or a
    line has another field count: `contract.read_landing_file` reads those, line by line.

    `data` is the file's bytes as `contract.file_bytes` gives them (gunzipped, no BOM): only a
    file whose bytes those are is read here.
    """
    header, _, body = data.partition(b"\n")
    if (
        path.name.endswith(".gz")
        or len(data) != path.stat().st_size
        or not body
        or data.translate(None, _PLAIN_BYTES)  # a byte outside plain text
        or b"\n\n" in data
        or body.startswith(b"\n")
        or sorted(header.decode().split(",")) != sorted(contract.EVENT_COLUMNS)
    ):
        return None
    if not _lines_fit(data, contract.MAX_LINE_BYTES + 1):  # + 1: the line break
        return None
    names = header.decode().split(",")
    columns = "{" + ", ".join(f"{text_sql(c)}: 'varchar'" for c in names) + "}"
    con = duckdb.connect()
    try:
        # a table keeps the file's order (insertion order is preserved): rowid + 1 is the row
        con.execute(
            f"create temp table landed as select * from read_csv({text_sql(str(path))},"
            f" header = true, columns = {columns}, delim = ',', quote = '\"', escape = '\"',"
            " strict_mode = true, auto_detect = false, null_padding = false)"
        )
    except duckdb.Error:  # a line with another field count: the contract's reader names it
        con.close()
        return None
    try:
        raw = ", ".join(f"{c} as raw_{c}" for c in contract.EVENT_COLUMNS)
        clean = ", ".join(
            f"{'lower(' if c in LOWERED else '('}nullif(trim({c}), '')) as {c}"
            for c in contract.EVENT_COLUMNS
        )
        con.execute(
            f"create temp view cleaned as select rowid + 1 as row_number, {raw}, {clean}"
            " from landed"
        )
        return _split(con, "cleaned", day)
    finally:
        con.close()


def _split(con: duckdb.DuckDBPyConnection, cleaned: str, day: dt.date) -> tuple[pa.Table, pa.Table]:
    """One pass over `cleaned` (row_number, raw_<column> as read, <column> cleaned): each row's
    first failed check, then the good rows typed and the rejected rows as read."""
    lo, hi = contract.day_bounds_ms(day)
    reason = "case " + " ".join(
        f"when {sql.format(lo=lo, hi=hi)} then {text_sql(name)}" for name, sql in CHECKS.items()
    )
    checked = con.sql(
        f"""
        with typed as (
            select
                *,
                case
                    when regexp_full_match(server_timestamp_epoch_ms, '[0-9]{{1,15}}')
                        then try_cast(server_timestamp_epoch_ms as bigint)
                end as ts
            from {cleaned}
        )
        select *, {reason} end as reason, cast('{day.isoformat()}' as date) as event_day
        from typed
        """
    ).to_arrow_table()
    bad = pc.is_valid(checked.column("reason"))
    good = checked.filter(pc.invert(bad))
    good = pa.table(
        {
            **{
                c: good.column("ts" if c == "server_timestamp_epoch_ms" else c)
                for c in contract.EVENT_COLUMNS
            },
            "event_day": good.column("event_day"),
        }
    )
    rejected = checked.filter(bad)
    rejected = pa.table(
        {
            "row_number": rejected.column("row_number"),
            **{c: rejected.column(f"raw_{c}") for c in contract.EVENT_COLUMNS},
            "reason": rejected.column("reason"),
            "event_day": rejected.column("event_day"),
        }
    )
    return good, rejected
