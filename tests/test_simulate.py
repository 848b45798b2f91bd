"""The traffic simulator against truth computed another way: the generator's published
transition table, the click model worked out by hand, the package docstring's purchase formula,
and the real server's own event log."""

from __future__ import annotations

import functools
import json
import math
import subprocess
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare

from ml import experiments as stats
from ml.offpolicy import Exploration
from ml.simulate import (
    EXPOSURE_COLUMNS,
    ShopperModel,
    click_chance,
    exploring,
    interleaved,
    next_view,
    simulate,
    simulate_exposures,
    simulate_sessions,
    split,
    true_ctr_on,
    true_top_k,
    world,
)
from ml.synthetic import GeneratorConfig, transitions_table
from ml.synthetic import shoppers as truth
from tests.servers import free_port
from tests.test_serving import START, publish_models
from tests.test_serving_e2e import SKIFF, serve

# The generator settings of `tests.test_serving.training_data`: the published models' world.
CONFIG = GeneratorConfig(days=3, sessions_per_day=500, seed=5, start=START)


@pytest.fixture(scope="module")
def w():
    return world(CONFIG)


@functools.cache
def _published() -> dict[str, list[tuple[str, float]]]:
    """The generator's published table (_truth/transitions_pre.parquet), by source sku."""
    table = transitions_table(CONFIG, "pre")
    rows: dict[str, list[tuple[str, float]]] = {}
    for src, dst, p in zip(
        table["from_sku"].to_pylist(),
        table["to_sku"].to_pylist(),
        table["probability"].to_pylist(),
        strict=True,
    ):
        rows.setdefault(src, []).append((dst, p))
    return rows


def _row_of(w, item: int) -> dict[int, float]:
    """T(.|item) as the generator publishes it."""
    return {w.index[sku]: p for sku, p in _published().get(w.skus[item], [])}


def _chi_square_p(counts: Counter, expected: dict[int, float], n: int) -> float:
    """Goodness of fit, cells with fewer than 5 expected draws pooled into one."""
    big = [j for j, p in expected.items() if p * n >= 5]
    observed = [counts[j] for j in big] + [n - sum(counts[j] for j in big)]
    wanted = [expected[j] * n for j in big] + [n * (1 - sum(expected[j] for j in big))]
    assert not set(counts) - set(expected), "a next view outside the support of T"
    return float(chisquare(observed, wanted).pvalue)


def _popular_item(w) -> int:
    return int(np.argmax(w.catalogue.popularity["pre"]))


def test_nothing_shown_next_views_follow_the_true_table(w):
    item = _popular_item(w)
    expected = _row_of(w, item)
    assert math.isclose(sum(expected.values()), 1.0)
    rng = np.random.default_rng(1)
    n = 4000
    draws = [next_view(w, item, [], ShopperModel(), rng) for _ in range(n)]
    assert {chance for _, chance in draws} == {0.0}
    assert _chi_square_p(Counter(j for j, _ in draws), expected, n) > 0.001


def test_shown_products_are_tilted_by_position_and_clicks_have_their_chance(w):
    item = _popular_item(w)
    row = _row_of(w, item)
    support = sorted(row, key=row.get)  # the least likely first: the tilt matters most there
    outside = next(j for j in range(len(w.skus)) if j not in row)
    shown = [support[0], -1, support[3], outside, support[1], support[0], support[-1]]
    model = ShopperModel(attraction=2.0, eta=0.8)
    # by hand: w_j = T(j|i) (1 + a / rank**eta) for the first place j is shown at
    weight = dict(row)
    for rank, j in enumerate(shown, start=1):
        if j in row and weight[j] == row[j]:
            weight[j] = row[j] * (1 + 2.0 / rank**0.8)
    total = sum(weight.values())
    expected = {j: v / total for j, v in weight.items()}
    chance = sum(expected[j] for j in set(shown) if j in expected)

    rng = np.random.default_rng(2)
    n = 4000
    draws = [next_view(w, item, shown, model, rng) for _ in range(n)]
    assert all(math.isclose(c, chance, rel_tol=1e-12) for _, c in draws)
    clicks = sum(j in shown for j, _ in draws)
    assert abs(clicks / n - chance) < 4 * math.sqrt(chance * (1 - chance) / n)
    assert _chi_square_p(Counter(j for j, _ in draws), expected, n) > 0.001


