"""The raw-data contract: what a landing day looks like and how each row is checked.

Landing files follow the public Coveo SIGIR eCom 2021 browsing schema, so real data of that
shape drops in. One folder per UTC day::

    <landing>/2026-01-05/browsing_events.csv   the day's events, rows in any order
    <landing>/2026-01-05/products.csv          the catalogue as known that day

Pure pandas: used by the generator, the importers, the ingestion asset (its reader and the
products' rules) and the server (`check_event`, the row form of `validate_events`) alike. The
event rules are also written as one DuckDB query in `orchestration/ingestion/validate.py`, for
speed; that module refuses to import when `REJECT_REASONS` changes, and tests hold the three
forms to the same reason and the same cleaned row.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

EVENTS_FILE = "browsing_events.csv"
PRODUCTS_FILE = "products.csv"

EVENT_COLUMNS: tuple[str, ...] = (
    "session_id_hash",
    "event_type",
    "product_action",
    "product_sku_hash",
    "server_timestamp_epoch_ms",
    "hashed_url",
)
PRODUCT_COLUMNS: tuple[str, ...] = (
    "product_sku_hash",
    "category_hash",
    "price_bucket",
    "description_vector",
    "image_vector",
)

EVENT_TYPES: tuple[str, ...] = ("pageview", "event_product")
PRODUCT_ACTIONS: tuple[str, ...] = ("detail", "add", "remove", "purchase", "click")
PRICE_BUCKETS = range(1, 11)  # deciles of price, 1 = cheapest

# Why a row is quarantined. A row gets the first reason that applies, in this order.
REJECT_REASONS: tuple[str, ...] = (
    "missing_session_id",
    "bad_event_type",
    "bad_timestamp",
    "timestamp_outside_day",
    "bad_product_action",
    "missing_product_sku",
)
PRODUCT_REJECT_REASONS: tuple[str, ...] = ("missing_product_sku", "bad_price_bucket")
# The column each event reason is about, and its rule in words (the server's 422 names both).
REASON_COLUMNS: dict[str, str] = {
    "missing_session_id": "session_id_hash",
    "bad_event_type": "event_type",
    "bad_timestamp": "server_timestamp_epoch_ms",
    "timestamp_outside_day": "server_timestamp_epoch_ms",
    "bad_product_action": "product_action",
    "missing_product_sku": "product_sku_hash",
}
REASON_RULES: dict[str, str] = {
    "missing_session_id": "a session id is required",
    "bad_event_type": f"must be one of {list(EVENT_TYPES)}",
    "bad_timestamp": "must be epoch milliseconds: 1 to 15 digits",
    "timestamp_outside_day": "must fall within the landing day",
    "bad_product_action": f"an event_product needs one of {list(PRODUCT_ACTIONS)}; "
    "a pageview carries none",
    "missing_product_sku": "an event_product needs its product sku",
}
# Reasons a row can only get inside a landing day's file (the server has no landing day).
LANDING_DAY_REASONS: tuple[str, ...] = ("timestamp_outside_day",)
TIMESTAMP_PATTERN = r"[0-9]{1,15}"

MS_PER_DAY = 86_400_000
# Strings stay in Arrow memory: vectorized string checks, cheap hand-over to the warehouse.
STRING = pd.StringDtype("pyarrow")


class SchemaError(ValueError):
    """A landing file whose columns do not match the contract."""


def day_bounds_ms(day: dt.date) -> tuple[int, int]:
    """[start, end) of a UTC day in epoch milliseconds."""
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)
    return start, start + MS_PER_DAY


def check_columns(columns: list[str], expected: tuple[str, ...], what: str) -> None:
    """Raise SchemaError naming every missing and unexpected column (order does not matter)."""
    missing = [c for c in expected if c not in columns]
    unexpected = [c for c in columns if c not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing column(s) {missing}")
        if unexpected:
            parts.append(f"unexpected column(s) {unexpected}")
        raise SchemaError(f"{what}: {'; '.join(parts)}; expected exactly {list(expected)}")


def read_landing_csv(path: Path, expected: tuple[str, ...]) -> pd.DataFrame:
    """Read a landing CSV with every value as a string (None where empty), columns checked.

    For files known to be well formed (tests, benchmarks, the importers' own output): a line
    that is no row raises SchemaError naming it. Ingestion uses `read_landing_file`.
    """
    if not path.exists():
        raise FileNotFoundError(f"landing file not found: {path}")
    landed = read_landing_file(path, expected)
    if len(landed.rejected):
        first = landed.rejected.iloc[0]
        raise SchemaError(
            f"{path}: {len(landed.rejected):,} line(s) are no row, the first is row "
            f"{first['row_number']} ({first['reason']})"
        )
    return landed.rows


# ---------------------------------------------------------------------------------------------
# Landing files: which files a day folder may hold, and reading them line by line.
#
# A row is one physical line of a file (LF or CRLF ended; the last may lack it); the first line
# is the header; an empty line is no row. No value of the contract holds a line break, so a
# quoted line break is not supported: both halves are quarantined (`unterminated_quote`).

# browsing_events.csv, browsing_events.csv.gz, browsing_events-<part>.csv[.gz]; products alike
_PART = r"(?:-[A-Za-z0-9_.-]+)?\.csv(?:\.gz)?"
LANDING_FILE_STEMS: tuple[str, ...] = (
    EVENTS_FILE.removesuffix(".csv"),
    PRODUCTS_FILE.removesuffix(".csv"),
)
MAX_LINE_BYTES = 1 << 20  # a catalogue line with two embedding vectors is a few KB
MAX_QUARANTINED_VALUE = 1_000  # characters of a value kept in the quarantine
BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"
# Why a line cannot be read as a row, checked before the row checks above (first one wins).
LINE_REJECT_REASONS: tuple[str, ...] = (
    "line_too_long",
    "invalid_utf8",
    "control_characters",
    "unterminated_quote",
    "wrong_field_count",
)
DELIMITER_HINTS = {";": "`;`", "\t": "tab", "|": "`|`"}


def landing_file_pattern(file_name: str) -> re.Pattern[str]:
    return re.compile(re.escape(file_name.removesuffix(".csv")) + _PART)


def day_files(folder: Path, file_name: str) -> list[Path]:
    """The files of `folder` that hold `file_name`'s rows, sorted by name.

    Raises SchemaError naming any file of the folder that no landing file pattern allows, so a
    stray export is never silently ignored.
    """
    patterns = [landing_file_pattern(name) for name in (EVENTS_FILE, PRODUCTS_FILE)]
    names = sorted(p.name for p in folder.iterdir())
    stray = [n for n in names if not any(p.fullmatch(n) for p in patterns)]
    if stray:
        raise SchemaError(
            f"{folder}: unexpected file(s) {stray}; a day folder holds only "
            f"{EVENTS_FILE} and {PRODUCTS_FILE}, each optionally gzip-compressed (.csv.gz) or "
            "split in parts named like browsing_events-<part>.csv[.gz]"
        )
    mine = landing_file_pattern(file_name)
    return [folder / n for n in names if mine.fullmatch(n)]


def file_bytes(path: Path) -> bytes:
    """The file's text as UTF-8 bytes: gunzipped when named .gz, without a byte-order mark."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        if not data.startswith(GZIP_MAGIC):
            raise SchemaError(f"{path}: named .gz but not gzip-compressed; rename it to .csv")
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise SchemaError(f"{path}: damaged gzip file ({exc})") from exc
    elif data.startswith(GZIP_MAGIC):
        raise SchemaError(f"{path}: gzip-compressed but named .csv; rename it to {path.name}.gz")
    return data.removeprefix(BOM)


@dataclass(frozen=True)
class LandingFile:
    """One landing file as read: its rows (every value a string, None where empty), each row's
    `row_numbers` (line n+1 of the file is row n), and the lines that are no row, with the
    columns as far as they could be split, `row_number` and `reason`."""

    rows: pd.DataFrame
    row_numbers: np.ndarray
    rejected: pd.DataFrame

    @property
    def rows_read(self) -> int:
        return len(self.rows) + len(self.rejected)


def _header(path: Path, line: bytes, expected: tuple[str, ...]) -> list[str]:
    try:
        text = line.decode("utf-8").removesuffix("\r")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path}: the header is not UTF-8 text ({exc})") from exc
    header = next(csv.reader([text]), [])
    try:
        check_columns([c.strip() for c in header], expected, str(path))
    except SchemaError as exc:
        hints = [name for sep, name in DELIMITER_HINTS.items() if len(header) == 1 and sep in text]
        if hints:
            raise SchemaError(
                f"{exc}; the header looks {hints[0]}-separated: landing files are comma-separated"
            ) from exc
        raise
    return [c.strip() for c in header]


