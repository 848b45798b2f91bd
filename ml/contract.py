"""The raw-data contract: what a landing day looks like and how each row is checked.

Landing files follow the public Coveo SIGIR eCom 2021 browsing schema, so real data of that
shape drops in. One folder per UTC day::

    <landing>/2026-01-05/browsing_events.csv   the day's events, rows in any order
    <landing>/2026-01-05/products.csv          the catalogue as known that day

Pure pandas: used by the generator, the importers, the ingestion asset and the server alike.
"""

from __future__ import annotations

import csv
import datetime as dt
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
    """Read a landing CSV with every value as a string (None where empty), columns checked."""
    if not path.exists():
        raise FileNotFoundError(f"landing file not found: {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), None)
    if header is None:  # an empty day may come as a zero-byte file
        return pd.DataFrame({column: pd.Series(dtype=object) for column in expected})
    check_columns(header, expected, str(path))
    table = pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()),
            null_values=[""],
            strings_can_be_null=True,
        ),
    )
    return table.to_pandas(types_mapper={pa.string(): STRING}.get)[list(expected)]


@dataclass(frozen=True)
class Validated:
    """Good rows typed for the warehouse; bad rows as read, with a `reason`."""

    good: pd.DataFrame
    rejected: pd.DataFrame

    @property
    def rows_read(self) -> int:
        return len(self.good) + len(self.rejected)


def _clean(series: pd.Series) -> pd.Series:
    """Strip whitespace; empty strings become missing."""
    stripped = series.astype(STRING).str.strip()
    return stripped.mask(stripped == "")


def validate_events(raw: pd.DataFrame, day: dt.date) -> Validated:
    """Check every event row of one landing day.

    Good rows get typed columns (`server_timestamp_epoch_ms` int64, enums lower-cased, empty
    strings as nulls) and `event_day`. Rejected rows keep every original value as a string plus
    `row_number` (1-based, in file order, header excluded) and `reason` (see REJECT_REASONS).
    """
    check_columns(list(raw.columns), EVENT_COLUMNS, "events")
    n = len(raw)
    session = _clean(raw["session_id_hash"])
    event_type = _clean(raw["event_type"]).str.lower()
    action = _clean(raw["product_action"]).str.lower()
    sku = _clean(raw["product_sku_hash"])
    url = _clean(raw["hashed_url"])
    ts_text = _clean(raw["server_timestamp_epoch_ms"])
    ts_ok = ts_text.str.fullmatch(r"[0-9]{1,15}").fillna(False).astype(bool)
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
    rejected.insert(0, "row_number", np.flatnonzero(bad) + 1)
    rejected["reason"] = reason[bad]
    rejected["event_day"] = day
    return Validated(good=good, rejected=rejected.reset_index(drop=True))


def validate_products(raw: pd.DataFrame, day: dt.date) -> Validated:
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
    rejected.insert(0, "row_number", np.flatnonzero(bad) + 1)
    rejected["reason"] = reason[bad]
    rejected["snapshot_day"] = day
    return Validated(good=good, rejected=rejected.reset_index(drop=True))
