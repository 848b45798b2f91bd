"""Behavioral checks in the spirit of RecList: beyond one number, as pure functions.

- slices: HR/MRR/NDCG by target-item popularity bucket and by session-length bucket, from an
  `EvalResult` (so they are the evaluator's numbers, cut differently);
- stability: overlap of the top-k before and after perturbing a session (one item replaced by
  a similar one; order shuffled);
- unseen items: sessions with items the model never saw still get k known items, and an
  unseen item appended to a session does not change its recommendations (it is skipped).

`run_checks` turns these into named outcomes against thresholds. `GATES` says which ones gate
promotion; the others only report.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from ml.recommend.evaluate import EvalResult, metrics_from_ranks

RecommendBatch = Callable[[Sequence[Sequence[str]], int], Sequence[Sequence[str]]]
UNSEEN = "__skiff_unseen_item__"

# (share of training views) head = items taking the first 50% of views, mid = next 30%
POPULARITY_BUCKETS = (("head", 0.5), ("mid", 0.8), ("tail", 1.0))
LENGTH_BUCKETS = (("2", 2, 2), ("3-4", 3, 4), ("5-9", 5, 9), ("10+", 10, 10**9))


@dataclass(frozen=True)
class Gate:
    threshold: float
    gating: bool
    description: str


# What a candidate must show. Gating checks block promotion; the rest report on the asset.
GATES: dict[str, Gate] = {
    "beats_pop": Gate(0.10, True, "relative HR@20 lift over POP on the same predictions"),
    "unseen_items": Gate(
        1.0, True, "share of sessions with unseen items that get k known items, unchanged"
    ),
    "similar_item_stability": Gate(
        0.20, False, "mean top-k overlap after one item is replaced by a similar one"
    ),
    "shuffle_stability": Gate(0.0, False, "mean top-k overlap after the order is shuffled"),
    "tail_hit_rate": Gate(0.0, False, "HR@20 on next items from the popularity tail"),
}


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    value: float
    threshold: float
    gating: bool
    passed: bool
    description: str
    details: dict[str, Any] = field(default_factory=dict)


def _slice_metrics(ranks: np.ndarray, k: int) -> dict[str, float]:
    return {**metrics_from_ranks(ranks, k), "predictions": len(ranks)}


def popularity_buckets(
    result: EvalResult, popularity: dict[str, int]
) -> dict[str, dict[str, float]]:
    """Metrics by the training popularity of the item to predict: head, mid, tail."""
    ordered = sorted(popularity.items(), key=lambda kv: (-kv[1], kv[0]))
    total = sum(popularity.values()) or 1
    bucket_of: dict[str, str] = {}
    running = 0
    for item, count in ordered:
        share = running / total
        bucket_of[item] = next(name for name, upper in POPULARITY_BUCKETS if share < upper)
        running += count
    labels = np.asarray([bucket_of.get(t, "tail") for t in result.points.targets])
    return {
        name: _slice_metrics(result.ranks[labels == name], result.k)
        for name, _ in POPULARITY_BUCKETS
    }


def length_buckets(result: EvalResult) -> dict[str, dict[str, float]]:
    """Metrics by the length of the test session the prediction comes from."""
    lengths = result.points.session_length
    return {
        name: _slice_metrics(result.ranks[(lengths >= lo) & (lengths <= hi)], result.k)
        for name, lo, hi in LENGTH_BUCKETS
    }


def similar_items(
    train_sessions: Sequence[Sequence[str]], categories: dict[str, str] | None = None
) -> dict[str, str]:
    """For each item, its most frequent neighbour in training sessions (adjacent views,
    ties by id), or with `categories` the most popular other item of its category."""
    if categories:
        popularity = Counter(i for s in train_sessions for i in s)
        by_category: dict[str, list[str]] = defaultdict(list)
        for item in sorted(popularity, key=lambda i: (-popularity[i], i)):
            if item in categories:
                by_category[categories[item]].append(item)
        out = {}
        for members in by_category.values():
            for item in members:
                other = next((m for m in members if m != item), None)
                if other is not None:
                    out[item] = other
        return out
    pairs: dict[str, Counter] = defaultdict(Counter)
    for session in train_sessions:
        for a, b in pairwise(session):
            if a != b:
                pairs[a][b] += 1
                pairs[b][a] += 1
    return {a: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for a, c in pairs.items()}


def _overlap(a: Sequence[str], b: Sequence[str], k: int) -> float:
    return len(set(a[:k]) & set(b[:k])) / k


def _prefixes(sessions: Sequence[Sequence[str]], n: int, seed: int) -> list[list[str]]:
    """Up to n test prefixes of length >= 2 (each session without its last item)."""
    usable = [list(s[:-1]) for s in sessions if len(s) >= 3]
    rng = np.random.default_rng(seed)
    if len(usable) > n:
        usable = [usable[i] for i in sorted(rng.choice(len(usable), n, replace=False))]
    return usable


def perturbation_stability(
    recommend_batch: RecommendBatch,
    sessions: Sequence[Sequence[str]],
    similar: dict[str, str],
    k: int = 20,
    n: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """Mean top-k overlap after (a) one random item is replaced by a similar one, (b) the
    order is shuffled. 1.0 = unchanged; a sequence model should move on (b) more than on (a)."""
    rng = np.random.default_rng(seed)
    prefixes = _prefixes(sessions, n, seed)
    if not prefixes:
        return {
            "similar_item_stability": float("nan"),
            "shuffle_stability": float("nan"),
            "sessions": 0,
        }
    swapped, shuffled = [], []
    for prefix in prefixes:
        replaceable = [i for i, item in enumerate(prefix) if item in similar]
        copy = list(prefix)
        if replaceable:
            at = replaceable[int(rng.integers(len(replaceable)))]
            copy[at] = similar[copy[at]]
        swapped.append(copy)
        shuffled.append([prefix[i] for i in rng.permutation(len(prefix))])
    base = recommend_batch(prefixes, k)
    after_swap = recommend_batch(swapped, k)
    after_shuffle = recommend_batch(shuffled, k)
    return {
        "similar_item_stability": float(
            np.mean([_overlap(a, b, k) for a, b in zip(base, after_swap, strict=True)])
        ),
        "shuffle_stability": float(
            np.mean([_overlap(a, b, k) for a, b in zip(base, after_shuffle, strict=True)])
        ),
        "sessions": len(prefixes),
    }


def unseen_item_behavior(
    recommend_batch: RecommendBatch,
    sessions: Sequence[Sequence[str]],
    known_items: set[str],
    k: int = 20,
    n: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """Sessions with an unseen item appended, and sessions made only of unseen items: every
    list must hold k distinct known items, and the appended item must change nothing."""
    prefixes = _prefixes(sessions, n, seed)
    if not prefixes:
        return {"unseen_items": float("nan"), "sessions": 0}
    with_unseen = [[*p, UNSEEN] for p in prefixes]
    only_unseen = [[UNSEEN, f"{UNSEEN}2"] for _ in prefixes[:10]]
    base = recommend_batch(prefixes, k)
    after = recommend_batch(with_unseen, k)
    empty = recommend_batch(only_unseen, k)

    def valid(items: Sequence[str]) -> bool:
        return len(set(items)) == len(items) == k and all(i in known_items for i in items)

    ok = [valid(b) and list(a) == list(b) for a, b in zip(base, after, strict=True)]
    ok += [valid(e) for e in empty]
    return {
        "unseen_items": float(np.mean(ok)),
        "unchanged_share": float(
            np.mean([list(a) == list(b) for a, b in zip(base, after, strict=True)])
        ),
        "only_unseen_full_lists": float(np.mean([valid(e) for e in empty])),
        "sessions": len(ok),
    }


def run_checks(
    result: EvalResult,
    pop_result: EvalResult,
    recommend_batch: RecommendBatch,
    train_sessions: Sequence[Sequence[str]],
    test_sessions: Sequence[Sequence[str]],
    popularity: dict[str, int],
    gates: dict[str, Gate] | None = None,
    categories: dict[str, str] | None = None,
    seed: int = 0,
    n: int = 500,
) -> tuple[list[CheckOutcome], dict[str, Any]]:
    """Every check of one candidate against thresholds; returns (outcomes, slices)."""
    gates = {**GATES, **(gates or {})}
    k = result.k
    by_popularity = popularity_buckets(result, popularity)
    by_length = length_buckets(result)
    stability = perturbation_stability(
        recommend_batch, test_sessions, similar_items(train_sessions, categories), k, n, seed
    )
    unseen = unseen_item_behavior(recommend_batch, test_sessions, set(popularity), k, n, seed)
    lift = (result.hr - pop_result.hr) / pop_result.hr if pop_result.hr > 0 else float("inf")
    values = {
        "beats_pop": (lift, {"hr": result.hr, "pop_hr": pop_result.hr}),
        "unseen_items": (unseen["unseen_items"], unseen),
        "similar_item_stability": (stability["similar_item_stability"], stability),
        "shuffle_stability": (stability["shuffle_stability"], stability),
        "tail_hit_rate": (by_popularity["tail"][f"hr_at_{k}"], by_popularity["tail"]),
    }
    outcomes = []
    for name, gate in gates.items():
        value, details = values[name]
        # a report-only check with nothing to measure passes; a gate never does
        passed = bool(value >= gate.threshold or (not gate.gating and np.isnan(value)))
        outcomes.append(
            CheckOutcome(
                name,
                float(value),
                gate.threshold,
                gate.gating,
                passed,
                gate.description,
                dict(details),
            )
        )
    return outcomes, {"by_popularity": by_popularity, "by_length": by_length}
