"""The `conversion_examples` mart computed in pandas straight from landing files.

For benchmarks at volumes where a dbt run would measure dbt, not the models
(bench/conversion.py, bench/monitoring.py), and for unit tests that skip the warehouse. The dbt
models are the source of truth: tests/test_conversion_assets.py checks that this copy gives the
mart row for row. The session gap is read from the dbt project, so it is stated once.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from pathlib import Path

import pandas as pd
import yaml

from ml import contract
from ml.conversion.features import ordered_events

DBT_PROJECT = Path(__file__).resolve().parents[1] / "dbt_project" / "dbt_project.yml"
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


@cache
def session_gap_ms() -> int:
    """dbt's `session_gap_minutes` var, in milliseconds."""
    variables = yaml.safe_load(DBT_PROJECT.read_text())["vars"]
    return int(variables["session_gap_minutes"]) * 60 * 1000


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


def examples_from_events(events: pd.DataFrame, products: pd.DataFrame) -> pd.DataFrame:
    """The mart from validated landing rows (`ml.contract.validate_events` / `validate_products`
    output, `good`), any days: staging, sessionization, then the cut before the first purchase.
    It gives the mart dbt builds when exactly these days have landed: visits cross midnight,
    the last day's stay provisional (its next day unseen)."""
    e = _with_catalogue(_sessionized(_staged(events)), _catalogue(products))
    first_purchase = e[e["product_action"] == "purchase"].groupby("session_key")["event_ms"].min()
    cut = e["session_key"].map(first_purchase)
    e["will_purchase"] = cut.notna()
    e = e[cut.isna() | (e["event_ms"] < cut)]
    e = e.assign(event_at=pd.to_datetime(e["event_ms"], unit="ms"))
    return ordered_events(e[list(EXAMPLE_COLUMNS)])


def _staged(events: pd.DataFrame) -> pd.DataFrame:
    """stg_browsing_events: renamed, deduplicated, without the pageview twin of a detail."""
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
    return e.drop(index=twin)


def _sessionized(e: pd.DataFrame) -> pd.DataFrame:
    """int_events_sessionized: a new visit after the session gap, midnight or not; a visit
    belongs to the day of its first event and is numbered among the visits of that day."""
    e = e.sort_values(
        ["session_id", "event_ms", "event_type", "product_action", "product_sku", "url"],
        na_position="first",
        kind="stable",
    ).reset_index(drop=True)
    same = e["session_id"] == e["session_id"].shift()
    new_visit = ~same | (e["event_ms"] - e["event_ms"].shift() > session_gap_ms())
    visit_seq = new_visit.astype(int).cumsum()
    e["session_day"] = e.groupby(visit_seq)["event_day"].transform("min")
    visit = visit_seq - visit_seq.groupby([e["session_id"], e["session_day"]]).transform("min") + 1
    day_key = pd.to_datetime(e["session_day"]).dt.strftime("%Y%m%d")
    e["session_key"] = e["session_id"] + "-" + day_key + "-" + visit.astype(str)
    e["prefix_length"] = e.groupby("session_key").cumcount() + 1
    gap = e["event_ms"].diff() / 1000
    e["seconds_since_prev"] = gap.where(~new_visit)
    return e


def _catalogue(products: pd.DataFrame) -> pd.DataFrame:
    """stg_products: one row per sku and snapshot (ties in a snapshot as dbt breaks them)."""
    ranked = products.sort_values(
        ["category_hash", "price_bucket", "description_vector", "image_vector"],
        na_position="last",
        kind="stable",
    ).drop_duplicates(["product_sku_hash", "snapshot_day"])
    catalogue = pd.DataFrame(
        {
            "product_sku": ranked["product_sku_hash"].astype(object),
            "valid_from": pd.to_datetime(ranked["snapshot_day"]),
            "category": ranked["category_hash"].astype(object),
            "price_bucket": ranked["price_bucket"].astype("Int64"),
        }
    )
    catalogue["category_top"] = catalogue["category"].str.split("/", n=1).str[0]
    return catalogue.sort_values("valid_from", kind="stable")


def _with_catalogue(e: pd.DataFrame, catalogue: pd.DataFrame) -> pd.DataFrame:
    """The as-of join of int_events_sessionized: each event gets its sku's latest snapshot on
    or before the event's day."""
    e = e.assign(_day=pd.to_datetime(e["event_day"]), _row=range(len(e)))
    products = e[e["product_sku"].notna()].sort_values("_day", kind="stable")
    joined = pd.merge_asof(
        products[["_row", "_day", "product_sku"]],
        catalogue,
        left_on="_day",
        right_on="valid_from",
        by="product_sku",
        direction="backward",
    ).set_index("_row")
    columns = ["category", "category_top", "price_bucket"]
    e = e.join(joined[columns], on="_row")
    return e.sort_values("_row").drop(columns=["_day", "_row"])
