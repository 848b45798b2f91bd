"""Session-prefix features: one definition for training (batch) and serving (one prefix).

The server receives the events of a session so far, in order, each a mapping with
`event_type`, `product_action`, `product_sku`, `event_at` (datetime, pandas Timestamp or epoch
milliseconds), `category` (`<top>/<leaf>` or None) and `price_bucket` (1-10 or None).
`prefix_features` turns that list into one feature row. `batch_features` builds the very same
rows for every prefix of many sessions at once from a `conversion_examples`-shaped frame;
`tests/test_conversion_ml.py` proves the two agree. Only differences of event times are used,
so time zones do not matter.

A model scores a `Batch`: the feature rows of some prefixes plus the ordered events they end
at, so tabular and sequence models share one input.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

ACTIONS: tuple[str, ...] = ("page", "detail", "add", "remove", "click")
EVENT_COLUMNS: tuple[str, ...] = (
    "event_type",
    "product_action",
    "product_sku",
    "event_at",
    "category",
    "price_bucket",
)
_A = len(ACTIONS)
# Model inputs: exact for counts below 2**24, seven significant digits for times and prices;
# half the memory of float64 (5M training prefixes: 1 GB instead of 2).
FEATURE_DTYPE = np.float32
_ACTION_INDEX = {name: i for i, name in enumerate(ACTIONS)}

FEATURES: tuple[str, ...] = (
    "prefix_length",
    "seconds_since_start",
    *(f"n_{a}" for a in ACTIONS),
    "net_cart",
    "distinct_products",
    "distinct_categories",
    "distinct_top_categories",
    "n_priced",
    "price_mean",
    "price_min",
    "price_max",
    "add_price_mean",
    "gap_mean",
    "gap_max",
    "gap_last",
    *(f"last_{a}" for a in ACTIONS),
    *(f"bigram_{a}_{b}" for a in ACTIONS for b in ACTIONS),
)


def action_of(event_type: Any, product_action: Any) -> str:
    """The event's symbol: `page` for a pageview, else its product action."""
    if event_type == "pageview" or product_action is None or _missing(product_action):
        return "page"
    if product_action not in _ACTION_INDEX:
        raise ValueError(
            f"product_action {product_action!r} cannot be in a prefix (purchase or unknown)"
        )
    return str(product_action)


def top_category(category: Any) -> str | None:
    return None if _missing(category) else str(category).split("/", 1)[0]


