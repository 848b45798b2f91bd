"""ml.offpolicy against values computed another way: the exploration's propensities against
Monte Carlo frequencies, IPS and SNIPS on a log worked out by hand, unbiasedness and interval
coverage in a simulated item-position world whose target click-through is known in closed
form, and the attraction model's fit, DM and DR in a simulated attraction world (where
item-position IPS is biased in a known direction)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, special, stats

from ml import offpolicy as ope

Z95 = stats.norm.ppf(0.975)


def _log(rows) -> pd.DataFrame:
    return pd.DataFrame.from_records(rows, columns=list(ope.LOG_COLUMNS))


# --- exploration --------------------------------------------------------------------------------


def test_share_zero_shows_the_top_k_with_propensity_one():
    ranked = [f"i{j}" for j in range(30)]
    rng = np.random.default_rng(0)
    for _ in range(20):
        shown = ope.explore(ranked, 5, ope.Exploration(share=0.0, pool=20), rng)
        assert shown.items == ranked[:5]
        assert shown.propensities == [1.0] * 5
        assert shown.explored is False


def test_share_one_shows_a_permutation_of_the_top_m_with_propensity_one_over_m():
    ranked = [f"i{j}" for j in range(30)]
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(200):
        shown = ope.explore(ranked, 4, ope.Exploration(share=1.0, pool=12), rng)
        assert shown.explored is True
        assert len(shown.items) == 4 and len(set(shown.items)) == 4
        assert set(shown.items) <= set(ranked[:12])
        assert shown.propensities == pytest.approx([1 / 12] * 4)
        seen |= set(shown.items)
    assert seen == set(ranked[:12])  # every item of the pool shows up, none beyond it


def test_mixture_propensities_match_monte_carlo_frequencies():
    share, pool, k, draws = 0.3, 6, 3, 30_000
    ranked = [f"i{j}" for j in range(10)]
    exploration = ope.Exploration(share=share, pool=pool)
    rng = np.random.default_rng(2)
    counts = np.zeros((k, pool))
    for _ in range(draws):
        shown = ope.explore(ranked, k, exploration, rng)
        for r, (item, p) in enumerate(zip(shown.items, shown.propensities, strict=True)):
            j = ranked.index(item)
            assert j < pool
            # the formula, written out: (1 - share) [item is rank r] + share / M
            assert p == pytest.approx((1 - share) * (j == r) + share / pool)
            counts[r, j] += 1
    expected = np.array(
        [[(1 - share) * (j == r) + share / pool for j in range(pool)] for r in range(k)]
    )
    chi2 = float(((counts - draws * expected) ** 2 / (draws * expected)).sum())
    assert stats.chi2.sf(chi2, df=k * (pool - 1)) > 1e-3
    # and a wrong formula (no exploration mass on the model's own item) is rejected
    wrong = np.full((k, pool), 1 / pool) * share + (1 - share) * np.eye(k, pool) * 0.9
    wrong /= wrong.sum(axis=1, keepdims=True)
    chi2_wrong = float(((counts - draws * wrong) ** 2 / (draws * wrong)).sum())
    assert stats.chi2.sf(chi2_wrong, df=k * (pool - 1)) < 1e-6


def test_pool_smaller_than_k_shuffles_the_top_k():
    ranked = [f"i{j}" for j in range(10)]
    exploration = ope.Exploration(share=1.0, pool=2)
    assert exploration.size(5) == 5
    shown = ope.explore(ranked, 5, exploration, np.random.default_rng(3))
    assert sorted(shown.items) == sorted(ranked[:5])
    assert shown.propensities == pytest.approx([0.2] * 5)


def test_fewer_items_than_m_shuffle_what_there_is():
    ranked = ["a", "b", "c", "a"]  # a repeat counts once
    rng = np.random.default_rng(4)
    shown = ope.explore(ranked, 5, ope.Exploration(share=1.0, pool=20), rng)
    assert sorted(shown.items) == ["a", "b", "c"]
    assert shown.propensities == pytest.approx([1 / 3] * 3)
    shown = ope.explore(ranked, 2, ope.Exploration(share=0.5, pool=20), np.random.default_rng(5))
    for r, (item, p) in enumerate(zip(shown.items, shown.propensities, strict=True)):
        assert p == pytest.approx(0.5 * (item == ["a", "b", "c"][r]) + 0.5 / 3)
    assert ope.explore([], 3, ope.Exploration(), rng).items == []


def test_exploration_name_and_bad_arguments():
    assert ope.Exploration().name == "shuffle:top20:0.05"
    assert ope.Exploration(share=0.1, pool=30).name == "shuffle:top30:0.1"
    with pytest.raises(ValueError, match="share"):
        ope.Exploration(share=1.5)
    with pytest.raises(ValueError, match="share"):
        ope.Exploration(share=-0.1)
    with pytest.raises(ValueError, match="pool"):
        ope.Exploration(pool=0)
    with pytest.raises(ValueError, match="k must"):
        ope.explore(["a"], 0, ope.Exploration(), np.random.default_rng(0))


# --- IPS and SNIPS by hand ----------------------------------------------------------------------


def _hand_log() -> tuple[pd.DataFrame, list[list[str]]]:
    rows = [
        ("e1", "s1", ["x"], ["a", "b"], [0.5, 0.25], [1, 0], True),
        ("e2", "s1", ["x"], ["c", "a"], [0.5, 0.5], [0, 1], True),
        ("e3", "s2", ["y"], ["b", "a", "d"], [0.25, 0.5, 1.0], [0, 0, 1], True),
        ("e4", "s2", ["y"], ["a", "c"], [1.0, 0.5], [1, 1], False),
    ]
    targets = [["a", "c"], ["d", "b"], ["b", "c", "d"], ["d", "c"]]
    return _log(rows), targets


def test_ips_and_snips_on_a_log_worked_out_by_hand():
    log, targets = _hand_log()
    est = ope.replay(log, targets, model=None)
    assert set(est) == {"ips", "snips"}
    # w: e1 [2, 0], e2 [0, 0], e3 [4, 0, 1], e4 [0, 2]
    # y = sum clicks * w: e1 2, e2 0, e3 1, e4 2 -> IPS = 5 / 4
    assert est["ips"].value == pytest.approx(1.25)
    # SNIPS slot 0: (1*2 + 0 + 0 + 0) / (2 + 0 + 4 + 0) = 1/3, all 4 exposures have it
    # slot 1: (0 + 0 + 0 + 1*2) / (0 + 0 + 0 + 2) = 1; slot 2: only e3, 1/1 times share 1/4
    assert est["snips"].value == pytest.approx(1 / 3 + 1 + 1 / 4)
    # session sums S = [2, 3], N = [2, 2]: u = (S - 1.25 N) / 2 = [-0.25, 0.25],
    # var(u, ddof 1) / 2 = 0.0625, se 0.25
    assert est["ips"].low == pytest.approx(1.25 - Z95 * 0.25)
    assert est["ips"].high == pytest.approx(1.25 + Z95 * 0.25)
    # mean weights W = [1, 0, 5/3, 1]: ESS = (11/3)^2 / (1 + 25/9 + 1) = 121 / 43
    assert est["ips"].ess == pytest.approx(121 / 43)
    assert est["snips"].ess == pytest.approx(121 / 43)
    for e in est.values():
        assert (e.exposures, e.sessions, e.matched) == (4, 2, 3)


def test_snips_value_and_interval_against_the_delta_method_by_numerical_gradients():
    rng = np.random.default_rng(9)
    rows, targets = [], []
    for i in range(60):
        n = int(rng.integers(1, 4))
        items = [f"i{j}" for j in rng.choice(6, size=n, replace=False)]
        target = [f"i{j}" for j in rng.choice(6, size=n, replace=False)]
        clicks = (rng.random(n) < 0.4).astype(int).tolist()
        rows.append(
            (f"e{i}", f"s{i % 17}", [], items, rng.uniform(0.2, 1, n).tolist(), clicks, True)
        )
        targets.append(target)
    log = _log(rows)
    est = ope.replay(log, targets, model=None)["snips"]
    # each session's sums per slot k: a_k = sum c w, b_k = sum w, m_k = exposures with slot k,
    # and its exposures N; SNIPS is f(session means) = sum_k a_k / b_k * m_k / N
    sessions = sorted(set(log["session_id"]))
    x = np.zeros((len(sessions), 10))
    for row, target in zip(rows, targets, strict=True):
        s = sessions.index(row[1])
        for k, (item, p, c) in enumerate(zip(row[3], row[4], row[5], strict=True)):
            w = (target[k] == item) / p
            x[s, 3 * k : 3 * k + 3] += [c * w, w, 1]
        x[s, 9] += 1

    def f(mean):
        return sum(mean[3 * k] / mean[3 * k + 1] * mean[3 * k + 2] / mean[9] for k in range(3))

    mean = x.mean(axis=0)
    assert est.value == pytest.approx(f(mean))
    eps = 1e-7
    gradient = np.array([(f(mean + eps * e) - f(mean - eps * e)) / (2 * eps) for e in np.eye(10)])
    influence = x @ gradient
    se = math.sqrt(np.var(influence, ddof=1) / len(sessions))
    assert est.low == pytest.approx(est.value - Z95 * se, rel=1e-5)
    assert est.high == pytest.approx(est.value + Z95 * se, rel=1e-5)


def test_a_zero_or_missing_propensity_raises_naming_the_exposure():
    log, targets = _hand_log()
    log.at[2, "propensities"] = [0.25, 0.0, 1.0]
    with pytest.raises(ValueError, match="exposure e3"):
        ope.replay(log, targets, model=None)
    log.at[2, "propensities"] = [0.25, float("nan"), 1.0]
    with pytest.raises(ValueError, match="exposure e3"):
        ope.replay(log, targets, model=None)
    log.at[2, "propensities"] = [0.25, 0.5]
    with pytest.raises(ValueError, match="exposure e3: propensities"):
        ope.replay(log, targets, model=None)


def test_no_matched_exposure_gives_zero_and_zero_support():
    log, _ = _hand_log()
    targets = [["z", "y"], ["z", "y"], ["z", "y", "w"], ["z", "y"]]
    est = ope.replay(log, targets, model=None)
    for name in ("ips", "snips"):
        assert est[name].value == 0.0
        assert est[name].matched == 0
        assert est[name].ess == 0.0


def test_equal_weights_make_snips_the_on_policy_mean():
    # share 0: the target is the logged list, every propensity 1, at most one click each
    rng = np.random.default_rng(6)
    rows = []
    for i in range(50):
        n = 3 if i % 3 else 2  # lists of different lengths
        items = [f"i{(i + j) % 7}" for j in range(n)]
        clicks = [0] * n
        if rng.random() < 0.4:
            clicks[int(rng.integers(n))] = 1
        rows.append((f"e{i}", f"s{i // 4}", ["x"], items, [1.0] * n, clicks, False))
    log = _log(rows)
    est = ope.replay(log, list(log["items"]), model=None)
    on_policy = float(np.mean([any(c) for c in log["clicks"]]))
    assert est["snips"].value == pytest.approx(on_policy)
    assert est["ips"].value == pytest.approx(on_policy)
    logged = ope.logged_ctr(log)
    assert logged.value == pytest.approx(on_policy)
    assert est["snips"].low == pytest.approx(logged.low)
    assert est["ips"].ess == pytest.approx(50)


def test_an_empty_log_gives_nan_and_one_session_no_interval():
    empty = _log([])
    transitions = ope.TransitionModel.fit([["a", "b"]])
    est = ope.replay(empty, [], ope.AttractionModel(transitions))
    assert set(est) == set(ope.ESTIMATORS)
    for e in [*est.values(), ope.logged_ctr(empty)]:
        assert math.isnan(e.value) and (e.exposures, e.sessions, e.matched) == (0, 0, 0)
    assert ope.target_lists(lambda contexts, k: pytest.fail("called"), empty) == []
    one = ope.replay(_log([("e1", "s1", ["a"], ["b"], [0.5], [1], True)]), [["b"]], None)["ips"]
    assert one.value == 2.0 and math.isnan(one.low) and math.isnan(one.high)
    with pytest.raises(ValueError, match="1 logged exposures"):
        ope.replay(_log([("e1", "s1", ["a"], ["b"], [0.5], [1], True)]), [], None)


def test_logged_ctr_is_clicks_per_non_explored_exposure():
    """The quantity the estimators estimate: e4, the only unexplored exposure, has two clicks,
    so 2.0 (its clicked share would be 1.0)."""
    log, _ = _hand_log()
    logged = ope.logged_ctr(log)
    assert logged.estimator == "logged"
    assert (logged.value, logged.exposures, logged.sessions) == (2.0, 1, 1)


# --- unbiasedness and coverage in an item-position world ----------------------------------------

ITEMS = [f"p{j}" for j in range(15)]
ATTRACT = dict(zip(ITEMS, np.linspace(0.35, 0.05, 15), strict=True))  # g(item)
THETA = np.array([1.0, 0.7, 0.5, 0.35, 0.25])  # theta(position)
TARGET = ["p4", "p0", "p6", "p2", "p7"]  # inside the top M = 8 of the fixed ranking


def _item_position_log(rng: np.random.Generator, n: int, exploration: ope.Exploration):
    """Click on each shown item independently with chance u_s g(item) theta(position), u_s a
    session factor 0.5 or 1.5 (mean 1), so exposures of a session are correlated."""
    rows = []
    factor = rng.choice([0.5, 1.5], size=n // 4 + 1)
    for i in range(n):
        shown = ope.explore(ITEMS, 5, exploration, rng)
        chance = factor[i // 4] * np.array([ATTRACT[j] for j in shown.items]) * THETA
        clicks = (rng.random(5) < chance).astype(int).tolist()
        rows.append(
            (f"e{i}", f"s{i // 4}", [], shown.items, shown.propensities, clicks, shown.explored)
        )
    return _log(rows)


def test_ips_is_unbiased_and_its_interval_covers_in_an_item_position_world():
    exact = sum(ATTRACT[j] * t for j, t in zip(TARGET, THETA, strict=True))
    exploration = ope.Exploration(share=0.3, pool=8)
    rng = np.random.default_rng(7)
    ips, covered, snips_covered = [], 0, 0
    replications = 200
    for _ in range(replications):
        log = _item_position_log(rng, 1000, exploration)
        est = ope.replay(log, [TARGET] * len(log), model=None)
        ips.append(est["ips"].value)
        covered += est["ips"].low <= exact <= est["ips"].high
        snips_covered += est["snips"].low <= exact <= est["snips"].high
    se = np.std(ips, ddof=1) / math.sqrt(replications)
    assert abs(np.mean(ips) - exact) < 3 * se
    assert 0.90 <= covered / replications <= 0.99
    assert 0.90 <= snips_covered / replications <= 0.99
    # the logging policy's own click-through differs: the test can tell the two apart
    logged = sum(ATTRACT[j] * t for j, t in zip(ITEMS[:5], THETA, strict=True))
    assert abs(logged - exact) > 10 * se


# --- the attraction world ----------------------------------------------------------------------


N_ITEMS = 100
TRUE_ALPHA, TRUE_ETA = 3.0, 0.8


@pytest.fixture(scope="module")
def attraction_world():
    return _attraction_world()


def _attraction_world(concentration=0.2, alpha=TRUE_ALPHA, eta=TRUE_ETA, seed=8):
    """A TransitionModel fitted on sessions drawn from a known transition matrix (rows
    Dirichlet(0.2): a few likely next items) is the truth's v; clicks follow the attraction
    model with alpha 3, eta 0.8 (strong position effects). The champion ranks
    a context's 12 most likely next items in a fixed scrambled order; the target shows the 5
    most likely, best first (so every target item is in the champion's top M = 12)."""
    rng = np.random.default_rng(seed)
    items = [f"p{j}" for j in range(N_ITEMS)]
    matrix = rng.dirichlet(np.full(N_ITEMS, concentration), size=N_ITEMS)
    sessions = []
    for _ in range(4000):
        current = int(rng.integers(N_ITEMS))
        session = [items[current]]
        for _ in range(int(rng.integers(2, 8))):
            current = int(rng.choice(N_ITEMS, p=matrix[current]))
            session.append(items[current])
        sessions.append(session)
    transitions = ope.TransitionModel.fit(sessions)
    truth = ope.AttractionModel(transitions, alpha=alpha, eta=eta)
    v = transitions.matrix(items, [items] * N_ITEMS)
    order = np.argsort(-v, axis=1, kind="stable")
    best = {items[i]: [items[j] for j in order[i, :5]] for i in range(N_ITEMS)}
    champion = {
        items[i]: [items[j] for j in rng.permutation(order[i, :12])]
        + [items[j] for j in order[i, 12:]]
        for i in range(N_ITEMS)
    }
    exploration = ope.Exploration(share=0.5, pool=12)
    rows = []
    for e in range(20_000):
        last = items[int(rng.integers(N_ITEMS))]
        shown = ope.explore(champion[last], 5, exploration, rng)
        chances = truth.click_probabilities([last], shown.items)
        choice = int(rng.choice(6, p=np.append(chances, 1 - chances.sum())))
        clicks = [int(k == choice) for k in range(5)]
        rows.append(
            (
                f"e{e}",
                f"s{e // 5}",
                ["p0", last],
                shown.items,
                shown.propensities,
                clicks,
                shown.explored,
            )
        )
    log = _log(rows)

    def recommend_batch(contexts, k):
        return [best[c[-1]][:k] for c in contexts]

    return {
        "truth": truth,
        "transitions": transitions,
        "log": log,
        "recommend": recommend_batch,
        "matrix": matrix,
        "items": items,
    }


def test_transition_model_recovers_the_transition_matrix(attraction_world):
    transitions, matrix, items = (attraction_world[k] for k in ("transitions", "matrix", "items"))
    v = transitions.matrix(items, [items] * N_ITEMS)
    # about 1,000 views per row with rows of 100 items: each entry within a few binomial sds
    counts = np.array([transitions.row_totals.get(i, 0) for i in items])
    sd = np.sqrt(matrix * (1 - matrix) / counts[:, None])
    assert np.abs(v - matrix).max() < 0.01 + 6 * sd.max()
    assert np.median(np.abs(v - matrix) / np.maximum(sd, 1e-4)) < 1.5
    assert v.sum(axis=1) == pytest.approx(np.ones(N_ITEMS))


def test_transition_model_by_hand():
    model = ope.TransitionModel.fit([["a", "b", "a", "c"], ["b", "a"]], smoothing=1.0)
    # views a 3, b 2, c 1 (pop 1/2, 1/3, 1/6); pairs a->b 1, a->c 1, b->a 2
    v = model.probabilities("a", ["b", "c", "a", "zz"])
    assert v == pytest.approx([(1 + 1 / 3) / 3, (1 + 1 / 6) / 3, (0 + 1 / 2) / 3, (0.5 / 6) / 3])
    assert model.probabilities(None, ["a", "b"]) == pytest.approx([1 / 2, 1 / 3])
    assert model.probabilities("unknown", ["c", "zz"]) == pytest.approx([1 / 6, 0.5 / 6])
    with pytest.raises(ValueError, match="view"):
        ope.TransitionModel.fit([[], []])


def test_attraction_model_by_hand():
    model = ope.TransitionModel.fit([["a", "b", "a", "c"], ["b", "a"]])
    attraction = ope.AttractionModel(model, alpha=1.0, eta=1.0)
    v = model.probabilities("a", ["c", "a"])  # 7/18, 1/6
    b = np.array([2.0, 1.5])  # 1 + 1/1, 1 + 1/2
    z = 1 + v[0] * 1.0 + v[1] * 0.5
    assert attraction.normalizer(["x", "a"], ["c", "a"]) == pytest.approx(z)
    assert attraction.click_probabilities(["x", "a"], ["c", "a"]) == pytest.approx(v * b / z)
    assert attraction.ctr(["x", "a"], ["c", "a"]) == pytest.approx((v * b).sum() / z)
    with pytest.raises(ValueError, match="alpha"):
        ope.AttractionModel(model, alpha=0.0)


def test_attraction_fit_recovers_alpha_and_eta(attraction_world):
    fitted = ope.AttractionModel(attraction_world["transitions"]).fit(attraction_world["log"])
    assert fitted.alpha == pytest.approx(TRUE_ALPHA, rel=0.15)
    assert fitted.eta == pytest.approx(TRUE_ETA, rel=0.15)
    # the start does not matter
    other = ope.AttractionModel(attraction_world["transitions"], alpha=0.1, eta=3.0)
    refit = other.fit(attraction_world["log"])
    assert refit.alpha == pytest.approx(fitted.alpha, rel=1e-3)
    assert refit.eta == pytest.approx(fitted.eta, rel=1e-3)


def test_attraction_fit_maximizes_the_stated_likelihood(attraction_world):
    # a small log, some exposures with two clicks, against the likelihood written per exposure
    transitions = attraction_world["transitions"]
    log = attraction_world["log"].head(300).copy()
    log["clicks"] = [[1, 0, 1, 0, 0] if i % 7 == 0 else c for i, c in enumerate(log["clicks"])]

    def log_likelihood(theta):
        leave = special.expit(np.clip(theta[2], -9.0, 4.0))  # the fit's bounds
        model = ope.AttractionModel(transitions, *np.exp(theta[:2]), leave)
        total = 0.0
        for context, items, clicks in zip(log["context"], log["items"], log["clicks"], strict=True):
            chances = model.click_probabilities(context, items)
            clicked = np.flatnonzero(clicks)
            total += np.log(chances[clicked]).sum() if len(clicked) else np.log(1 - chances.sum())
        return total

    best = optimize.minimize(
        lambda th: -log_likelihood(th),
        [0.0, 0.0, -2.0],
        method="Nelder-Mead",
        options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000},
    )
    fitted = ope.AttractionModel(transitions).fit(log)
    assert fitted.alpha == pytest.approx(math.exp(best.x[0]), rel=1e-3)
    assert fitted.eta == pytest.approx(math.exp(best.x[1]), rel=1e-3)
    assert fitted.leave == pytest.approx(special.expit(best.x[2]), rel=1e-2, abs=1e-4)


