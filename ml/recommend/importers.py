"""Public session data -> landing days in the raw contract (ml.contract), and -> sessions.

Formats:

- `coveo`: the Coveo SIGIR eCom 2021 `browsing_train.csv` (already the contract's columns),
  with `sku_to_content.csv` beside it (or `products=`) as the catalogue of every day.
- `sessions`: a generic file with a session id, an item id and a timestamp, separated by tabs,
  commas or semicolons (sniffed from the header). Header names as in session-rec and GRU4Rec
  data (`SessionId ItemId Time`) and common variants (`session_id`, `item_id`, `timestamp`,
  ...). Time is epoch seconds (fractions allowed); values above 1e11 are taken as epoch
  milliseconds; ISO-8601 date-times are accepted too.
- `diginetica`: CIKM Cup 2016 item views, `sessionId;userId;itemId;timeframe;eventdate`.
  `timeframe` is milliseconds since the session's start and `eventdate` its day, but the day's
  clock time is not published. The importer places each session at a deterministic start
  inside its day, `day_start + crc32(session id) mod (1 day - session span)` (spreading
  sessions over the day), then adds `timeframe`: order within a session and the day are exact,
  the time of day is made up. Views are ordered inside a session by `timeframe`.

Views become `event_product`/`detail` events with `hashed_url = "item:<id>"`; `products.csv`
lists the day's items (category and price empty) unless a catalogue is given.

Nothing is lost: every data line is either imported or reported with its 1-based line number
in the source file (the header is line 1) and a reason; `rows_read = rows_imported +
rows_rejected`. Rows are parsed, then each day is checked with `ml.contract.validate_events`,
so what lands passes ingestion with zero rejects.
"""

from __future__ import annotations

import csv
import datetime as dt
import shutil
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ml import contract

FORMATS = ("coveo", "sessions", "diginetica")
MAX_REPORTED = 1000  # bad rows kept with their line; beyond that only counted per reason

SESSION_NAMES = ("sessionid", "session_id", "session", "sessionid_hash", "session_id_hash")
ITEM_NAMES = ("itemid", "item_id", "item", "itemid_hash", "product_sku_hash", "sku", "product_id")
TIME_NAMES = (
    "time",
    "timestamp",
    "ts",
    "time_stamp",
    "eventtime",
    "event_time",
    "server_timestamp_epoch_ms",
    "timeframe",
)


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str
    text: str


@dataclass
class ImportReport:
    path: str
    fmt: str
    rows_read: int = 0
    rows_imported: int = 0
    rows_rejected: int = 0
    sessions: int = 0
    items: int = 0
    days: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    bad_rows: list[BadRow] = field(default_factory=list)  # the first MAX_REPORTED

    def reject(self, line: int, reason: str, text: str) -> None:
        self.rows_rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if len(self.bad_rows) < MAX_REPORTED:
            self.bad_rows.append(BadRow(line, reason, text[:200]))

    @property
    def reconciles(self) -> bool:
        return self.rows_read == self.rows_imported + self.rows_rejected

    def summary(self) -> str:
        lines = [
            f"{self.fmt} {self.path}: read {self.rows_read:,} rows, imported "
            f"{self.rows_imported:,}, rejected {self.rows_rejected:,}; {self.sessions:,} "
            f"sessions, {self.items:,} items, {len(self.days)} days"
            + (f" ({self.days[0]} .. {self.days[-1]})" if self.days else "")
        ]
        lines += [f"  {reason}: {n:,}" for reason, n in sorted(self.reasons.items())]
        lines += [f"  line {b.line}: {b.reason}: {b.text}" for b in self.bad_rows[:20]]
        return "\n".join(lines)


# --- parsing: every format becomes one frame of events with their source line -----------------


def _sniff(header: str) -> str:
    for sep in ("\t", ";", ","):
        if sep in header:
            return sep
    return ","