def test_clicks_match_expected_clicks_and_the_truth_ranks_best(w):
    best = simulate_sessions(w, true_top_k(w), 400, seed=3)
    # sessions are independent: the SE of total clicks - total chances from the sessions
    gap = best["clicked"] - best["expected_clicks"]
    assert abs(gap.sum()) < 4 * gap.std() * math.sqrt(len(gap))
    assert (best["clicked"] <= best["exposures"]).all()
    # pre-exposure history: the first widget comes after `warmup_steps` views (and pages)
    shown = best[best["exposures"] > 0]
    assert (shown["history_events"] >= 2 * 2).all()

    popular = [w.skus[i] for i in np.argsort(-w.catalogue.popularity["pre"])]
    pop = simulate_sessions(w, lambda items, k: (popular[:k], "pop"), 400, seed=3)
    assert set(pop["variant"].dropna()) == {"pop"}
    true_ctr = {
        name: frame["expected_clicks"].sum() / frame["exposures"].sum()
        for name, frame in (("truth", best), ("popularity", pop))
    }
    assert true_ctr["truth"] > 2 * true_ctr["popularity"], true_ctr
    # same seed, same sessions: ids and everything the recommender does not touch
    again = simulate_sessions(w, true_top_k(w), 400, seed=3)
    assert again.equals(best)
    assert list(pop["session_id"]) == list(best["session_id"])


def _formula(w, events: list[dict]) -> float:
    """The package docstring's purchase probability, from the events the shop saw: every
    step is one event except a view, which is a detail plus its pageview twin."""
    cat = w.catalogue
    actions = [e.get("product_action") for e in events]
    steps = len(events) - actions.count("detail")
    seconds = (events[-1]["event_at"] - events[0]["event_at"]) / 1000
    dwell = math.log(max(seconds / (steps - 1), 1.0) / 30.0) if steps > 1 else 0.0
    added = {w.index[e["product_sku"]] for e in events if e.get("product_action") == "add"}
    removed = {w.index[e["product_sku"]] for e in events if e.get("product_action") == "remove"}
    cart = sorted(added - removed)
    if not cart:
        return 0.0
    logit = (
        truth._B0
        + truth._B_ADD * math.log(max(actions.count("add"), 1))
        + truth._B_REMOVE * actions.count("remove")
        + truth._B_DWELL * dwell
        + np.mean([cat.category_effect[cat.top[j]] for j in cart])
        + truth._B_PRICE * (np.mean([cat.price[j] for j in cart]) - 5.5)
    )
    return 1 / (1 + math.exp(-logit))


def test_purchase_probability_is_the_generators_and_a_nudge_moves_its_log_odds(w):
    recommend = true_top_k(w)
    checked = emptied = 0
    seen: list[list[dict]] = []  # the events of every score request of one session
    for seed in range(150):
        seen.clear()
        row = simulate_sessions(
            w, recommend, 1, seed, score=lambda events: seen.append(events) or 0.0
        ).iloc[0]
        assert not row["nudged"] and row["purchase_probability"] == row["base_probability"]
        if not seen:  # never a cart: never scored, never buys
            assert row["base_probability"] == 0.0 and row["scores"] == 0
            continue
        assert row["scores"] == len(seen)
        if row["base_probability"] == 0:  # the cart was emptied: the last steps went unscored
            emptied += 1
            continue
        # scored after every step with a cart: the last score saw the whole session
        checked += 1
        assert row["base_probability"] == pytest.approx(_formula(w, seen[-1]), rel=1e-9)
    assert checked >= 20 and emptied < checked / 3

    model = ShopperModel(nudge_threshold=0.5, nudge_effect=0.7, persuadable_from=0.25)
    nudged = simulate_sessions(w, recommend, 300, 9, score=lambda e: (0.9, "eager"), shopper=model)
    carts = nudged[nudged["base_probability"] > 0]
    assert carts["nudged"].all() and set(carts["conversion_variant"]) == {"eager"}
    p0 = carts["base_probability"]
    shift = np.where(p0 >= 0.25, 0.7, -0.7)
    expected = 1 / (1 + np.exp(-(np.log(p0 / (1 - p0)) + shift)))
    assert np.allclose(carts["purchase_probability"], expected, rtol=1e-12)
    assert ((p0 >= 0.25) == (carts["purchase_probability"] > p0)).all()