def to_ms(value: Any) -> int:
    """Epoch milliseconds from epoch ms, a datetime or a Timestamp (naive = UTC)."""
    if isinstance(value, int | np.integer):
        return int(value)
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert(dt.UTC).tz_localize(None)
    return int(stamp.value // 1_000_000)


def _nul_free(values: pd.Series) -> pd.Series:
    """`values` with NUL characters escaped (and the escape character itself), so distinct
    texts stay distinct: pandas hashes an object column's strings up to their first NUL, so
    `duplicated` and `factorize` take "" and "\\x00" (or "a\\x00b" and "a\\x00c") for one value.
    Unchanged, and no copy, when no value holds a NUL."""
    if not values.str.contains("\x00", regex=False, na=False).any():
        return values
    return values.map(
        lambda v: str(v).replace("\\", "\\\\").replace("\x00", "\\0"), na_action="ignore"
    )


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def before_first_purchase(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The events strictly earlier in time than the first purchase (all when none)."""
    purchases = [to_ms(e["event_at"]) for e in events if e.get("product_action") == "purchase"]
    if not purchases:
        return list(events)
    first = min(purchases)
    return [e for e in events if to_ms(e["event_at"]) < first]


def prefix_features(events: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The feature row of one prefix: its events in session order (serving path)."""
    if not events:
        raise ValueError("a prefix has at least one event")
    counts = [0] * _A
    bigrams = [0] * (_A * _A)
    products: set[str] = set()
    categories: set[str] = set()
    tops: set[str] = set()
    priced, price_sum, price_min, price_max = 0, 0.0, math.inf, -math.inf
    added, add_sum = 0, 0.0
    gap_sum, gap_max, gap_last = 0.0, 0.0, 0.0
    first_ms = previous_ms = to_ms(events[0]["event_at"])
    previous_action = -1
    for position, event in enumerate(events):
        action = _ACTION_INDEX[action_of(event.get("event_type"), event.get("product_action"))]
        counts[action] += 1
        if previous_action >= 0:
            bigrams[previous_action * _A + action] += 1
        previous_action = action
        ms = to_ms(event["event_at"])
        if position:
            gap = (ms - previous_ms) / 1000
            gap_sum += gap
            gap_max = max(gap_max, gap)
            gap_last = gap
        previous_ms = ms
        sku, category = event.get("product_sku"), event.get("category")
        if not _missing(sku):
            products.add(str(sku))
        if not _missing(category):
            categories.add(str(category))
            tops.add(top_category(category))
        price = event.get("price_bucket")
        if not _missing(price):
            priced += 1
            price_sum += float(price)
            price_min, price_max = min(price_min, float(price)), max(price_max, float(price))
            if ACTIONS[action] == "add":
                added += 1
                add_sum += float(price)
    k = len(events)
    row = [
        k,
        (previous_ms - first_ms) / 1000,
        *counts,
        counts[_ACTION_INDEX["add"]] - counts[_ACTION_INDEX["remove"]],
        len(products),
        len(categories),
        len(tops),
        priced,
        price_sum / priced if priced else 0.0,
        price_min if priced else 0.0,
        price_max if priced else 0.0,
        add_sum / added if added else 0.0,
        gap_sum / (k - 1) if k > 1 else 0.0,
        gap_max,
        gap_last,
        *(1.0 if i == previous_action else 0.0 for i in range(_A)),
        *bigrams,
    ]
    return dict(zip(FEATURES, (float(v) for v in row), strict=True))


def action_codes(event_type: pd.Series, product_action: pd.Series) -> np.ndarray:
    """Index into ACTIONS per event, vectorized `action_of`."""
    product = product_action.astype(object).where(
        event_type.astype(object).ne("pageview") & product_action.notna(), "page"
    )
    codes = product.map(_ACTION_INDEX)
    if codes.isna().any():
        bad = sorted(set(product[codes.isna()].astype(str)))
        raise ValueError(f"product_action {bad} cannot be in a prefix (purchase or unknown)")
    return codes.to_numpy(dtype=np.int64)


def column_ms(values: pd.Series) -> np.ndarray:
    """Epoch milliseconds of a column of times, vectorized `to_ms`."""
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(dtype=np.int64)
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(values):
        return values.to_numpy().astype("datetime64[ms]").astype(np.int64)
    return np.fromiter((to_ms(v) for v in values), dtype=np.int64, count=len(values))


def ordered_events(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by session and position, the order both paths read prefixes in (a frame
    already in that order with a fresh index is returned as it is: sorting copies every column,
    a few GB at millions of prefixes)."""
    keys = frame["session_key"].to_numpy()
    positions = frame["prefix_length"].to_numpy()
    same = keys[1:] == keys[:-1]
    if (
        isinstance(frame.index, pd.RangeIndex)
        and frame.index.start == 0
        and frame.index.step == 1
        and bool(np.all(keys[1:] >= keys[:-1]))
        and bool(np.all(positions[1:][same] > positions[:-1][same]))
    ):
        return frame
    return frame.sort_values(["session_key", "prefix_length"], kind="stable").reset_index(drop=True)


def batch_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Features of every prefix of a `conversion_examples`-shaped frame (ordered_events order),
    as FEATURE_DTYPE.

    Row i is the prefix that ends at event row i of its session: the same numbers as
    `prefix_features` on that session's rows 1..i, computed with grouped cumulative sums. The
    rows are written into one preallocated array, a column at a time, so the peak memory is
    the result plus a few columns.
    """
    n = len(frame)
    out = np.zeros((n, len(FEATURES)), dtype=FEATURE_DTYPE)
    if n == 0:
        return pd.DataFrame(out, columns=list(FEATURES))
    column = {name: i for i, name in enumerate(FEATURES)}

    def put(name: str, values: np.ndarray) -> None:
        out[:, column[name]] = values

    session = pd.factorize(frame["session_key"])[0]
    action = action_codes(frame["event_type"], frame["product_action"])
    ms = column_ms(frame["event_at"])
    first_row = np.r_[True, session[1:] != session[:-1]]
    start = np.maximum.accumulate(np.where(first_row, np.arange(n), 0))
    k = np.arange(n) - start + 1

    def cumsum(values: np.ndarray) -> np.ndarray:
        """Grouped cumulative sum of integer-valued values (exact: totals stay below 2**53)."""
        total = np.cumsum(values, dtype=np.float64)
        return total - (total[start] - values[start])

    counts = {}
    for i, a in enumerate(ACTIONS):
        is_a = action == i
        counts[a] = cumsum(is_a)
        put(f"n_{a}", counts[a])
        put(f"last_{a}", is_a)
    previous = np.where(first_row, -1, np.r_[-1, action[:-1]])
    pair = np.where(previous >= 0, previous * _A + action, -1)
    for i, a in enumerate(ACTIONS):
        for j, b in enumerate(ACTIONS):
            put(f"bigram_{a}_{b}", cumsum(pair == i * _A + j))

    gap = np.where(first_row, 0.0, np.r_[0, np.diff(ms)] / 1000)
    gap_sum = pd.Series(gap).groupby(session).cumsum().to_numpy()
    gap_max = pd.Series(gap).groupby(session).cummax().to_numpy()

    def first_seen(values: pd.Series) -> np.ndarray:
        present = values.notna().to_numpy()
        distinct = _nul_free(values).to_numpy()
        new = ~pd.DataFrame({"s": session, "v": distinct}).duplicated().to_numpy()
        return cumsum(present & new)

    category = frame["category"].astype(object).where(frame["category"].notna(), None)
    tops = category.map(top_category, na_action="ignore")
    price = pd.to_numeric(frame["price_bucket"], errors="coerce").to_numpy(dtype=float)
    has_price = ~np.isnan(price)
    price0 = np.where(has_price, price, 0.0)
    is_add = action == _ACTION_INDEX["add"]
    priced = cumsum(has_price)
    price_sum = cumsum(price0)
    added = cumsum(has_price & is_add)
    add_sum = cumsum(np.where(is_add, price0, 0.0))
    price_max = pd.Series(np.where(has_price, price, -np.inf)).groupby(session).cummax()
    price_min = pd.Series(np.where(has_price, price, np.inf)).groupby(session).cummin()

    def ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        return np.divide(top, bottom, out=np.zeros(n), where=bottom > 0)

    put("prefix_length", k)
    put("seconds_since_start", (ms - ms[start]) / 1000)
    put("net_cart", counts["add"] - counts["remove"])
    put("distinct_products", first_seen(frame["product_sku"]))
    put("distinct_categories", first_seen(category))
    put("distinct_top_categories", first_seen(tops))
    put("n_priced", priced)
    put("price_mean", ratio(price_sum, priced))
    put("price_min", np.where(priced > 0, price_min.to_numpy(), 0.0))
    put("price_max", np.where(priced > 0, price_max.to_numpy(), 0.0))
    put("add_price_mean", ratio(add_sum, added))
    put("gap_mean", ratio(gap_sum, (k - 1).astype(float)))
    put("gap_max", gap_max)
    put("gap_last", gap)
    return pd.DataFrame(out, columns=list(FEATURES), copy=False)


@dataclass(frozen=True)
class Batch:
    """Prefixes to score: feature rows, and where each prefix ends in the ordered events.

    `events` holds whole sessions (ordered_events order); prefix i is rows
    `starts[i]..ends[i]` of it. Tabular models read `features`, sequence models `events`.
    """

    features: pd.DataFrame
    events: pd.DataFrame
    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.features)

    def take(self, mask: np.ndarray) -> Batch:
        """The prefixes where `mask` is true (the events stay: sessions are shared)."""
        return Batch(
            features=self.features[mask].reset_index(drop=True),
            events=self.events,
            starts=self.starts[mask],
            ends=self.ends[mask],
        )


def batch_from_frame(frame: pd.DataFrame) -> Batch:
    """Every prefix of every session in a `conversion_examples`-shaped frame."""
    events = ordered_events(frame)
    n = len(events)
    codes = pd.factorize(events["session_key"])[0]
    first_row = np.r_[True, codes[1:] != codes[:-1]] if n else np.zeros(0, dtype=bool)
    starts = np.maximum.accumulate(np.where(first_row, np.arange(n), 0)) if n else np.zeros(0)
    return Batch(batch_features(events), events, starts.astype(np.int64), np.arange(n))


def batch_from_events(events: Sequence[Mapping[str, Any]]) -> Batch:
    """One prefix as the server receives it (events in session order, no purchase)."""
    frame = pd.DataFrame([{c: e.get(c) for c in EVENT_COLUMNS} for e in events])
    frame["event_at"] = [to_ms(e["event_at"]) for e in events]
    frame["session_key"] = "serving"
    frame["prefix_length"] = np.arange(1, len(events) + 1)
    features = pd.DataFrame([prefix_features(events)], columns=list(FEATURES))
    return Batch(features.astype(FEATURE_DTYPE), frame, np.array([0]), np.array([len(events) - 1]))