def _line_reasons(body: bytes, n_fields: int) -> tuple[np.ndarray, ...]:
    """Per non-empty line of `body`: start, end (without the line break), row number (line n+1
    of the file is row n) and why it is no row (0 when it is one, else the 1-based index of its
    reason in LINE_REJECT_REASONS).

    Vectorized over the bytes (a few passes of NumPy), so a clean file costs little more than
    Arrow's own parse.
    """
    buf = np.frombuffer(body, dtype=np.uint8)
    low = np.flatnonzero(buf < 32)  # line breaks, carriage returns and other control bytes
    low_bytes = buf[low]
    breaks = low[low_bytes == 10]
    ends = breaks if body.endswith(b"\n") or not body else np.append(breaks, len(body))
    starts = np.concatenate((np.zeros(1, dtype=ends.dtype), breaks + 1))[: len(ends)]
    ends = ends - ((ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13))  # CRLF
    numbers = np.arange(1, len(ends) + 1)  # row n is line n+1 of the file
    keep = ends > starts  # an empty line is no row
    starts, ends, numbers = starts[keep], ends[keep], numbers[keep]
    n = len(starts)
    reason = np.zeros(n, dtype=np.uint8)  # 0: a row; i: LINE_REJECT_REASONS[i - 1]
    if not n:
        return starts, ends, numbers, reason

    def line_of(positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(starts, positions, side="right") - 1

    def inside(positions: np.ndarray) -> np.ndarray:
        lines = line_of(positions)
        return (positions >= starts[lines]) & (positions < ends[lines])

    commas = np.flatnonzero(buf == 44)
    odd_quotes = np.zeros(n, dtype=bool)
    if b'"' in body:
        # quotes before each position, mod 2 (uint8 wraps at 256, which keeps the parity)
        quotes = np.cumsum(buf == 34, dtype=np.uint8)

        def before(positions: np.ndarray) -> np.ndarray:
            return np.where(positions > 0, quotes[np.maximum(positions - 1, 0)], 0)

        odd_quotes = ((before(ends) - before(starts)) & 1).astype(bool)
        commas = commas[inside(commas)]
        commas = commas[((before(commas) - before(starts[line_of(commas)])) & 1) == 0]
    fields = np.searchsorted(commas, ends) - np.searchsorted(commas, starts) + 1
    control = low[low_bytes != 10]
    if b"\x7f" in body:  # DEL
        control = np.union1d(control, np.flatnonzero(buf == 127))
    bad_utf8: list[int] = []
    if not body.isascii():
        high = line_of(np.flatnonzero(buf >= 128))
        bad_utf8 = [i for i in np.unique(high) if not _is_utf8(body[starts[i] : ends[i]])]
    checks = {
        "line_too_long": ends - starts > MAX_LINE_BYTES,
        "invalid_utf8": np.isin(np.arange(n), bad_utf8),
        "control_characters": np.isin(np.arange(n), line_of(control[inside(control)])),
        "unterminated_quote": odd_quotes,
        "wrong_field_count": fields != n_fields,
    }
    for code, name in reversed(list(enumerate(LINE_REJECT_REASONS, start=1))):
        reason[checks[name]] = code
    return starts, ends, numbers, reason


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# control bytes shown escaped in the quarantine (\x00), so that any reader of it sees them
_ESCAPED = {i: f"\\x{i:02x}" for i in [*range(32), 127]}


def _split_rejected(line: bytes, header: list[str], reason: str) -> list[str | None]:
    """A refused line's values, as far as they can be told apart, for the quarantine."""
    text = line[: MAX_QUARANTINED_VALUE * 2 * len(header)].decode("utf-8", errors="replace")
    text = text.translate(_ESCAPED)
    try:
        values = next(csv.reader([text]), []) if reason != "line_too_long" else [text]
    except csv.Error:
        values = [text]
    if len(values) > len(header):  # what does not fit stays visible in the last column
        values = [*values[: len(header) - 1], ",".join(values[len(header) - 1 :])]
    values += [None] * (len(header) - len(values))
    return [v[:MAX_QUARANTINED_VALUE] if v else None for v in values]


def read_landing_file(path: Path, expected: tuple[str, ...]) -> LandingFile:
    """Read one landing file: every line becomes a row or a quarantined line with its reason.

    Only what makes the whole file unreadable raises SchemaError: a wrong header, a misnamed or
    damaged gzip file.
    """
    data = file_bytes(path)
    header_end = data.find(b"\n")
    header_line, body = (
        (data, b"") if header_end < 0 else (data[:header_end], data[header_end + 1 :])
    )
    if not header_line.strip():  # an empty day may come as a zero-byte file
        empty = pd.DataFrame({column: pd.Series(dtype=STRING) for column in expected})
        return LandingFile(empty, np.zeros(0, dtype=np.int64), _rejected_frame([], expected))
    header = _header(path, header_line, expected)
    starts, ends, numbers, reason = _line_reasons(body, len(header))
    good = reason == 0
    rows, skipped = _parse_rows(path, data, header_line, body, starts, ends, good, header, expected)
    if skipped:  # Arrow split a line with a quote inside a value otherwise: its field count wins
        for i in np.flatnonzero(good):
            line = body[starts[i] : ends[i]].removesuffix(b"\r")
            if skipped.get(line, 0):
                skipped[line] -= 1
                reason[i] = LINE_REJECT_REASONS.index("wrong_field_count") + 1
        good = reason == 0
    rejected = []
    for i in np.flatnonzero(~good):
        why = LINE_REJECT_REASONS[reason[i] - 1]
        line = body[starts[i] : ends[i]]
        rejected.append([int(numbers[i]), *_split_rejected(line, header, why), why])
    order = [header.index(c) for c in expected]
    rejected = [[r[0], *[r[1 + j] for j in order], r[-1]] for r in rejected]
    return LandingFile(rows, numbers[good].astype(np.int64), _rejected_frame(rejected, expected))


def _rejected_frame(rows: list[list], expected: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["row_number", *expected, "reason"])
    return frame.astype({"row_number": "int64", **dict.fromkeys(expected, STRING)})


def _parse_rows(
    path: Path,
    data: bytes,
    header_line: bytes,
    body: bytes,
    starts: np.ndarray,
    ends: np.ndarray,
    good: np.ndarray,
    header: list[str],
    expected: tuple[str, ...],
) -> tuple[pd.DataFrame, dict[bytes, int]]:
    """The good lines parsed by Arrow, and the lines Arrow found another field count in
    ({line: times}; a quote inside a value is read as a character there)."""
    skipped: dict[bytes, int] = {}

    def skip(row: pacsv.InvalidRow) -> str:
        line = row.text.encode()
        skipped[line] = skipped.get(line, 0) + 1
        return "skip"

    if good.all():
        text = data
    else:  # the runs of good lines, joined: as many slices as there are refused lines, plus one
        idx = np.flatnonzero(good)
        cut = np.flatnonzero(np.diff(idx) != 1) + 1
        runs = np.split(idx, cut) if len(idx) else []
        text = header_line + b"\n" + b"\n".join(body[starts[r[0]] : ends[r[-1]]] for r in runs)
    table = pacsv.read_csv(
        pa.py_buffer(text),
        read_options=pacsv.ReadOptions(column_names=header, skip_rows=1),
        parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()),
            null_values=[""],
            strings_can_be_null=True,
        ),
    )
    expected_rows = int(good.sum()) - sum(skipped.values())
    if table.num_rows != expected_rows:  # the line checks and Arrow must agree on every row
        raise SchemaError(f"{path}: read {table.num_rows:,} rows of {expected_rows:,} lines")
    frame = table.to_pandas(types_mapper={pa.string(): STRING}.get)
    return frame[list(expected)], skipped