def test_attraction_fit_reads_leaving_apart_from_attraction(attraction_world):
    """A fifth of the widgets are left unclicked whatever they show (the shopper leaves): the
    fit finds that share as `leave` and still recovers alpha and eta; its DM of the logged
    lists then matches the clicks that were left."""
    log = attraction_world["log"].copy()
    rng = np.random.default_rng(11)
    gone = rng.random(len(log)) < 0.2
    log["clicks"] = [[0] * len(c) if g else c for c, g in zip(log["clicks"], gone, strict=True)]
    fitted = ope.AttractionModel(attraction_world["transitions"]).fit(log)
    assert fitted.leave == pytest.approx(0.2, abs=0.03)
    assert fitted.alpha == pytest.approx(TRUE_ALPHA, rel=0.2)
    assert fitted.eta == pytest.approx(TRUE_ETA, rel=0.2)
    predicted = np.mean(
        [fitted.ctr(x, i) for x, i in zip(log["context"], log["items"], strict=True)]
    )
    observed = np.mean([sum(c) for c in log["clicks"]])
    assert predicted == pytest.approx(observed, rel=0.05)


def test_attraction_fit_without_clicks_raises(attraction_world):
    log = attraction_world["log"].head(50).copy()
    log["clicks"] = [[0] * len(i) for i in log["items"]]
    with pytest.raises(ValueError, match="no clicks"):
        ope.AttractionModel(attraction_world["transitions"]).fit(log)


