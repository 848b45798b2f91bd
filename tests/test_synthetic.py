"""The synthetic generator: contract layout, exact dirt, realism bands, drift and its truth."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml import contract
from ml.synthetic import TRUTH_DIR, GenerateResult, GeneratorConfig, generate

START = dt.date(2026, 1, 5)
DRIFT = START + dt.timedelta(days=3)


@dataclass
class Generated:
    result: GenerateResult
    config: GeneratorConfig
    raw: dict[dt.date, pd.DataFrame]
    validated: dict[dt.date, contract.Validated]
    products: dict[dt.date, pd.DataFrame]
    progress: list[str]

    @property
    def out(self) -> Path:
        return self.result.out_dir

    def events(self, days: list[dt.date] | None = None) -> pd.DataFrame:
        """Accepted rows without the written duplicates: the true events."""
        days = days or self.result.days
        frames = [self.validated[d].good.drop_duplicates() for d in days]
        return pd.concat(frames, ignore_index=True)

    def truth(self, day: dt.date) -> pd.DataFrame:
        return pd.read_parquet(self.out / TRUTH_DIR / day.isoformat() / "sessions.parquet")


def _generate(out: Path, config: GeneratorConfig) -> Generated:
    lines: list[str] = []
    result = generate(out, config, progress=lines.append)
    raw, validated, products = {}, {}, {}
    for day in result.days:
        folder = out / day.isoformat()
        raw[day] = contract.read_landing_csv(folder / contract.EVENTS_FILE, contract.EVENT_COLUMNS)
        validated[day] = contract.validate_events(raw[day], day)
        products[day] = contract.read_landing_csv(
            folder / contract.PRODUCTS_FILE, contract.PRODUCT_COLUMNS
        )
    return Generated(result, config, raw, validated, products, lines)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    config = GeneratorConfig(days=3, sessions_per_day=6000, seed=3)
    return _generate(tmp_path_factory.mktemp("plain"), config)


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    config = GeneratorConfig(
        days=6, sessions_per_day=6000, seed=11, n_products=2000, drift_from=DRIFT
    )
    return _generate(tmp_path_factory.mktemp("drifted"), config)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _sessions(events: pd.DataFrame) -> pd.DataFrame:
    flags = pd.DataFrame(
        {
            "session_id_hash": events["session_id_hash"],
            "events": 1,
            "products": events["event_type"] == "event_product",
            "adds": events["product_action"] == "add",
            "purchased": events["product_action"] == "purchase",
        }
    )
    sessions = flags.groupby("session_id_hash").sum()
    sessions["purchased"] = sessions["purchased"] > 0
    return sessions


def _views(events: pd.DataFrame) -> pd.DataFrame:
    detail = events[events["product_action"] == "detail"]
    return detail.sort_values(["session_id_hash", "server_timestamp_epoch_ms"])


def _top_category_mix(g: Generated, days: list[dt.date]) -> pd.Series:
    catalogue = pd.concat([g.products[d] for d in days]).drop_duplicates("product_sku_hash")
    top = catalogue.set_index("product_sku_hash")["category_hash"].dropna().str.split("/").str[0]
    viewed = _views(g.events(days))["product_sku_hash"].map(top).dropna()
    return viewed.value_counts(normalize=True)


def _tv(a: pd.Series, b: pd.Series) -> float:
    a, b = a.align(b, fill_value=0.0)
    return float((a - b).abs().sum() / 2)


def _add_purchase_ratio(g: Generated, days: list[dt.date]) -> float:
    sessions = _sessions(g.events(days))
    return float(sessions.loc[sessions["adds"] > 0, "purchased"].mean())


# layout, determinism, rewrites


def test_layout_columns_and_counts(plain: Generated) -> None:
    result = plain.result
    assert result.days == [START + dt.timedelta(days=i) for i in range(3)]
    folders = sorted(p.name for p in plain.out.iterdir() if p.is_dir())
    assert folders == [*(d.isoformat() for d in result.days), TRUTH_DIR]
    for day in result.days:
        folder = plain.out / day.isoformat()
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [contract.EVENTS_FILE, contract.PRODUCTS_FILE]
        )
        header = (folder / contract.EVENTS_FILE).open().readline().strip().split(",")
        assert header == list(contract.EVENT_COLUMNS)
        header = (folder / contract.PRODUCTS_FILE).open().readline().strip().split(",")
        assert header == list(contract.PRODUCT_COLUMNS)
    assert result.events == sum(len(raw) for raw in plain.raw.values())
    assert result.sessions == 3 * 6000
    assert result.events_per_second > 0
    assert plain.progress[0].startswith("2026-01-05: ") and len(plain.progress) == 3
    assert "6,000 sessions" in plain.progress[0]


def test_rows_are_shuffled(plain: Generated) -> None:
    ts = pd.to_numeric(plain.raw[START]["server_timestamp_epoch_ms"], errors="coerce").dropna()
    assert not ts.is_monotonic_increasing
    sessions = plain.raw[START]["session_id_hash"]
    assert (sessions != sessions.shift()).mean() > 0.9  # a session's rows are not contiguous


def test_products_lack_metadata_and_use_deciles(plain: Generated) -> None:
    products = plain.products[START]
    assert len(products) == 5000 and products["product_sku_hash"].is_unique
    missing_category = products["category_hash"].isna().mean()
    assert 0.15 < missing_category < 0.5
    assert products["price_bucket"].isna().mean() >= missing_category
    buckets = products["price_bucket"].dropna().astype(int)
    assert set(buckets) == set(contract.PRICE_BUCKETS)
    assert buckets.value_counts(normalize=True).max() < 0.2  # deciles, roughly even
    levels = products["category_hash"].dropna().str.split("/")
    assert (levels.str.len() == 2).all()
    assert 5 <= levels.str[0].nunique() < levels.str[1].nunique()
    assert contract.validate_products(products.fillna(""), START).rejected.empty


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    config = GeneratorConfig(days=2, sessions_per_day=300, n_products=400, drift_from=START)
    generate(tmp_path / "a", config)
    generate(tmp_path / "b", config)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b and len(a) == 2 * 3 + 2  # 2 days x (events, products, truth), README, table
    generate(tmp_path / "c", GeneratorConfig(days=2, sessions_per_day=300, n_products=400, seed=8))
    c = _files(tmp_path / "c")
    events = f"{START.isoformat()}/{contract.EVENTS_FILE}"
    assert c[events] != a[events]


def test_days_do_not_depend_on_later_days(tmp_path: Path) -> None:
    generate(tmp_path / "short", GeneratorConfig(days=1, sessions_per_day=200, n_products=300))
    generate(tmp_path / "long", GeneratorConfig(days=3, sessions_per_day=200, n_products=300))
    day = f"{START.isoformat()}/{contract.EVENTS_FILE}"
    assert (tmp_path / "short" / day).read_bytes() == (tmp_path / "long" / day).read_bytes()


def test_rewrite_replaces_files(tmp_path: Path) -> None:
    generate(tmp_path, GeneratorConfig(days=1, sessions_per_day=400, n_products=300, seed=1))
    second = GeneratorConfig(days=1, sessions_per_day=200, n_products=300, seed=2)
    result = generate(tmp_path, second)
    raw = contract.read_landing_csv(
        tmp_path / START.isoformat() / contract.EVENTS_FILE, contract.EVENT_COLUMNS
    )
    assert len(raw) == result.events
    assert not list(tmp_path.rglob("*.tmp"))


def test_without_truth(tmp_path: Path) -> None:
    generate(tmp_path, GeneratorConfig(days=1, sessions_per_day=100, write_truth=False))
    assert not (tmp_path / TRUTH_DIR).exists()


# dirt


def test_malformed_rows_are_exactly_the_rejected_rows(plain: Generated) -> None:
    rejected = {d: v.rejected for d, v in plain.validated.items()}
    assert sum(len(r) for r in rejected.values()) == plain.result.malformed
    assert 0.004 < plain.result.malformed / plain.result.events < 0.006
    reasons = pd.concat(rejected.values())["reason"].value_counts()
    assert set(reasons.index) == set(contract.REJECT_REASONS)
    assert reasons.min() >= 0.8 * reasons.max()  # spread over the kinds


def test_clean_config_has_no_dirt(tmp_path: Path) -> None:
    config = GeneratorConfig(
        days=1, sessions_per_day=500, n_products=300, malformed_share=0.0, duplicate_share=0.0
    )
    result = generate(tmp_path, config)
    raw = contract.read_landing_csv(
        tmp_path / START.isoformat() / contract.EVENTS_FILE, contract.EVENT_COLUMNS
    )
    validated = contract.validate_events(raw, START)
    assert result.malformed == result.duplicates == 0
    assert validated.rejected.empty and not raw.duplicated().any()


def test_duplicates_are_exact_copies(plain: Generated) -> None:
    copies = sum(int(v.good.duplicated().sum()) for v in plain.validated.values())
    assert copies == plain.result.duplicates
    assert 0.004 < plain.result.duplicates / plain.result.events < 0.006


# realism


def test_session_shape(plain: Generated) -> None:
    events = plain.events()
    sessions = _sessions(events)
    assert len(sessions) == plain.result.sessions
    assert 0.65 < (events["event_type"] == "pageview").mean() < 0.75
    assert 0.60 < (sessions["products"] == 0).mean() < 0.72
    length = sessions["events"]
    assert 6.0 < length.mean() < 8.0
    assert length.quantile(0.99) >= 5 * length.median()  # long tail
    assert length.max() >= 80


def test_every_detail_has_a_pageview_twin(plain: Generated) -> None:
    events = plain.events()
    key = ["session_id_hash", "hashed_url", "server_timestamp_epoch_ms"]
    detail = events[events["product_action"] == "detail"]
    pageviews = events[events["event_type"] == "pageview"]
    assert pageviews["product_action"].isna().all() and pageviews["product_sku_hash"].isna().all()
    twins = detail[key].merge(pageviews[key], on=key, how="left", indicator=True)
    assert len(twins) == len(detail)
    assert (twins["_merge"] == "both").all()
    assert len(detail) > 0.2 * len(pageviews)


def test_popularity_is_skewed_and_views_repeat(plain: Generated) -> None:
    views = _views(plain.events())
    counts = views["product_sku_hash"].value_counts()
    head = counts.iloc[: len(plain.products[START]) // 10].sum() / counts.sum()
    assert 0.5 < head < 0.85
    repeats = views.duplicated(["session_id_hash", "product_sku_hash"]).mean()
    assert 0.11 < repeats < 0.17


def test_conversion_depends_on_behaviour(plain: Generated) -> None:
    events = plain.events()
    sessions = _sessions(events)
    with_add = sessions[sessions["adds"] > 0]
    assert 0.14 < with_add["purchased"].mean() < 0.28
    assert 0.01 < sessions["purchased"].mean() < 0.05
    assert not sessions.loc[sessions["adds"] == 0, "purchased"].any()
    by_adds = with_add.groupby(with_add["adds"].clip(upper=2))["purchased"].mean()
    assert by_adds[2] > by_adds[1] + 0.03

    truth = pd.concat([plain.truth(d) for d in plain.result.days]).set_index("session_id_hash")
    observed = sessions["purchased"].reindex(truth.index, fill_value=False)
    assert (truth["purchased"] == observed).all()
    assert (truth.loc[truth["cart_size"] == 0, "purchase_probability"] == 0).all()
    carted = truth[truth["cart_size"] > 0]
    p_by_adds = carted.groupby(carted["adds"].clip(upper=2))["purchase_probability"].mean()
    assert p_by_adds[2] > p_by_adds[1] + 0.04

    # longer dwell (mean time between a session's distinct timestamps) converts more
    stamps = events.drop_duplicates(["session_id_hash", "server_timestamp_epoch_ms"])
    span = stamps.groupby("session_id_hash")["server_timestamp_epoch_ms"].agg(["min", "max"])
    steps = stamps.groupby("session_id_hash").size()
    dwell = ((span["max"] - span["min"]) / (steps - 1).clip(lower=1)).reindex(carted.index)
    assert carted["purchase_probability"].corr(dwell, method="spearman") > 0.1


def test_purchases_follow_adds_of_the_same_skus(plain: Generated) -> None:
    events = plain.events()
    act = events["product_action"]
    adds = events[act == "add"]
    buys = events[act == "purchase"]
    pairs = buys.merge(adds, on=["session_id_hash", "product_sku_hash"], suffixes=("", "_add"))
    assert set(zip(buys.session_id_hash, buys.product_sku_hash, strict=True)) == set(
        zip(pairs.session_id_hash, pairs.product_sku_hash, strict=True)
    )
    assert (pairs["server_timestamp_epoch_ms"] > pairs["server_timestamp_epoch_ms_add"]).all()
    last = events.groupby("session_id_hash")["server_timestamp_epoch_ms"].max()
    assert (buys["server_timestamp_epoch_ms"].to_numpy() == last[buys.session_id_hash]).all()


def test_sessions_stay_in_their_day_without_30_minute_gaps(plain: Generated) -> None:
    seen: set[str] = set()
    for day in plain.result.days:
        events = plain.events([day]).sort_values(["session_id_hash", "server_timestamp_epoch_ms"])
        lo, hi = contract.day_bounds_ms(day)
        ts = events["server_timestamp_epoch_ms"]
        assert ts.min() >= lo and ts.max() < hi
        gaps = events.groupby("session_id_hash")["server_timestamp_epoch_ms"].diff().dropna()
        assert gaps.max() < 30 * 60_000
        assert gaps.quantile(0.99) > 5 * 60_000  # dwell has a tail, clipped not flattened
        ids = set(events["session_id_hash"])
        assert not ids & seen
        seen |= ids


def test_start_times_follow_a_daily_rhythm(plain: Generated) -> None:
    starts = plain.events().groupby("session_id_hash")["server_timestamp_epoch_ms"].min()
    hours = pd.to_datetime(starts, unit="ms").dt.hour.value_counts()
    assert hours.max() > 2.5 * hours.min()


# drift


def test_drift_moves_category_mix_catalogue_and_conversion(drifted: Generated) -> None:
    days = drifted.result.days
    pre, post = days[:3], days[3:]
    assert post[0] == DRIFT

    baseline = _top_category_mix(drifted, pre[:1])
    assert _tv(baseline, _top_category_mix(drifted, pre[1:])) < 0.06
    assert _tv(baseline, _top_category_mix(drifted, post)) > 0.15

    catalogue = {d: set(drifted.products[d]["product_sku_hash"]) for d in days}
    assert catalogue[pre[0]] == catalogue[pre[1]] == catalogue[pre[2]]
    assert catalogue[post[0]] == catalogue[post[-1]]
    new = catalogue[post[0]] - catalogue[pre[0]]
    assert len(new) >= 0.05 * len(catalogue[pre[0]])
    viewed_pre = set(drifted.events(pre)["product_sku_hash"].dropna())
    viewed_post = set(drifted.events(post)["product_sku_hash"].dropna())
    assert not viewed_pre & new
    assert len(viewed_post & new) > 0.3 * len(new)

    truth = {d: drifted.truth(d) for d in days}
    rate = {d: t.loc[t["cart_size"] > 0, "purchase_probability"].mean() for d, t in truth.items()}
    assert max(rate[d] for d in pre) - min(rate[d] for d in pre) < 0.03
    assert min(rate[d] for d in pre) - max(rate[d] for d in post) > 0.04
    assert _add_purchase_ratio(drifted, pre) > _add_purchase_ratio(drifted, post) + 0.03
    assert {t["regime"].iloc[0] for d, t in truth.items() if d < DRIFT} == {"pre"}
    assert {t["regime"].iloc[0] for d, t in truth.items() if d >= DRIFT} == {"post"}


def test_no_drift_without_drift_from(plain: Generated) -> None:
    days = plain.result.days
    assert _tv(_top_category_mix(plain, days[:1]), _top_category_mix(plain, days[1:])) < 0.06
    assert len({frozenset(plain.products[d]["product_sku_hash"]) for d in days}) == 1
    assert sorted(p.name for p in (plain.out / TRUTH_DIR).glob("transitions_*")) == [
        "transitions_pre.parquet"
    ]


# truth


def test_truth_sessions(drifted: Generated) -> None:
    for day in drifted.result.days:
        truth = drifted.truth(day)
        assert {"session_id_hash", "purchase_probability", "purchased", "regime"} <= set(truth)
        assert truth["session_id_hash"].is_unique
        assert set(truth["session_id_hash"]) == set(drifted.events([day])["session_id_hash"])
        assert truth["purchase_probability"].between(0, 1).all()
    assert (drifted.out / TRUTH_DIR / "README.txt").exists()


@pytest.mark.parametrize("regime", ["pre", "post"])
def test_truth_transitions_are_what_views_were_drawn_from(drifted: Generated, regime: str) -> None:
    table = pd.read_parquet(drifted.out / TRUTH_DIR / f"transitions_{regime}.parquet")
    assert table["probability"].between(0, 1, inclusive="right").all()
    sums = table.groupby("from_sku")["probability"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-9)
    assert table.groupby("from_sku").size().median() < 200  # sparse

    days = [d for d in drifted.result.days if (d >= DRIFT) == (regime == "post")]
    views = _views(drifted.events(days))
    same = views["session_id_hash"].eq(views["session_id_hash"].shift(-1)).fillna(False)
    steps = pd.DataFrame(
        {
            "from_sku": views["product_sku_hash"].to_numpy()[:-1][same.to_numpy(dtype=bool)[:-1]],
            "to_sku": views["product_sku_hash"].to_numpy()[1:][same.to_numpy(dtype=bool)[:-1]],
        }
    )
    joined = steps.merge(table, on=["from_sku", "to_sku"], how="left")
    assert joined["probability"].notna().all()  # every observed step is possible in the truth

    # empirical next-view frequencies of the busiest product match its row of the table
    busiest = steps["from_sku"].value_counts().index[0]
    observed = steps.loc[steps["from_sku"] == busiest, "to_sku"].value_counts(normalize=True)
    expected = table[table["from_sku"] == busiest].set_index("to_sku")["probability"]
    assert _tv(observed, expected) < 0.25

    top20 = table.sort_values("probability", ascending=False).groupby("from_sku").head(20)
    best = steps.merge(top20, on=["from_sku", "to_sku"]).shape[0] / len(steps)
    assert 0.3 < best < 0.98  # oracle HR@20: predictable, not trivial