@dataclass(frozen=True)
class Validated:
    """Good rows typed for the warehouse; bad rows as read, with a `reason`."""

    good: pd.DataFrame
    rejected: pd.DataFrame

    @property
    def rows_read(self) -> int:
        return len(self.good) + len(self.rejected)


def _row_numbers(row_numbers: np.ndarray | None, n: int) -> np.ndarray:
    return np.arange(1, n + 1) if row_numbers is None else np.asarray(row_numbers)


def _clean(series: pd.Series) -> pd.Series:
    """Strip whitespace; empty strings become missing."""
    stripped = series.astype(STRING).str.strip()
    return stripped.mask(stripped == "")


def validate_events(
    raw: pd.DataFrame, day: dt.date, row_numbers: np.ndarray | None = None
) -> Validated:
    """Check every event row of one landing day.

    Good rows get typed columns (`server_timestamp_epoch_ms` int64, enums lower-cased, empty
    strings as nulls) and `event_day`. Rejected rows keep every original value as a string plus
    `row_number` (`row_numbers` of the file, default 1-based in frame order, header excluded)
    and `reason` (see REJECT_REASONS).
    """
    check_columns(list(raw.columns), EVENT_COLUMNS, "events")
    n = len(raw)
    session = _clean(raw["session_id_hash"])
    event_type = _clean(raw["event_type"]).str.lower()
    action = _clean(raw["product_action"]).str.lower()
    sku = _clean(raw["product_sku_hash"])
    url = _clean(raw["hashed_url"])
    ts_text = _clean(raw["server_timestamp_epoch_ms"])
    ts_ok = ts_text.str.fullmatch(TIMESTAMP_PATTERN).fillna(False).astype(bool)
    ts = pd.to_numeric(ts_text.where(ts_ok), errors="coerce").astype("Int64")
    lo, hi = day_bounds_ms(day)
    is_product = event_type == "event_product"

    checks = {
        "missing_session_id": session.isna(),
        "bad_event_type": ~event_type.isin(EVENT_TYPES).fillna(False).astype(bool),
        "bad_timestamp": ~ts_ok,
        "timestamp_outside_day": ((ts < lo) | (ts >= hi)).fillna(False).astype(bool),
        # product events need an action from the enum; pageviews carry none
        "bad_product_action": (
            (is_product & ~action.isin(PRODUCT_ACTIONS).fillna(False))
            | (~is_product & action.notna())
        )
        .fillna(False)
        .astype(bool),
        "missing_product_sku": (is_product & sku.isna()).fillna(False).astype(bool),
    }
    reason = np.full(n, None, dtype=object)
    for name in reversed(REJECT_REASONS):  # first reason in the list wins
        reason[checks[name].to_numpy(dtype=bool)] = name
    bad = pd.notna(reason)

    good = pd.DataFrame(
        {
            "session_id_hash": session,
            "event_type": event_type,
            "product_action": action,
            "product_sku_hash": sku,
            "server_timestamp_epoch_ms": ts,
            "hashed_url": url,
        }
    )[~bad].reset_index(drop=True)
    good["server_timestamp_epoch_ms"] = good["server_timestamp_epoch_ms"].astype("int64")
    good["event_day"] = day

    rejected = raw[bad].copy()
    rejected.insert(0, "row_number", _row_numbers(row_numbers, len(raw))[bad])
    rejected["reason"] = reason[bad]
    rejected["event_day"] = day
    return Validated(good=good, rejected=rejected.reset_index(drop=True))


