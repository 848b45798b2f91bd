"""The evaluator both ways: with and without the session's own products in each list (the
server's `exclude_viewed` rule), against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from ml.recommend.evaluate import evaluate, prediction_points

RANKING = ["a", "b", "c", "d", "e", "x", "y"]  # the same ranking after every prefix
SESSIONS = [["a", "b", "a", "c"], ["d", "e"]]
# predictions: [a] -> b, [a, b] -> a, [a, b, a] -> c, [d] -> e
# k = 2 with viewed products:  [a, b]: b at 2; [a, b]: a at 1; [a, b]: c missed; [a, b]: e missed
# without them:                [b, c]: b at 1; [c, d]: a missed; [c, d]: c at 1; [a, b]: e missed
WITH_VIEWED = {
    "hr_at_2": 2 / 4,
    "mrr_at_2": (1 / 2 + 1) / 4,
    "ndcg_at_2": (1 / math.log2(3) + 1) / 4,
}
WITHOUT = {"hr_at_2": 2 / 4, "mrr_at_2": (1 + 1) / 4, "ndcg_at_2": (1 + 1) / 4}


def test_both_ways_from_a_function_a_batch_and_precomputed_lists():
    asked: list[tuple[tuple[str, ...], int]] = []

    def one(prefix, n):
        asked.append((tuple(prefix), n))
        return RANKING[:n]

    def batch(prefixes, n):
        return [RANKING[:n] for _ in prefixes]

    points = prediction_points(SESSIONS)
    longer = [RANKING[: 2 + len(set(p))] for p in points.prefixes]
    for result in (
        evaluate(SESSIONS, recommend=one, k=2),
        evaluate(SESSIONS, recommend_batch=batch, k=2),
        evaluate(SESSIONS, recommendations=longer, k=2),
    ):
        assert (result.hr, result.mrr, result.ndcg) == pytest.approx(tuple(WITH_VIEWED.values()))
        assert (
            result.hr_excluding_viewed,
            result.mrr_excluding_viewed,
            result.ndcg_excluding_viewed,
        ) == pytest.approx(tuple(WITHOUT.values()))
        assert result.ranks_excluding_viewed.tolist() == [1, 0, 1, 0]
        assert result.ranks.tolist() == [2, 1, 0, 0]
        metrics = result.metrics()
        for name, value in WITHOUT.items():
            assert metrics[f"{name}_excluding_viewed"] == pytest.approx(value)
        for name, value in WITH_VIEWED.items():
            assert metrics[name] == pytest.approx(value)
    # asked for k plus the prefix's distinct products, so k remain once they are left out
    assert asked == [(("a",), 3), (("a", "b"), 4), (("a", "b", "a"), 4), (("d",), 3)]


def test_lists_only_k_long_are_filtered_as_given():
    points = prediction_points(SESSIONS)
    result = evaluate(SESSIONS, recommendations=[RANKING[:2]] * len(points), k=2)
    # [a] -> [b]: b at 1; [a, b] -> []: miss; [a, b, a] -> []: miss; [d] -> [a, b]: miss
    assert result.ranks_excluding_viewed.tolist() == [1, 0, 0, 0]
    assert result.hr == pytest.approx(WITH_VIEWED["hr_at_2"])