# --- against the real server ------------------------------------------------------------------

EXPERIMENTS = {
    "recommender": {
        "name": "sim-recs",
        "variants": [
            {"name": "challenger", "role": "challenger", "weight": 0.5},
            {"name": "champion", "role": "champion", "weight": 0.5},
        ],
    },
    "conversion": {
        "name": "sim-conversion",
        "variants": [
            {"name": "challenger", "role": "challenger", "weight": 0.5},
            {"name": "champion", "role": "champion", "weight": 0.5},
        ],
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("skiff")
    built = publish_models(home, tmp_path_factory.mktemp("landing"))
    (home / "experiments.json").write_text(json.dumps(EXPERIMENTS))
    # no exploration: an explored answer draws from its exposure id, so a rerun of the same
    # sessions would see other lists (tests/test_serving_e2e.py tests exploration)
    flags = ["--experiments", str(home / "experiments.json"), "--explore", "0"]
    with serve(home, home / "server.log", *flags) as (url, _):
        yield url, home, built["versions"]


@pytest.mark.e2e
def test_the_server_receives_exactly_the_simulated_exposures_and_clicks(server, w):
    url, home, versions = server
    lines: list[str] = []
    report = simulate(url, w, 60, seed=11, concurrency=4, progress=lines.append)
    assert report.errors == {} and report.sessions_run == 60
    assert len(lines) == 10 and lines[-1].startswith("simulate: 60/60 sessions")

    log = stats.read_log(home / "serving")
    exposures = log.exposures
    assert len(exposures) == sum(v.exposures for v in report.variants)
    feedback = log.feedback.merge(exposures, left_on="exposure_id", right_on="id", how="left")
    assert feedback["problem"].notna().all(), "feedback for an exposure the server never made"
    assert report.requests == len(exposures) + len(log.feedback)
    table = stats.sessions_table(exposures, log.feedback)
    for v in report.variants:
        mine = exposures[(exposures["problem"] == v.problem) & (exposures["variant"] == v.variant)]
        assert len(mine) == v.exposures, v
        assert v.model_versions == (versions[(v.problem, v.variant)],)
        acted = feedback[(feedback["problem"] == v.problem) & (feedback["variant"] == v.variant)]
        assert (acted["action"] == "click").sum() == v.clicks
        units = table[(table["problem"] == v.problem) & (table["variant"] == v.variant)]
        assert (len(units), int(units["purchased"].sum())) == (v.sessions, v.purchases)
    recs = {v.variant: v for v in report.variants if v.problem == "recommender"}
    assert set(recs) == {"champion", "challenger"}
    assert all(0 < v.true_ctr < 1 and v.observed_ctr is not None for v in recs.values())
    assert {v.variant for v in report.variants if v.problem == "conversion"} == set(recs)

    again = simulate(url, w, 60, seed=11, concurrency=2)
    assert again.variants == report.variants and again.requests == report.requests


@pytest.mark.e2e
def test_skiff_simulate_prints_json_and_fails_when_no_server_answers(server):
    url, _, _ = server
    flags = ["simulate", "--sessions", "12", "--seed", "5", "--traffic-seed", "1"]
    done = subprocess.run(
        [SKIFF, *flags, "--url", url, "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["sessions_run"] == 12 and report["error_share"] == 0.0
    assert {v["problem"] for v in report["variants"]} == {"recommender", "conversion"}
    assert "--traffic-seed 1" in done.stderr

    nobody = f"http://127.0.0.1:{free_port()}"
    down = subprocess.run([SKIFF, *flags, "--url", nobody], capture_output=True, text=True)
    assert down.returncode == 1 and "is not ready" in down.stderr


# --- what a replay needs ------------------------------------------------------------------------


def _chance_by_hand(row: dict[int, float], shown: list[int], model: ShopperModel) -> float:
    """sum of the shown w / sum w, w_j = T(j|i) (1 + a / rank**eta) at j's first rank."""
    weight, seen = dict(row), set()
    for rank, j in enumerate(shown, start=1):
        if j in row and j not in seen:
            weight[j] = row[j] * (1 + model.attraction / rank**model.eta)
            seen.add(j)
    return sum(weight[j] for j in seen) / sum(weight.values())


def test_click_chance_is_the_hand_computed_share_and_next_view_reports_it(w):
    item = min(range(len(w.skus)), key=lambda i: len(w.next_views(i)[0]) or 10**9)
    row = _row_of(w, item)  # the shortest row of the published table
    assert len(row) >= 2
    ordered = sorted(row, key=row.get)
    outside = next(j for j in range(len(w.skus)) if j not in row)
    model = ShopperModel(attraction=1.5, eta=0.7)
    cases = [[], [outside, -1], ordered[:1], [ordered[0], ordered[0], -1, ordered[-1]], ordered]
    for shown in cases:
        by_hand = _chance_by_hand(row, shown, model)
        assert click_chance(w, item, shown, model) == pytest.approx(by_hand, rel=1e-12), shown
        rng = np.random.default_rng(0)
        assert next_view(w, item, shown, model, rng)[1] == click_chance(w, item, shown, model)
    assert click_chance(w, item, ordered, model) == pytest.approx(1.0)  # the whole row shown
    # one product of a row of two, by hand: T = (p, 1 - p), shown first: p (1 + a) / (p a + 1)
    p = row[ordered[-1]]
    assert _chance_by_hand({0: p, 1: 1 - p}, [0], model) == pytest.approx(p * 2.5 / (p * 1.5 + 1))


def _reversed_truth(w):
    truth = true_top_k(w)
    return lambda items, k: truth(items, k)[::-1]


def test_simulate_exposures_rows_are_the_sessions_exposures(w):
    recommend = _reversed_truth(w)
    sessions = simulate_sessions(w, recommend, 300, seed=4)
    rows = simulate_exposures(w, recommend, 300, seed=4)
    assert list(rows.columns) == list(EXPOSURE_COLUMNS)
    by_session = rows.groupby("session_id", sort=False)
    shown = sessions[sessions["exposures"] > 0].set_index("session_id")
    assert list(by_session.size().index) == list(shown.index)  # session order
    assert (by_session.size() == shown["exposures"]).all()
    clicked = rows["clicks"].map(sum)
    assert (by_session["clicks"].apply(lambda c: sum(map(sum, c))) == shown["clicked"]).all()
    assert np.allclose(by_session["expected_click"].sum(), shown["expected_clicks"], rtol=1e-12)
    assert set(clicked) <= {0, 1} and (clicked == rows["clicked_item"].notna()).all()
    for row in rows.itertuples():
        assert row.items == recommend(row.context, 10)[:10]
        assert row.propensities == [1.0] * len(row.items) and not row.explored
        if row.clicked_item is not None:
            assert row.items[row.clicks.index(1)] == row.clicked_item
        if row.final:
            assert row.expected_click == 0.0 and row.clicked_item is None
            continue
        current, on_screen = w.index[row.context[-1]], [w.index[s] for s in row.items]
        expected = _chance_by_hand(_row_of(w, current), on_screen, ShopperModel())
        assert row.expected_click == pytest.approx(expected, rel=1e-12)
    # one final exposure per session, its last; each context grows by the view that followed
    assert (by_session["final"].sum() == 1).all() and by_session["final"].last().all()
    for _, frame in by_session:
        contexts = list(frame["context"])
        clicked_items = list(frame["clicked_item"])[:-1]
        for before, after, item in zip(contexts[:-1], contexts[1:], clicked_items, strict=True):
            assert after[:-1] == before and (item is None or after[-1] == item)


def test_exploring_logs_the_propensities_of_the_shuffle(w):
    truth = true_top_k(w)
    asked: list[int] = []

    def recommend_batch(sessions, k):
        asked.append(k)
        return [truth(list(s), k) for s in sessions]

    exploration = Exploration(share=0.3, pool=15)
    rows = simulate_exposures(w, exploring(recommend_batch, exploration, seed=1), 400, seed=6)
    assert set(asked) == {15} and set(rows["logging_policy"]) == {"shuffle:top15:0.3"}
    top_hits = []
    for row in rows.itertuples():
        ranked = truth(row.context, 15)
        assert len(row.items) == 10 and set(row.items) <= set(ranked)
        if not row.explored:
            assert row.items == ranked[:10]
        formula = [0.7 * (item == ranked[r]) + 0.3 / 15 for r, item in enumerate(row.items)]
        assert row.propensities == pytest.approx(formula, rel=1e-12)
        top_hits.append(row.items[0] == ranked[0])
    # the propensity is the frequency: the model's best item is first with 0.7 + 0.3 / 15
    n, chance = len(top_hits), 0.7 + 0.3 / 15
    assert abs(np.mean(top_hits) - chance) < 4 * math.sqrt(chance * (1 - chance) / n)
    explored = rows["explored"].mean()
    assert abs(explored - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    again = simulate_exposures(w, exploring(recommend_batch, exploration, seed=1), 400, seed=6)
    assert again.equals(rows)


def test_interleaved_logs_the_team_of_every_item(w):
    truth = true_top_k(w)

    def best(sessions, k):
        return [truth(list(s), k) for s in sessions]

    def worst(sessions, k):
        return [truth(list(s), 2 * k)[::-1][:k] for s in sessions]

    rows = simulate_exposures(w, interleaved(best, worst, seed=2), 300, seed=7)
    assert set(rows["variant"]) == {"interleaving"} and rows["propensities"].isna().all()
    first_from = []
    for row in rows.itertuples():
        lists = {"champion": truth(row.context, 10), "challenger": worst([row.context], 10)[0]}
        assert len(row.teams) == len(row.items) == len(set(row.items)) == 10
        counts = {team: row.teams.count(team) for team in ("champion", "challenger")}
        assert abs(counts["champion"] - counts["challenger"]) <= 1
        for item, team in zip(row.items, row.teams, strict=True):
            assert item in lists[team]
        first_from.append(row.teams[0])
    # the coin of each first round is fair
    share = first_from.count("champion") / len(first_from)
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / len(first_from))


def test_split_assigns_sessions_as_the_server_does(w):
    truth = true_top_k(w)
    variants = {
        "a": lambda sessions, k: [truth(list(s), k) for s in sessions],
        "b": lambda sessions, k: [truth(list(s), k)[::-1] for s in sessions],
    }
    rows = simulate_exposures(w, split(variants, "exp"), 300, seed=8)
    per_session = rows.groupby("session_id")["variant"].agg(set)
    assert (per_session.map(len) == 1).all()
    weights = [("a", 1.0), ("b", 1.0)]
    assert all(stats.assign("exp", s, weights) in v for s, v in per_session.items())
    for row in rows.itertuples():
        assert row.items == variants[row.variant]([row.context], 10)[0]


def test_true_ctr_on_is_the_mean_click_chance_of_the_target_lists(w):
    rows = simulate_exposures(w, true_top_k(w), 200, seed=9)
    # the logged lists themselves: the exposures' own exact chances
    assert true_ctr_on(w, rows, list(rows["items"])) == pytest.approx(
        rows["expected_click"].mean(), rel=1e-12
    )
    targets = [list(reversed(items)) for items in rows["items"]]
    direct = [
        0.0
        if final
        else _chance_by_hand(
            _row_of(w, w.index[context[-1]]), [w.index[s] for s in target], ShopperModel()
        )
        for context, final, target in zip(rows["context"], rows["final"], targets, strict=True)
    ]
    assert true_ctr_on(w, rows, targets) == pytest.approx(np.mean(direct), rel=1e-12)
    assert true_ctr_on(w, rows, targets) < rows["expected_click"].mean()  # position bias
    with pytest.raises(ValueError, match="target lists"):
        true_ctr_on(w, rows, targets[:-1])