def test_dr_finds_the_target_ctr_where_item_position_ips_is_biased(attraction_world):
    truth, log = attraction_world["truth"], attraction_world["log"]
    targets = ope.target_lists(attraction_world["recommend"], log)
    exact = float(np.mean([truth.ctr(c, t) for c, t in zip(log["context"], targets, strict=True)]))
    fitted = ope.AttractionModel(attraction_world["transitions"]).fit(log)
    est = ope.replay(log, targets, fitted)
    assert set(est) == {"ips", "snips", "dm", "dr"}
    dr, ips = est["dr"], est["ips"]
    dr_se = (dr.high - dr.low) / (2 * Z95)
    assert abs(dr.value - exact) < 3 * dr_se
    assert abs(est["dm"].value - exact) < 0.01
    # the target puts the strongest items at the top, so its own items compete harder than
    # in the (weaker) logged lists: IPS credits it with clicks it would not get. Its bias,
    # without click noise (clicks replaced by their exact chances), and as estimated:
    expected = log.copy()
    expected["clicks"] = [
        list(truth.click_probabilities(c, i))
        for c, i in zip(log["context"], log["items"], strict=True)
    ]
    assert ope.replay(expected, targets, None)["ips"].value > exact + 0.05
    assert ips.low > exact
    assert (
        dr.matched
        == est["ips"].matched
        == len(log)
        - int(
            sum(
                all(a != b for a, b in zip(i, t, strict=True))
                for i, t in zip(log["items"], targets, strict=True)
            )
        )
    )