def validate_products(
    raw: pd.DataFrame, day: dt.date, row_numbers: np.ndarray | None = None
) -> Validated:
    """Check the catalogue rows of one landing day. Category and price may be missing."""
    check_columns(list(raw.columns), PRODUCT_COLUMNS, "products")
    sku = _clean(raw["product_sku_hash"])
    bucket_text = _clean(raw["price_bucket"])
    bucket = pd.to_numeric(bucket_text, errors="coerce")
    bucket_ok = bucket_text.isna() | (bucket.isin(list(PRICE_BUCKETS)))
    checks = {
        "missing_product_sku": sku.isna().to_numpy(dtype=bool),
        "bad_price_bucket": (~bucket_ok).to_numpy(dtype=bool),
    }
    reason = np.full(len(raw), None, dtype=object)
    for name in reversed(PRODUCT_REJECT_REASONS):
        reason[checks[name]] = name
    bad = pd.notna(reason)
    good = pd.DataFrame(
        {
            "product_sku_hash": sku,
            "category_hash": _clean(raw["category_hash"]),
            "price_bucket": bucket.astype("Int64"),
            "description_vector": _clean(raw["description_vector"]),
            "image_vector": _clean(raw["image_vector"]),
        }
    )[~bad].reset_index(drop=True)
    good["snapshot_day"] = day
    rejected = raw[bad].copy()
    rejected.insert(0, "row_number", _row_numbers(row_numbers, len(raw))[bad])
    rejected["reason"] = reason[bad]
    rejected["snapshot_day"] = day
    return Validated(good=good, rejected=rejected.reset_index(drop=True))