def _rows(path: Path, sep: str | None = None) -> Iterator[tuple[int, list[str], str]]:
    """(line number, fields, raw text) of every line after the header."""
    with open(path, newline="", encoding="utf-8") as handle:
        first = handle.readline()
        sep = sep or _sniff(first)
        yield 1, next(csv.reader([first], delimiter=sep)), first
        for number, line in enumerate(handle, start=2):
            if not line.strip():
                continue
            yield number, next(csv.reader([line], delimiter=sep)), line.rstrip("\r\n")


def _column(header: list[str], names: Sequence[str], what: str, path: Path) -> int:
    normal = [h.strip().lower().replace(" ", "_") for h in header]
    for name in names:
        if name in normal:
            return normal.index(name)
    raise contract.SchemaError(
        f"{path}: no {what} column; header is {header}, expected one of {list(names)}"
    )


def _epoch_ms(text: str) -> int | None:
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        return int(stamp.timestamp() * 1000)
    if not np.isfinite(value) or value < 0:
        return None
    return round(value if value > 1e11 else value * 1000)


def _parse_sessions(path: Path, report: ImportReport) -> pd.DataFrame:
    rows = _rows(path)
    _, header, _ = next(rows)
    s_col = _column(header, SESSION_NAMES, "session id", path)
    i_col = _column(header, ITEM_NAMES, "item id", path)
    t_col = _column(header, TIME_NAMES, "timestamp", path)
    width = len(header)
    lines, sessions, items, stamps = [], [], [], []
    for number, fields, text in rows:
        report.rows_read += 1
        if len(fields) != width:
            report.reject(number, f"expected {width} fields, got {len(fields)}", text)
            continue
        session, item = fields[s_col].strip(), fields[i_col].strip()
        stamp = _epoch_ms(fields[t_col])
        if not session:
            report.reject(number, "missing_session_id", text)
        elif not item:
            report.reject(number, "missing_item_id", text)
        elif stamp is None:
            report.reject(number, "bad_timestamp", text)
        else:
            lines.append(number)
            sessions.append(session)
            items.append(item)
            stamps.append(stamp)
    return _views(lines, sessions, items, stamps)


def _parse_diginetica(path: Path, report: ImportReport) -> pd.DataFrame:
    rows = _rows(path, ";")
    _, header, _ = next(rows)
    normal = [h.strip().lower().replace("_", "") for h in header]
    wanted = ("sessionid", "itemid", "timeframe", "eventdate")
    missing = [w for w in wanted if w not in normal]
    if missing:
        raise contract.SchemaError(f"{path}: missing column(s) {missing}; header is {header}")
    s_col, i_col, f_col, d_col = (normal.index(w) for w in wanted)
    lines, sessions, items, frames, days = [], [], [], [], []
    for number, fields, text in rows:
        report.rows_read += 1
        if len(fields) != len(header):
            report.reject(number, f"expected {len(header)} fields, got {len(fields)}", text)
            continue
        session, item = fields[s_col].strip(), fields[i_col].strip()
        frame = fields[f_col].strip()
        try:
            day = dt.date.fromisoformat(fields[d_col].strip())
        except ValueError:
            day = None
        if not session:
            report.reject(number, "missing_session_id", text)
        elif not item:
            report.reject(number, "missing_item_id", text)
        elif not frame.isdigit() or int(frame) >= contract.MS_PER_DAY:
            report.reject(number, "bad_timeframe", text)
        elif day is None:
            report.reject(number, "bad_eventdate", text)
        else:
            lines.append(number)
            sessions.append(session)
            items.append(item)
            frames.append(int(frame))
            days.append(contract.day_bounds_ms(day)[0])
    frame_ms = np.asarray(frames, dtype=np.int64)
    day_ms = np.asarray(days, dtype=np.int64)
    keys = pd.DataFrame({"s": sessions, "d": day_ms, "f": frame_ms})
    span = keys.groupby(["s", "d"])["f"].transform("max").to_numpy() + 1
    seed = np.fromiter((zlib.crc32(s.encode()) for s in sessions), np.int64, len(sessions))
    start = day_ms + seed % np.maximum(contract.MS_PER_DAY - span, 1)
    return _views(lines, sessions, items, list(start + frame_ms))