def test_dm_and_dr_on_a_log_worked_out_by_hand():
    transitions = ope.TransitionModel.fit([["a", "b", "a", "c"], ["b", "a"]])
    model = ope.AttractionModel(transitions, alpha=1.0, eta=1.0)
    rows = [
        ("e1", "s1", ["a"], ["b", "c"], [0.5, 0.25], [1, 0], True),
        ("e2", "s2", [], ["a", "b"], [1.0, 1.0], [0, 0], False),
    ]
    targets = [["b", "a"], ["c", "a"]]
    # v after a: b 4/9, c 7/18, a 1/6; no context: pop a 1/2, b 1/3, c 1/6; b = [2, 3/2]
    b = np.array([2.0, 1.5])

    def chances(v):
        z = 1 + v[0] * 1.0 + v[1] * 0.5
        return v * b / z, z

    target1, z_t1 = chances(np.array([4 / 9, 1 / 6]))
    logged1, z_l1 = chances(np.array([4 / 9, 7 / 18]))
    target2, _ = chances(np.array([1 / 6, 1 / 2]))
    dm = [target1.sum(), target2.sum()]
    # e1 matches at slot 0 only (w 2, clicked); e2 matches nowhere: DR_2 = DM_2
    dr = [dm[0] + 2 * (1 - logged1[0]) * z_l1 / z_t1, dm[1]]
    est = ope.replay(_log(rows), targets, model)
    assert est["dm"].value == pytest.approx(np.mean(dm))
    assert est["dr"].value == pytest.approx(np.mean(dr))
    assert est["dr"].matched == 1


