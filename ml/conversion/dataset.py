"""Training sets from `conversion_examples`: a time split, and which prefixes become examples.

The split is by `session_day`, never random: a training window of days, then a validation day
(thresholds are chosen there), then a test day (what models are compared on). A visit lives on
one day, so all prefixes of a session fall on the same side of every boundary.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ml import contract
from ml.conversion.features import ordered_events

EXAMPLE_COLUMNS: tuple[str, ...] = (
    "session_key",
    "session_id",
    "session_day",
    "prefix_length",
    "event_type",
    "product_action",
    "product_sku",
    "event_at",
    "seconds_since_prev",
    "category",
    "category_top",
    "price_bucket",
    "will_purchase",
)
SESSION_GAP_MS = 30 * 60 * 1000  # dbt var session_gap_minutes


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    train_days: list[dt.date]
    validation_day: dt.date
    test_day: dt.date

    @property
    def window(self) -> dict[str, str]:
        """The training window as the registry records it."""
        return {
            "train_start": self.train_days[0].isoformat(),
            "train_end": self.train_days[-1].isoformat(),
            "validation_day": self.validation_day.isoformat(),
            "test_day": self.test_day.isoformat(),
        }


def session_days(frame: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(frame["session_day"]).dt.date


def latest_complete_day(frame: pd.DataFrame) -> dt.date:
    """The latest day with both buying and non-buying sessions: the default test day."""
    days = session_days(frame)
    labels = frame.groupby(days)["will_purchase"].agg(["min", "max"])
    usable = labels[(labels["min"] == 0) & (labels["max"] == 1)].index
    if not len(usable):
        raise ValueError("no day in conversion_examples has both buying and non-buying sessions")
    return max(usable)


def time_split(frame: pd.DataFrame, train_days: int, test_day: dt.date | None = None) -> Split:
    """Train on `train_days` days ending two days before `test_day`; validate on the day before.

    Raises ValueError when a part of the split has no rows.
    """
    if train_days < 1:
        raise ValueError("train_days must be at least 1")
    test_day = test_day or latest_complete_day(frame)
    validation_day = test_day - dt.timedelta(days=1)
    window = [validation_day - dt.timedelta(days=i) for i in range(train_days, 0, -1)]
    days = session_days(frame)
    parts = {
        "train": days.isin(window),
        "validation": days == validation_day,
        "test": days == test_day,
    }
    for name, mask in parts.items():
        if not mask.any():
            raise ValueError(
                f"the {name} part of the split is empty (train {window[0]}..{window[-1]}, "
                f"validation {validation_day}, test {test_day}); days present: "
                f"{sorted(set(days))[:1]}..{sorted(set(days))[-1:]}"
            )
    return Split(
        train=ordered_events(frame[parts["train"]]),
        validation=ordered_events(frame[parts["validation"]]),
        test=ordered_events(frame[parts["test"]]),
        train_days=window,
        validation_day=validation_day,
        test_day=test_day,
    )


def select_prefixes(frame: pd.DataFrame, max_per_session: int | None, seed: int) -> np.ndarray:
    """Which prefixes of an ordered frame become examples: all, or up to `max_per_session`.

    Capping keeps long sessions from dominating training; the choice is a seeded hash of
    (session, prefix length), so it is the same on every run and independent of row order.
    """
    if max_per_session is None:
        return np.ones(len(frame), dtype=bool)
    key = pd.DataFrame(
        {"s": frame["session_key"].astype(str), "k": frame["prefix_length"].astype("int64")}
    )
    hashed = pd.util.hash_pandas_object(key, index=False, hash_key=f"skiff{seed:011d}"[:16])
    rank = (
        pd.Series(hashed.to_numpy()).groupby(frame["session_key"].to_numpy()).rank(method="first")
    )
    return (rank <= max_per_session).to_numpy()


def labels(frame: pd.DataFrame) -> np.ndarray:
    return frame["will_purchase"].astype(bool).to_numpy(dtype=np.int64)


def examples_from_events(events: pd.DataFrame, products: pd.DataFrame) -> pd.DataFrame:
    """The `conversion_examples` mart computed in pandas from validated landing rows.

    For benchmarks and unit tests that skip the warehouse; the dbt model is the source of
    truth, and tests/test_conversion_assets.py checks the two agree. `events` and `products`
    are `ml.contract.validate_events` / `validate_products` output (`good`), any days.
    """
    e = pd.DataFrame(
        {
            "session_id": events["session_id_hash"].astype(object),
            "event_type": events["event_type"].astype(object),
            "product_action": events["product_action"].astype(object),
            "product_sku": events["product_sku_hash"].astype(object),
            "event_ms": events["server_timestamp_epoch_ms"].astype("int64"),
            "url": events["hashed_url"].astype(object),
            "event_day": pd.to_datetime(events["event_day"]).dt.date,
        }
    )
    e.loc[e["event_type"] != "event_product", "product_action"] = None
    e = e.drop_duplicates().reset_index(drop=True)
    details = e.loc[
        (e["event_type"] == "event_product") & (e["product_action"] == "detail"),
        ["session_id", "event_ms", "url"],
    ].drop_duplicates()
    twin = (
        e.reset_index()
        .merge(details, on=["session_id", "event_ms", "url"])
        .loc[lambda f: f["event_type"] == "pageview", "index"]
    )
    e = e.drop(index=twin)
    e = e.sort_values(
        [
            "session_id",
            "event_day",
            "event_ms",
            "event_type",
            "product_action",
            "product_sku",
            "url",
        ],
        na_position="first",
        kind="stable",
    ).reset_index(drop=True)
    same = (e["session_id"] == e["session_id"].shift()) & (e["event_day"] == e["event_day"].shift())
    new_visit = ~same | (e["event_ms"] - e["event_ms"].shift() > SESSION_GAP_MS)
    visit = new_visit.astype(int).groupby([e["session_id"], e["event_day"]]).cumsum()
    day_key = pd.to_datetime(e["event_day"]).dt.strftime("%Y%m%d")
    e["session_key"] = e["session_id"] + "-" + day_key + "-" + visit.astype(str)
    e["prefix_length"] = e.groupby("session_key").cumcount() + 1
    gap = e["event_ms"].diff() / 1000
    e["seconds_since_prev"] = gap.where(~new_visit)

    catalogue = products.sort_values("snapshot_day").drop_duplicates(
        "product_sku_hash", keep="last"
    )
    catalogue = pd.DataFrame(
        {
            "product_sku": catalogue["product_sku_hash"].astype(object),
            "category": catalogue["category_hash"].astype(object),
            "price_bucket": catalogue["price_bucket"].astype("Int64"),
        }
    )
    catalogue["category_top"] = catalogue["category"].str.split("/", n=1).str[0]
    e = e.merge(catalogue, on="product_sku", how="left")

    first_purchase = e[e["product_action"] == "purchase"].groupby("session_key")["event_ms"].min()
    cut = e["session_key"].map(first_purchase)
    e["will_purchase"] = cut.notna()
    e = e[cut.isna() | (e["event_ms"] < cut)]
    e = e.assign(
        session_day=e["event_day"],
        event_at=pd.to_datetime(e["event_ms"], unit="ms"),
    )
    return ordered_events(e[list(EXAMPLE_COLUMNS)])


def examples_from_landing(landing: Path, days: list[dt.date]) -> pd.DataFrame:
    """`examples_from_events` over landing folders (each row checked by `ml.contract`)."""
    events, products = [], []
    for day in days:
        folder = Path(landing) / day.isoformat()
        raw = contract.read_landing_csv(folder / contract.EVENTS_FILE, contract.EVENT_COLUMNS)
        events.append(contract.validate_events(raw, day).good)
        raw = contract.read_landing_csv(folder / contract.PRODUCTS_FILE, contract.PRODUCT_COLUMNS)
        products.append(contract.validate_products(raw, day).good)
    return examples_from_events(pd.concat(events), pd.concat(products))