def _views(lines, sessions, items, stamps) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "line": np.asarray(lines, dtype=np.int64),
            "session_id_hash": pd.Series(sessions, dtype=object),
            "event_type": "event_product",
            "product_action": "detail",
            "product_sku_hash": pd.Series(items, dtype=object),
            "server_timestamp_epoch_ms": np.asarray(stamps, dtype=np.int64),
            "hashed_url": ["item:" + i for i in items],
        }
    )


def _parse_coveo(path: Path, report: ImportReport) -> pd.DataFrame:
    rows = _rows(path, ",")
    _, header, _ = next(rows)
    contract.check_columns([h.strip() for h in header], contract.EVENT_COLUMNS, str(path))
    position = [[h.strip() for h in header].index(c) for c in contract.EVENT_COLUMNS]
    ts_col = position[contract.EVENT_COLUMNS.index("server_timestamp_epoch_ms")]
    lines, values, stamps = [], [], []
    for number, fields, text in rows:
        report.rows_read += 1
        if len(fields) != len(header):
            report.reject(number, f"expected {len(header)} fields, got {len(fields)}", text)
            continue
        stamp = fields[ts_col].strip()
        if not stamp.isdigit():
            report.reject(number, "bad_timestamp", text)
            continue
        lines.append(number)
        values.append([fields[p] for p in position])
        stamps.append(int(stamp))
    frame = pd.DataFrame(values, columns=list(contract.EVENT_COLUMNS), dtype=object)
    frame.insert(0, "line", np.asarray(lines, dtype=np.int64))
    frame["server_timestamp_epoch_ms"] = np.asarray(stamps, dtype=np.int64)
    return frame


_PARSERS = {"coveo": _parse_coveo, "sessions": _parse_sessions, "diginetica": _parse_diginetica}


def _parse(path: Path, fmt: str, report: ImportReport) -> pd.DataFrame:
    if fmt not in _PARSERS:
        raise ValueError(f"unknown format {fmt!r}; one of {list(FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    events = _parse_sessions(path, report) if fmt == "sessions" else _PARSERS[fmt](path, report)
    events["day"] = pd.to_datetime(events["server_timestamp_epoch_ms"], unit="ms").dt.date
    return events


def _validated_days(events: pd.DataFrame, report: ImportReport) -> dict[dt.date, pd.DataFrame]:
    """Per day, the rows the contract accepts; the rest are reported with their lines."""
    out = {}
    for day, rows in events.groupby("day", sort=True):
        raw = rows[list(contract.EVENT_COLUMNS)].astype(str).reset_index(drop=True)
        raw = raw.replace({"None": "", "nan": ""})
        checked = contract.validate_events(raw, day)
        lines = rows["line"].to_numpy()
        for _, bad in checked.rejected.iterrows():
            report.reject(
                int(lines[bad["row_number"] - 1]),
                bad["reason"],
                ",".join(str(bad[c]) for c in contract.EVENT_COLUMNS),
            )
        bad_index = checked.rejected["row_number"].to_numpy() - 1
        good = np.ones(len(rows), dtype=bool)
        good[bad_index] = False
        out[day] = rows[good]
    return out


# --- the two entry points ---------------------------------------------------------------------


def import_sessions(
    path: Path | str, fmt: str, landing_dir: Path | str, products: Path | str | None = None
) -> ImportReport:
    """Write landing day folders (replacing those days' files) from a public data file."""
    path, landing_dir = Path(path), Path(landing_dir)
    report = ImportReport(path=str(path), fmt=fmt)
    events = _parse(path, fmt, report)
    days = _validated_days(events, report)
    catalogue = _catalogue(path, fmt, products)
    for day, rows in days.items():
        folder = landing_dir / day.isoformat()
        tmp = landing_dir / f".{day.isoformat()}.importing"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ordered = rows.sort_values(["server_timestamp_epoch_ms", "line"])
        ordered[list(contract.EVENT_COLUMNS)].to_csv(tmp / contract.EVENTS_FILE, index=False)
        if catalogue is None:
            skus = pd.unique(ordered["product_sku_hash"].dropna())
            day_products = pd.DataFrame(
                {c: (skus if c == "product_sku_hash" else "") for c in contract.PRODUCT_COLUMNS}
            )
        else:
            day_products = catalogue
        day_products.to_csv(tmp / contract.PRODUCTS_FILE, index=False)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)  # a day appears whole or not at all
        report.rows_imported += len(rows)
    kept = pd.concat(days.values()) if days else events.iloc[:0]
    report.days = [d.isoformat() for d in days]
    report.sessions = int(kept["session_id_hash"].nunique())
    report.items = int(kept["product_sku_hash"].nunique())
    return report