def test_dr_with_the_true_model_and_expected_clicks_is_dm(attraction_world):
    # E[DR | lists] = DM when the model is the truth: replace clicks by their exact chances
    truth = attraction_world["truth"]
    log = attraction_world["log"].head(2000).copy()
    log["clicks"] = [
        list(truth.click_probabilities(c, i))
        for c, i in zip(log["context"], log["items"], strict=True)
    ]
    targets = ope.target_lists(attraction_world["recommend"], log)
    est = ope.replay(log, targets, truth)
    assert est["dr"].value == pytest.approx(est["dm"].value, rel=1e-9)
    assert est["dm"].ess == 2000


# --- the marts -> the replay log ---------------------------------------------------------------


def test_replay_log_from_mart_rows():
    def row(
        exposure,
        session,
        problem="recommender",
        mode="ab",
        error=False,
        items=None,
        propensities=None,
        context=None,
        explored=False,
    ):
        return {
            "exposure_id": exposure,
            "session_id": session,
            "problem": problem,
            "mode": mode,
            "error": error,
            "items": None if items is None else json.dumps(items),
            "propensities": None if propensities is None else json.dumps(propensities),
            "context": None if context is None else json.dumps(context),
            "teams": None,
            "explored": explored,
        }

    exposures = pd.DataFrame(
        [
            row(
                "e1",
                "s1",
                items=["a", "b"],
                propensities=[0.5, 1.0],
                context=["x", "y"],
                explored=True,
            ),
            row("e2", "s1", mode=None, items=["c"], propensities=[1.0], context=[]),
            # interleaved: dropped by its mode even with propensities
            row(
                "e3",
                "s2",
                mode="interleaving",
                items=["a", "b"],
                propensities=[1.0, 1.0],
                context=["x"],
            ),
            row("e4", "s2", error=True, items=["a"], propensities=[1.0], context=["x"]),
            row("e5", "s3", problem="conversion"),
            row("e6", "s3", items=["a"], context=["x"]),  # an older log: no propensities
            row(
                "e7", "s4", items=["d", "e"], propensities=[1.0, 1.0], context=["z"], explored=None
            ),
        ]
    )
    clicks = pd.DataFrame(
        {
            "exposure_id": ["e1", "e1", "e3", "e7"],
            "item": ["b", "zz", "a", "d"],
            "clicked_at": pd.NaT,
        }
    )
    log = ope.replay_log(exposures, clicks)
    assert list(log.columns) == list(ope.LOG_COLUMNS)
    assert log["exposure_id"].tolist() == ["e1", "e2", "e7"]
    first = log.iloc[0]
    assert first["context"] == ["x", "y"]
    assert first["items"] == ["a", "b"]
    assert first["propensities"] == [0.5, 1.0]
    assert first["clicks"] == [0, 1]  # the click on "zz", not shown, is ignored
    assert bool(first["explored"]) is True
    assert log.iloc[1]["clicks"] == [0]
    assert log.iloc[2]["clicks"] == [1, 0]
    assert bool(log.iloc[2]["explored"]) is False