def _clean_value(value: object) -> str | None:
    text = None if value is None else str(value).strip()
    return text or None


_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)


def check_event(row: Mapping[str, object], day: dt.date | None = None) -> tuple[dict, str | None]:
    """One event row (EVENT_COLUMNS; values as read, or ints for the timestamp) as
    `validate_events` types a good row, and the first REJECT_REASONS it fails (None: none).

    The row form of `validate_events`'s checks, for the few events of one request (the
    server), where building a frame costs about 20 ms; tests/test_contract.py holds both to the
    same answer on every kind of row. Without `day` (a served session has no landing day),
    LANDING_DAY_REASONS are not checked.
    """
    session = _clean_value(row.get("session_id_hash"))
    event_type = _clean_value(row.get("event_type"))
    event_type = event_type.lower() if event_type else None
    action = _clean_value(row.get("product_action"))
    action = action.lower() if action else None
    sku = _clean_value(row.get("product_sku_hash"))
    ts_text = _clean_value(row.get("server_timestamp_epoch_ms"))
    ts = int(ts_text) if ts_text and _TIMESTAMP.fullmatch(ts_text) else None
    is_product = event_type == "event_product"
    cleaned = {
        "session_id_hash": session,
        "event_type": event_type,
        "product_action": action,
        "product_sku_hash": sku,
        "server_timestamp_epoch_ms": ts,
        "hashed_url": _clean_value(row.get("hashed_url")),
    }
    outside = False
    if day is not None and ts is not None:
        lo, hi = day_bounds_ms(day)
        outside = not lo <= ts < hi
    failed = (  # in the order of REJECT_REASONS
        session is None,
        event_type not in EVENT_TYPES,
        ts is None,
        outside,
        (action not in PRODUCT_ACTIONS) if is_product else action is not None,
        is_product and sku is None,
    )
    return cleaned, next((r for r, bad in zip(REJECT_REASONS, failed, strict=True) if bad), None)
