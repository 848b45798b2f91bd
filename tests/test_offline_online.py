"""The offline-vs-online table against the simulator's truth: TailFirst keeps its base's HR@20
by construction, and on a small world whose click model the replay's attraction model states
exactly, DR estimates a target far from the champion where IPS, blind to how a list's items
compete, does not."""

from __future__ import annotations

import json

import pytest

from ml.offline_online import METHODS, TailFirst, offline_online
from ml.offpolicy import Exploration
from ml.recommend.evaluate import evaluate, popularity_counts
from ml.recommend.models import SKNNRecommender
from ml.simulate import ShopperModel, browsing_sessions, true_top_k, world
from ml.synthetic import GeneratorConfig

# 200 products: the training sessions count every row of T often, so the fitted click model
# is the simulator's own (the test is about the estimators, not about learning T).
SMALL = GeneratorConfig(days=1, sessions_per_day=100, seed=5, n_products=200)


@pytest.fixture(scope="module")
def small():
    return world(SMALL)


class Truth:
    """The truth's own ranking (`true_top_k`) as a batch model."""

    algorithm = "truth"

    def __init__(self, w):
        self.rank = true_top_k(w)

    def recommend_batch(self, sessions, k=20):
        return [self.rank(list(s), k) for s in sessions]


def test_tail_first_has_its_bases_hr_at_20_and_reverses_its_top_20(small):
    train = browsing_sessions(small, 6000, seed=1)
    test = browsing_sessions(small, 600, seed=2)
    base = SKNNRecommender().fit(train)
    tail = TailFirst(base, window=20)
    contexts = [s[:2] for s in test[:50]]
    for k in (20, 10, 25):
        top = base.recommend_batch(contexts, max(k, 20))
        assert tail.recommend_batch(contexts, k) == [(t[:20][::-1] + t[20:])[:k] for t in top]
    assert tail.recommend(contexts[0], 10) == base.recommend(contexts[0], 20)[19:9:-1]
    popularity = popularity_counts(train)
    scores = {
        name: evaluate(test, recommend_batch=m.recommend_batch, k=20, popularity=popularity)
        for name, m in (("base", base), ("tail", tail))
    }
    assert scores["base"].predictions > 500
    assert scores["tail"].hr == scores["base"].hr > 0.3
    assert scores["tail"].mrr < scores["base"].mrr / 2  # the hits moved to the bottom
    assert tail.algorithm == "tail-first(sknn)"
    with pytest.raises(ValueError, match="window"):
        TailFirst(base, window=1)


@pytest.fixture(scope="module")
def table(small):
    truth = Truth(small)
    train = browsing_sessions(small, 30_000, seed=1)
    models = {"weak-first": TailFirst(truth), "truth": truth}
    offline = {"truth": {"hr_at_20": 0.5, "mrr_at_20": 0.2}}
    return offline_online(
        small,
        models,
        offline,
        "weak-first",
        transitions_sessions=train,
        logged_sessions=8000,
        online_sessions=1000,
        seed=3,
        exploration=Exploration(share=0.5, pool=20),
        shopper=ShopperModel(),
    )


def test_dr_estimates_a_target_far_from_the_champion_where_ips_does_not(table):
    assert table.click_model["alpha"] == pytest.approx(1.0, abs=0.2)  # the simulator's 1, 1
    assert table.click_model["eta"] == pytest.approx(1.0, abs=0.2)
    row = {r["model"]: r for r in table.rows}["truth"]
    truth = row["true_ctr_logged"]
    # the champion shows the truth's ranks 20..11: only explored answers support the target
    assert row["matched"] < table.logged_explored <= table.logged_exposures
    # DR's interval holds the truth; IPS's does not (it credits the target with the clicks
    # that weaker logged lists let through), and DR is the nearer by more than DR's half-width
    assert row["dr_low"] <= truth <= row["dr_high"], row
    assert not row["ips_low"] <= truth <= row["ips_high"], row
    dr_error, ips_error = abs(row["dr"] - truth), abs(row["ips"] - truth)
    assert ips_error - dr_error > (row["dr_high"] - row["dr_low"]) / 2, row
    assert row["dm"] == pytest.approx(truth, rel=0.03)  # the model is right here


def test_the_table_ranks_by_online_truth_and_reads_back(table):
    rows = {r["model"]: r for r in table.rows}
    champion, target = rows["weak-first"], rows["truth"]
    assert champion["champion"] and not target["champion"]
    assert target["true_ctr"] > 1.5 * champion["true_ctr"]
    # the champion against itself is an A/A: no lift, a coin's win rate; the truth wins both
    assert abs(champion["ab_lift"]) < 0.1 and abs(champion["interleaving_win_rate"] - 0.5) < 0.1
    assert target["ab_lift"] > 0.5 and target["interleaving_win_rate"] > 0.8
    assert target["interleaving_decision"] == "challenger"
    assert set(table.correlations) == set(METHODS)
    assert table.correlations["hr_at_20"] != table.correlations["hr_at_20"]  # NaN: one model
    back = json.loads(table.to_json())
    assert back["rows"][1]["dr"] == target["dr"] and back["champion"] == "weak-first"
    text = table.markdown()
    assert text.splitlines()[0].startswith("| model | kind | HR@20 | MRR@20 | IPS | SNIPS | DR |")
    assert "| weak-first (champion) | tail-first(truth) |" in text
    assert f"{target['true_ctr']:.4f}" in text and "Spearman" in text


def test_offline_online_names_a_missing_champion(small):
    with pytest.raises(ValueError, match="champion 'nobody'"):
        offline_online(
            small,
            {"truth": Truth(small)},
            {},
            "nobody",
            transitions_sessions=[["a", "b"]],
            logged_sessions=10,
            online_sessions=10,
            seed=0,
            exploration=Exploration(),
            shopper=ShopperModel(),
        )