def test_replay_log_reads_the_frames_duckdb_gives():
    # the marts' types as DuckDB hands them over: varchar JSON, nullable boolean and mode
    import duckdb

    con = duckdb.connect()
    exposures = con.sql(
        """
        select * from (values
            ('e1', 's1', 'recommender', 'ab', false, '["a","b"]', '["x"]', '[0.5,0.5]', true),
            ('e2', 's1', 'recommender', null, null, '["c"]', '["x","a"]', '[1.0]', null),
            ('e3', 's2', 'recommender', 'interleaving', false, '["a"]', '["x"]', null, false),
            ('e4', 's2', 'recommender', 'ab', true, '["a"]', '["x"]', '[1.0]', false)
        ) as t(exposure_id, session_id, problem, mode, error, items, context, propensities,
               explored)
        """
    ).df()
    clicks = con.sql(
        "select * from (values ('e1', 'a', now()), ('e2', 'c', now()))"
        " as t(exposure_id, item, clicked_at)"
    ).df()
    log = ope.replay_log(exposures, clicks)
    assert log["exposure_id"].tolist() == ["e1", "e2"]
    assert log["clicks"].tolist() == [[1, 0], [1]]
    assert log["explored"].tolist() == [True, False]
    assert ope.replay(log, [["a", "b"], ["c"]], None)["ips"].value == pytest.approx((2 + 1) / 2)