def _catalogue(path: Path, fmt: str, products: Path | str | None) -> pd.DataFrame | None:
    if products is None and fmt == "coveo" and (path.parent / "sku_to_content.csv").exists():
        products = path.parent / "sku_to_content.csv"
    if products is None:
        return None
    frame = pd.read_csv(products, dtype=str, keep_default_na=False)
    for column in contract.PRODUCT_COLUMNS:
        if column not in frame:
            frame[column] = ""
    return frame[list(contract.PRODUCT_COLUMNS)]


@dataclass(frozen=True)
class SessionData:
    sessions: list[list[str]]
    days: list[str]  # the UTC day each session starts on
    report: ImportReport


def load_sessions(path: Path | str, fmt: str) -> SessionData:
    """Product-view sessions of a file, oldest session first, views in time order."""
    path = Path(path)
    report = ImportReport(path=str(path), fmt=fmt)
    events = _parse(path, fmt, report)
    days = _validated_days(events, report)
    views = pd.concat(days.values()) if days else events.iloc[:0]
    views = views[(views["event_type"] == "event_product") & (views["product_action"] == "detail")]
    report.rows_imported = report.rows_read - report.rows_rejected
    sessions, starts = _group(views)
    report.sessions, report.items = len(sessions), int(views["product_sku_hash"].nunique())
    report.days = sorted({d.isoformat() for d in days})
    return SessionData(sessions, starts, report)


def read_sessions(path: Path | str, fmt: str) -> list[list[str]]:
    """What `skiff evaluate-recs` trains and tests on; see `load_sessions` for the report."""
    return load_sessions(path, fmt).sessions


def _group(views: pd.DataFrame) -> tuple[list[list[str]], list[str]]:
    ordered = views.sort_values(["server_timestamp_epoch_ms", "line"], kind="stable")
    groups: dict[str, list[str]] = defaultdict(list)
    first: dict[str, int] = {}
    for session, item, stamp in zip(
        ordered["session_id_hash"],
        ordered["product_sku_hash"],
        ordered["server_timestamp_epoch_ms"],
        strict=True,
    ):
        groups[session].append(item)
        first.setdefault(session, int(stamp))
    order = sorted(groups, key=lambda s: (first[s], s))
    days = [dt.datetime.fromtimestamp(first[s] / 1000, dt.UTC).date().isoformat() for s in order]
    return [groups[s] for s in order], days


def landing_sessions(landing: Path, days: Sequence[dt.date]) -> dict[dt.date, list[list[str]]]:
    """Sessions of landing days straight from the contract files, without the warehouse.

    For benchmarks and tests on generated data: rows the contract rejects are dropped, exact
    duplicates removed, views ordered by time (the generator keeps a session inside its day
    and never leaves a 30-minute gap, so a session id is one visit, as dbt would cut it).
    """
    out = {}
    for day in days:
        raw = contract.read_landing_csv(
            landing / day.isoformat() / contract.EVENTS_FILE, contract.EVENT_COLUMNS
        )
        good = contract.validate_events(raw, day).good.drop_duplicates()
        views = good[(good["event_type"] == "event_product") & (good["product_action"] == "detail")]
        views = views.assign(line=np.arange(len(views)))
        out[day] = _group(views.astype({"session_id_hash": object, "product_sku_hash": object}))[0]
    return out
