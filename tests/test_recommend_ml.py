"""ml.recommend: the evaluator against hand-computed numbers, the importers on hand-written and
real files, the models' interface (save/load, seeds, unseen items), and on generated data the
session models far above POP with behavioral checks per bucket."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml import contract
from ml.recommend import behavior
from ml.recommend.compare import compare, fit_and_evaluate, format_leaderboard
from ml.recommend.evaluate import (
    evaluate,
    metrics_from_ranks,
    prediction_points,
    rank_from_scores,
    rank_in_list,
)
from ml.recommend.importers import import_sessions, landing_sessions, load_sessions, read_sessions
from ml.recommend.models import Recommender, make_model
from ml.synthetic import GeneratorConfig, generate
from skiff.settings import REPO_ROOT

DIGINETICA = REPO_ROOT.parent / "shared" / "data" / "diginetica" / "sample_train-item-views.csv"
YOOCHOOSE = REPO_ROOT.parent / "shared" / "data" / "yoochoose"
YOOCHOOSE_TRAIN = YOOCHOOSE / "yoochoose-clicks-100k_train_tr.txt"
YOOCHOOSE_VALID = YOOCHOOSE / "yoochoose-clicks-100k_train_valid.txt"


# --- evaluator ---------------------------------------------------------------------------------


def test_protocol_predicts_every_next_item():
    points = prediction_points([["a"], ["a", "b"], ["a", "a", "b"]])
    assert points.prefixes == [["a"], ["a"], ["a", "a"]]  # length 1: nothing to predict
    assert points.targets == ["b", "a", "b"]  # the repeat is a target too
    assert points.position.tolist() == [1, 1, 2]
    assert points.session_length.tolist() == [2, 3, 3]


def test_metrics_by_hand():
    # prefix [a] -> b at rank 1; prefix [a, b] -> c at rank 3
    result = evaluate([["a", "b", "c"]], recommendations=[["b", "x"], ["x", "y", "c"]], k=20)
    assert result.predictions == 2
    assert result.hr == pytest.approx(1.0)
    assert result.mrr == pytest.approx((1 + 1 / 3) / 2)
    assert result.ndcg == pytest.approx((1 + 1 / math.log2(4)) / 2)


def test_items_beyond_k_and_duplicate_recommendations():
    assert rank_in_list(["x", "y", "c"], "c", k=2) == 0  # past k: a miss
    assert rank_in_list(["x", "x", "c"], "c", k=2) == 2  # a repeated item takes one slot
    assert rank_in_list(["c", "c"], "c", k=1) == 1
    result = evaluate([["a", "c"]], recommendations=[["x", "x", "y", "c"]], k=2)
    assert (result.hr, result.mrr, result.ndcg) == (0.0, 0.0, 0.0)
    result = evaluate([["a", "c"]], recommendations=[["x", "x", "c"]], k=2)
    assert result.mrr == pytest.approx(0.5)
    assert result.ndcg == pytest.approx(1 / math.log2(3))


def test_length_two_sessions_and_duplicates_in_a_session():
    # [a, a, b]: a from [a] (rank 1) and b from [a, a] (miss); [c, d]: d from [c] (rank 2)
    lists = {("a",): ["a", "z"], ("a", "a"): ["z"], ("c",): ["z", "d"]}
    result = evaluate([["a", "a", "b"], ["c", "d"]], recommend=lambda s, k: lists[tuple(s)])
    assert result.predictions == 3
    assert result.hr == pytest.approx(2 / 3)
    assert result.mrr == pytest.approx((1 + 0 + 0.5) / 3)


def test_ties_count_against_the_target():
    assert rank_from_scores(np.zeros(100), 7) == 100  # all equal: not first
    assert rank_from_scores(np.array([0.5, 0.9, 0.5, 0.1]), 0) == 3
    assert rank_from_scores(np.array([0.5, 0.9, 0.5, 0.1]), 1) == 1
    assert metrics_from_ranks(np.array([100]), 20)["hr_at_20"] == 0.0


def test_any_recommender_three_ways_same_numbers():
    test = [["a", "b", "c", "a"], ["b", "c"]]

    def one(session, k):
        return ["c", "a", "b"] if session[-1] == "b" else ["b", "a"]

    def batch(sessions, k):
        return [one(s, k) for s in sessions]

    precomputed = [one(p, 20) for p in prediction_points(test).prefixes]
    results = [
        evaluate(test, recommend=one),
        evaluate(test, recommend_batch=batch),
        evaluate(test, recommendations=precomputed),
    ]
    assert len({(r.hr, r.mrr, r.ndcg, r.predictions) for r in results}) == 1
    with pytest.raises(ValueError, match="recommendation lists"):
        evaluate(test, recommendations=precomputed[:1])


def test_coverage_popularity_bias_and_unknown_targets():
    popularity = {"a": 4, "b": 2, "c": 1, "d": 1}
    result = evaluate(
        [["a", "b", "new"]],
        recommendations=[["a", "b"], ["a", "b"]],
        popularity=popularity,
        known_items=set(popularity),
    )
    assert result.predictions == 1 and result.excluded_targets == 1
    assert result.coverage == pytest.approx(2 / 4)
    assert result.popularity_bias == pytest.approx((4 + 2) / 2 / 4)


# --- importers ---------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _landed_rejects(landing: Path, days: list[str]) -> int:
    rejects = 0
    for day in days:
        raw = contract.read_landing_csv(
            landing / day / contract.EVENTS_FILE, contract.EVENT_COLUMNS
        )
        rejects += len(contract.validate_events(raw, dt.date.fromisoformat(day)).rejected)
    return rejects


def test_sessions_importer_tab_separated_with_bad_lines(tmp_path):
    day = contract.day_bounds_ms(dt.date(2026, 2, 1))[0] // 1000
    source = _write(
        tmp_path / "clicks.tsv",
        "SessionId\tItemId\tTime\n"
        f"1\t10\t{day + 60}\n"
        f"1\t11\t{day + 30}\n"  # earlier: comes first in the session
        f"2\t10\t{day + 86400 + 5}.5\n"  # next day, fractional seconds
        f"2\t12\tyesterday\n"  # line 5: bad timestamp
        "3\t13\n"  # line 6: a field missing
        f"\t13\t{day}\n"  # line 7: no session
        f"4\t\t{day}\n",  # line 8: no item
    )
    landing = tmp_path / "landing"
    report = import_sessions(source, "sessions", landing)
    assert (report.rows_read, report.rows_imported, report.rows_rejected) == (7, 3, 4)
    assert report.reconciles
    assert [(b.line, b.reason) for b in report.bad_rows] == [
        (5, "bad_timestamp"),
        (6, "expected 3 fields, got 2"),
        (7, "missing_session_id"),
        (8, "missing_item_id"),
    ]
    assert report.days == ["2026-02-01", "2026-02-02"]
    assert _landed_rejects(landing, report.days) == 0
    products = pd.read_csv(landing / "2026-02-01" / contract.PRODUCTS_FILE, dtype=str)
    assert list(products.columns) == list(contract.PRODUCT_COLUMNS)
    assert sorted(products["product_sku_hash"]) == ["10", "11"]
    assert read_sessions(source, "sessions") == [["11", "10"], ["10"]]


@pytest.mark.parametrize(
    ("header", "sep", "scale"),
    [("session_id,item_id,timestamp", ",", 1000), ("sessionId;itemId;time", ";", 1)],
)
def test_sessions_importer_header_variants(tmp_path, header, sep, scale):
    start = contract.day_bounds_ms(dt.date(2026, 3, 1))[0] // 1000
    lines = [header] + [sep.join(["s1", f"i{n}", str((start + n) * scale)]) for n in range(3)]
    source = _write(tmp_path / "views.csv", "\n".join(lines) + "\n")
    report = import_sessions(source, "sessions", tmp_path / "landing")
    assert report.rows_imported == 3 and report.days == ["2026-03-01"]
    assert read_sessions(source, "sessions") == [["i0", "i1", "i2"]]


def test_sessions_importer_names_a_missing_column(tmp_path):
    source = _write(tmp_path / "x.csv", "session,item\n1,2\n")
    with pytest.raises(contract.SchemaError, match="timestamp"):
        import_sessions(source, "sessions", tmp_path / "landing")


def test_coveo_importer_with_catalogue(tmp_path):
    ms = contract.day_bounds_ms(dt.date(2026, 4, 2))[0]
    header = ",".join(contract.EVENT_COLUMNS)
    source = _write(
        tmp_path / "browsing_train.csv",
        f"{header}\n"
        f"s1,event_product,detail,p1,{ms + 1000},u1\n"
        f"s1,pageview,,,{ms + 1000},u1\n"
        f"s1,event_product,detail,p2,{ms + 2000},u2\n"
        f"s1,event_product,add,p2,{ms + 3000},u2\n"
        f"s2,event_product,detail,p1,not-a-time,u1\n"  # line 6
        f"s2,banner_click,,,{ms + 5000},u3\n"  # line 7: the contract refuses it
        f"s2,event_product,detail,p1\n",  # line 8
    )
    _write(
        tmp_path / "sku_to_content.csv",
        "product_sku_hash,description_vector,category_hash,image_vector,price_bucket\n"
        "p1,,c1/l1,,3\np2,,c1/l2,,\n",
    )
    landing = tmp_path / "landing"
    report = import_sessions(source, "coveo", landing)
    assert (report.rows_read, report.rows_imported, report.rows_rejected) == (7, 4, 3)
    assert sorted((b.line, b.reason) for b in report.bad_rows) == [
        (6, "bad_timestamp"),
        (7, "bad_event_type"),
        (8, "expected 6 fields, got 4"),
    ]
    assert _landed_rejects(landing, report.days) == 0
    products = pd.read_csv(landing / "2026-04-02" / contract.PRODUCTS_FILE, dtype=str)
    assert products["category_hash"].tolist() == ["c1/l1", "c1/l2"]
    assert read_sessions(source, "coveo") == [["p1", "p2"]]  # detail views only


def test_diginetica_importer_orders_by_timeframe(tmp_path):
    source = _write(
        tmp_path / "train-item-views.csv",
        "session_id;user_id;item_id;timeframe;eventdate\n"
        "7;NA;300;9000;2016-05-09\n"
        "7;NA;100;1000;2016-05-09\n"
        "7;NA;200;5000;2016-05-09\n"
        "8;NA;100;0;2016-05-10\n"
        "8;NA;400;2000;2016-05-10\n"
        "9;NA;100;x;2016-05-10\n"  # line 7
        "9;NA;100;10;2016-13-01\n"  # line 8
        "9;NA;100\n",  # line 9
    )
    landing = tmp_path / "landing"
    report = import_sessions(source, "diginetica", landing)
    assert (report.rows_read, report.rows_imported, report.rows_rejected) == (8, 5, 3)
    assert [(b.line, b.reason) for b in report.bad_rows] == [
        (7, "bad_timeframe"),
        (8, "bad_eventdate"),
        (9, "expected 5 fields, got 3"),
    ]
    assert report.days == ["2016-05-09", "2016-05-10"]
    assert _landed_rejects(landing, report.days) == 0
    events = pd.read_csv(landing / "2016-05-09" / contract.EVENTS_FILE)
    assert events["product_sku_hash"].tolist() == [100, 200, 300]
    assert np.diff(events["server_timestamp_epoch_ms"]).tolist() == [4000, 4000]  # timeframe
    assert read_sessions(source, "diginetica") == [["100", "200", "300"], ["100", "400"]]


@pytest.mark.skipif(not DIGINETICA.exists(), reason="Diginetica sample not present")
def test_diginetica_importer_on_the_real_sample(tmp_path):
    landing = tmp_path / "landing"
    report = import_sessions(DIGINETICA, "diginetica", landing)
    assert report.rows_read == 12_391 and report.reconciles
    assert report.rows_imported == report.rows_read  # the sample is clean
    assert report.sessions == 2_986
    assert _landed_rejects(landing, report.days) == 0
    data = load_sessions(DIGINETICA, "diginetica")
    assert sum(map(len, data.sessions)) == report.rows_imported
    assert data.days == sorted(data.days)  # oldest session first: ready for a time split


# --- models ------------------------------------------------------------------------------------

TOY = [["a", "b", "c"], ["a", "b", "d"], ["b", "c", "e"], ["c", "e", "a"], ["d", "a", "b"]] * 8
FAST = {"pop": {}, "sknn": {}, "gru": {"epochs": 2, "dim": 16}, "sasrec": {"epochs": 2, "dim": 16}}


@pytest.mark.parametrize("algorithm", list(FAST))
def test_save_load_round_trip(tmp_path, algorithm):
    model = make_model(algorithm, **FAST[algorithm]).fit(TOY)
    sessions = [["a"], ["a", "b"], ["e", "c", "b"], ["zzz"]]
    before = model.recommend_batch(sessions, 3)
    loaded = Recommender.load(model.save(tmp_path / algorithm))
    assert type(loaded) is type(model)
    assert loaded.recommend_batch(sessions, 3) == before
    assert [model.recommend(s, 3) for s in sessions] == before


@pytest.mark.parametrize("algorithm", ["sknn", "gru", "sasrec"])
def test_same_seed_same_recommendations(algorithm):
    runs = [make_model(algorithm, **FAST[algorithm]).fit(TOY) for _ in range(2)]
    sessions = [["a"], ["b", "c"], ["d", "a"]]
    assert runs[0].recommend_batch(sessions, 5) == runs[1].recommend_batch(sessions, 5)


@pytest.mark.parametrize("algorithm", list(FAST))
def test_unseen_items_are_skipped_and_counted(algorithm):
    model = make_model(algorithm, **FAST[algorithm]).fit(TOY)
    popular = model.recommend_batch([[]], 4)[0]
    assert model.recommend(["new1", "new2"], 4) == popular  # nothing known: most popular
    assert model.recommend(["a", "new"], 4) == model.recommend(["a"], 4)
    assert model.vocab.unseen_items == 3 and model.vocab.unseen_inputs == 2
    assert len(model.recommend(["a"], 50)) == 5  # never more than the catalogue


def test_torch_model_stops_early_on_the_latest_sessions_and_refits():
    lines: list[str] = []
    model = make_model(
        "gru", epochs=6, patience=1, dim=16, holdout=0.2, holdout_from="latest", refit=True
    )
    model.progress = lines.append
    model.fit(TOY)
    held = [r for r in model.history if not r["refit"]]
    refit = [r for r in model.history if r["refit"]]
    assert all("holdout_mrr_at_20" in r for r in held) and 1 <= model.best_epoch <= len(held)
    stopped = len(held) < 6
    best = max(r["holdout_mrr_at_20"] for r in held)
    assert not stopped or held[-1]["holdout_mrr_at_20"] <= best  # stopped on no gain
    assert [r["epoch"] for r in refit] == list(range(1, model.best_epoch + 1))  # all sessions
    assert len(lines) == len(model.history)
    assert "train loss" in lines[0] and "holdout MRR@20" in lines[0] and lines[0].endswith("s")
    plain = make_model("gru", epochs=2, dim=16, holdout=0).fit(TOY)
    assert [r["epoch"] for r in plain.history] == [1, 2] and plain.best_epoch == 2
    with pytest.raises(ValueError, match="holdout"):
        make_model("gru", holdout=1.0)
    with pytest.raises(ValueError, match=r"gru: .*'hidden_size'"):
        make_model("gru", hidden_size=10)


def test_torch_model_default_holds_out_sessions_spread_over_time_then_learns_them():
    model = make_model("gru", epochs=6, dim=16, holdout=0.2)
    held = model._split(10)
    assert held.sum() == 2 and held[-1] and not held[-2]  # spread, the latest session among them
    assert (
        make_model("gru", holdout=0.2, holdout_from="latest")._split(10).tolist()
        == [False] * 8 + [True] * 2
    )
    model.fit(TOY)
    stopped = [r for r in model.history if not r["refit"]]
    extra = [r for r in model.history if r["refit"]]
    assert all("holdout_mrr_at_20" in r for r in stopped) and 1 <= model.best_epoch <= 6
    assert [r["epoch"] for r in extra] == [model.best_epoch + 1]  # one epoch, held-out only
    with pytest.raises(ValueError, match="refit"):
        make_model("gru", refit="scratch")
    with pytest.raises(ValueError, match="holdout_from"):
        make_model("gru", holdout_from="random")


def test_sampled_negatives_train_and_repeat():
    runs = [make_model("gru", dim=16, epochs=2, negatives=8).fit(TOY) for _ in range(2)]
    sessions = [["a"], ["b", "c"]]
    assert runs[0].recommend_batch(sessions, 3) == runs[1].recommend_batch(sessions, 3)
    assert (
        runs[0].history[0]["loss"]
        != make_model("gru", dim=16, epochs=2).fit(TOY).history[0]["loss"]
    )


@pytest.mark.slow
@pytest.mark.skipif(not YOOCHOOSE_VALID.exists(), reason="../shared/data/yoochoose is absent")
def test_torch_model_beats_session_knn_on_yoochoose_validation():
    """The issue's target: default parameters, trained on train_tr only (early stopping on 5%
    of its sessions, spread over time), against session-kNN on every next item of
    train_valid. Its training time (target: under 15 s) is bench/recommend_real.py's to
    measure: a timed assertion here would fail on a loaded machine, not on a slower model."""
    train = load_sessions(YOOCHOOSE_TRAIN, "sessions").sessions
    valid = load_sessions(YOOCHOOSE_VALID, "sessions").sessions
    _, sknn, _ = fit_and_evaluate("sknn", train, valid)
    _, gru, _ = fit_and_evaluate("gru", train, valid)
    numbers = f"gru {gru.hr:.4f}/{gru.mrr:.4f}, sknn {sknn.hr:.4f}/{sknn.mrr:.4f} (HR/MRR@20)"
    assert gru.hr > sknn.hr and gru.mrr > sknn.mrr, numbers


def test_sknn_prefers_recent_items():
    model = make_model("sknn").fit([["x", "p"], ["y", "q"]])
    assert set(model.recommend(["x", "y"], 2)) == {"y", "q"}  # the last item weighs most
    assert set(model.recommend(["y", "x"], 2)) == {"x", "p"}


def _sknn_by_hand(train, query, k_neighbors, sample_size, idf, k):
    """Session-kNN as SKNNRecommender's docstring states it, one request in plain Python, and
    whether its neighbours were cut inside a tie (the case the test must hold)."""
    first, counts = {}, {}
    for session in train:
        for item in session:
            first.setdefault(item, len(first))
            counts[item] = counts.get(item, 0) + 1
    popular = sorted(first, key=lambda i: (-counts[i], first[i]))
    rank = {item: r for r, item in enumerate(popular)}
    sets = [set(s) for s in train]
    containing: dict[str, list[int]] = {}  # oldest first
    for n, items in enumerate(sets):
        for item in items:
            containing.setdefault(item, []).append(n)
    known = [i for i in query if i in first]
    if not known:
        return popular[:k], False
    weights = {item: 1.0 / (len(known) - pos) for pos, item in enumerate(known)}
    candidates = set().union(*(containing[i][-sample_size:] for i in weights))
    similarity = {n: sum(w for i, w in weights.items() if i in sets[n]) for n in candidates}
    ordered = sorted(similarity, key=lambda n: (-similarity[n], -n))  # ties: the most recent
    neighbours = ordered[:k_neighbors]
    cut_in_tie = len(ordered) > k_neighbors and (
        similarity[ordered[k_neighbors - 1]] == similarity[ordered[k_neighbors]]
    )
    totals: dict[str, float] = {}
    for n in neighbours:
        for item in sets[n]:
            totals[item] = totals.get(item, 0.0) + similarity[n]
    if idf:  # float32, as the model's (exact sums of 1 and 1/2 times its weights)
        weight = {
            i: np.float32(math.log((len(train) + 1) / (len(containing[i]) + 1)) + 1.0)
            for i in totals
        }
        totals = {i: float(np.float32(t) * weight[i]) for i, t in totals.items()}
    ranked = sorted(totals, key=lambda i: (-totals[i], rank[i]))[:k]
    return ranked + [i for i in popular if i not in ranked][: k - len(ranked)], cut_in_tie


@pytest.mark.parametrize("idf", [False, True])
def test_sknn_recommends_what_the_algorithm_computed_by_hand_gives(idf):
    """Every request of a small world with many ties, against `_sknn_by_hand`: the recent
    sample, the k neighbours (ties to the most recent session), the votes, the popularity
    tie-break and the fill. Requests of one or two items keep the similarities exact sums."""
    rng = np.random.default_rng(3)
    items = [f"i{j}" for j in range(40)]
    train = [list(rng.choice(items, int(rng.integers(1, 6)))) for _ in range(300)]
    queries = [list(rng.choice([*items, "unknown"], int(rng.integers(1, 3)))) for _ in range(400)]
    model = make_model("sknn", k_neighbors=5, sample_size=8, idf=idf, batch=64).fit(train)
    got = model.recommend_batch(queries, 10)
    expected = [_sknn_by_hand(train, q, 5, 8, idf, 10) for q in queries]
    assert got == [e for e, _ in expected]
    assert sum(tie for _, tie in expected) > 50  # the cut inside a tie is what is tested


# --- on generated data -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[list[list[str]], list[list[str]]]:
    out = tmp_path_factory.mktemp("synthetic")
    config = GeneratorConfig(days=6, sessions_per_day=4000, seed=11, n_products=1500)
    result = generate(out, config)
    by_day = landing_sessions(out, result.days)
    train = [s for day in result.days[:-1] for s in by_day[day]]
    return train, by_day[result.days[-1]]  # time split: the last day is the test


@pytest.mark.slow
def test_session_models_beat_pop_by_far(synthetic):
    train, test = synthetic
    params = {"gru": {"epochs": 3, "dim": 48}}
    rows = {
        r["model"]: r for r in compare(train, test, models=["pop", "sknn", "gru"], params=params)
    }
    pop = rows["pop"]["hr_at_20"]
    assert rows["sknn"]["hr_at_20"] > 2 * pop
    assert rows["gru"]["hr_at_20"] > 2 * pop
    assert rows["gru"]["mrr_at_20"] > 2 * rows["pop"]["mrr_at_20"]
    assert rows["sknn"]["coverage"] > 10 * rows["pop"]["coverage"]
    table = format_leaderboard(list(rows.values()))
    assert table.count("\n") == 4 and "| sknn |" in table


def test_behavioral_checks_one_value_per_bucket(synthetic):
    train, test = synthetic
    _, pop_result, _ = fit_and_evaluate("pop", train, test)
    model, result, _ = fit_and_evaluate("sknn", train, test)
    popularity = {
        i: int(c) for i, c in zip(model.vocab.items[1:], model.popularity[1:], strict=True)
    }
    outcomes, slices = behavior.run_checks(
        result, pop_result, model.recommend_batch, train, test, popularity, n=200
    )
    assert list(slices["by_popularity"]) == ["head", "mid", "tail"]
    assert list(slices["by_length"]) == ["2", "3-4", "5-9", "10+"]
    assert sum(b["predictions"] for b in slices["by_length"].values()) == result.predictions
    assert sum(b["predictions"] for b in slices["by_popularity"].values()) == result.predictions
    # head items are easier than tail items
    assert slices["by_popularity"]["head"]["hr_at_20"] > slices["by_popularity"]["tail"]["hr_at_20"]
    by_name = {o.name: o for o in outcomes}
    assert set(by_name) == set(behavior.GATES)
    assert by_name["beats_pop"].passed and by_name["beats_pop"].gating
    assert by_name["unseen_items"].value == 1.0
    assert 0 < by_name["similar_item_stability"].value <= 1
    # POP itself does not pass the POP gate
    pop_model, _, _ = fit_and_evaluate("pop", train, test)
    pop_outcomes, _ = behavior.run_checks(
        pop_result, pop_result, pop_model.recommend_batch, train, test, popularity, n=50
    )
    assert not next(o for o in pop_outcomes if o.name == "beats_pop").passed