def test_target_lists_asks_once_and_cuts_to_each_exposure():
    log, _ = _hand_log()
    calls = []

    def recommend_batch(contexts, k):
        calls.append((contexts, k))
        return [[f"{c[-1]}{j}" for j in range(k)] for c in contexts]

    lists = ope.target_lists(recommend_batch, log)
    assert len(calls) == 1 and calls[0][1] == 3
    assert calls[0][0] == [["x"], ["x"], ["y"], ["y"]]
    assert lists == [["x0", "x1"], ["x0", "x1"], ["y0", "y1", "y2"], ["y0", "y1"]]


# --- the click model's next views, fitted on the log too ----------------------------------------


def test_log_transitions_and_their_widget_weights_by_hand():
    base = ope.TransitionModel.fit([["a", "b", "a", "c"], ["b", "a"]])  # views a 3, b 2, c 1
    window = [f"w{j}" for j in range(26)]  # contexts cut to their latest 25, as a server cuts
    log = _log(
        [
            ("e1", "s1", ["a", "b"], ["c", "a"], [1.0, 1.0], [1, 0], False),
            ("e2", "s1", ["a", "b", "c"], ["b", "d"], [1.0, 1.0], [0, 0], False),
            ("e3", "s1", ["a", "b", "c", "d"], ["a", "c"], [1.0, 1.0], [0, 0], False),
            ("f1", "s2", window[:25], ["a"], [1.0], [0], False),
            ("f2", "s2", window[1:], ["a"], [1.0], [0], False),
            ("g1", "s3", ["b"], ["a"], [1.0], [0], False),  # one view: no transition
        ]
    )
    src, dst, previous = ope.log_transitions(log)
    assert list(zip(src, dst, strict=True)) == [
        ("a", "b"),
        ("b", "c"),
        ("c", "d"),
        ("w23", "w24"),
        ("w24", "w25"),
    ]
    assert previous.tolist() == [-1, 0, 1, -1, 3]  # e1 was on screen for b -> c, e2 for c -> d

    plain = base.with_log(log)  # every transition counts 1
    # views a 3, b 3, c 2, d 1, w24 1, w25 1 (total 11); b's row: a 2, c 1
    assert plain.probabilities("b", ["c"]) == pytest.approx([(1 + 2 / 11) / 4])
    assert plain.probabilities("c", ["d"]) == pytest.approx([(1 + 1 / 11) / 2])

    model = ope.AttractionModel(base, alpha=1.0, eta=1.0)
    weighted = base.with_log(log, model)
    # b -> c under e1 (after b: v(c) = (0 + 1/6) / 3, v(a) = (2 + 1/2) / 3; c at rank 1, b 2):
    # Z = 1 + 1/18 + (5/6)(1/2) = 53/36, weight Z / 2 = 53/72
    w_c = 53 / 72
    # c -> d under e2 (c has no next views: pop, b 1/3, d the floor 0.5/6; d at rank 2, b 3/2):
    # Z = 1 + 1/3 + (1/12)(1/2) = 11/8, weight (11/8) / (3/2) = 11/12
    w_d = 11 / 12
    # w24 -> w25 under f1: neither is known nor shown, Z = 1 + v(a | w24) = 1 + 1/2, b = 1
    w_f = 1.5
    total = 6 + 1 + w_c + w_d + 1 + w_f
    assert weighted.total_views == pytest.approx(total)
    assert weighted.probabilities("b", ["c", "a"]) == pytest.approx(
        [(w_c + (1 + w_c) / total) / (2 + w_c + 1), (2 + 3 / total) / (2 + w_c + 1)]
    )
    assert weighted.probabilities("c", ["d"]) == pytest.approx([(w_d + w_d / total) / (w_d + 1)])
    assert base.probabilities("b", ["c"]) == pytest.approx([(1 / 6) / 3])  # base unchanged


def test_click_model_fitted_on_the_log_recovers_a_world_sparsely_trained():
    """The simulator's world (its shopper has alpha = eta = 1), next views learned from 500
    training sessions for 1,000 products: v smoothed toward popularity is wrong on most rows,
    and alpha, eta and leave fitted on the log alone bend to absorb it (alpha 24, leave 0.49
    here), so DM of POP, whose items are mostly off every row's true support, came out twice
    its truth. With the log's own transitions in v, the fit finds the shopper, and DM is
    close to the exact click-through the simulator computes on the logged contexts."""
    from ml.recommend.models import PopRecommender, SKNNRecommender
    from ml.simulate import browsing_sessions, exploring, simulate_exposures, true_ctr_on, world
    from ml.synthetic import GeneratorConfig

    w = world(GeneratorConfig(seed=1, n_products=1000))
    train = browsing_sessions(w, 1500, 1)
    sknn, pop = SKNNRecommender().fit(train), PopRecommender().fit(train)
    log = simulate_exposures(w, exploring(sknn, ope.Exploration(), 1), 1500, 1)
    model = ope.fit_click_model(ope.TransitionModel.fit(train), log)
    assert model.alpha == pytest.approx(1.0, rel=0.5)
    assert model.leave == pytest.approx(log["final"].mean(), abs=0.03)  # who left: the last
    for recommender in (pop, sknn):
        targets = ope.target_lists(recommender.recommend_batch, log)
        truth = true_ctr_on(w, log, targets)
        found = ope.replay(log, targets, model)
        assert found["dm"].value == pytest.approx(truth, rel=0.1)
        assert found["dr"].low < truth < found["dr"].high
