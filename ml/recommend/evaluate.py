"""The one next-item evaluator: every model, asset, benchmark and test goes through it.

Protocol: for every test session of length n, predict item t+1 from items 1..t, for
t = 1..n-1 (a session of length 2 gives one prediction; repeats stay, so [a, a, b] asks for
a after [a], then for b after [a, a]). Each prediction has the rank of the true next item in
the list (0 = not in the top k). HR@k, MRR@k and NDCG@k are means over all predictions, not
over sessions, so long sessions weigh by their number of predictions, as in session-rec and
GRU4Rec. A recommendation list is deduplicated (first occurrence wins) and cut at k before
ranking: a list cannot win twice with one item, nor score with an item past k.

Both ways of viewed items: a session often views a product again, and the models rank the
session's own products too, while the server shows none of them by default (its
`exclude_viewed` rule). So every evaluation also reports `*_excluding_viewed`: the same
predictions, each list with the prefix's items left out before the cut at k (a repeated view
is then a miss). A recommender function is asked for k plus the prefix's distinct items (a
batch: the most of its chunk), so k items remain after leaving them out, as the server asks
the model for more; precomputed `recommendations` are filtered as given (give longer lists
to measure this fairly). The first k of the longer list are the k-list for every model here.

Ties are the recommender's to break: the evaluator ranks lists. For score vectors,
`rank_from_scores` counts ties against the target (pessimistic), so a model that scores
everything 0 ranks nothing first — the classic port bug this avoids.

Anything can be evaluated: a single-session function, a batch function, or lists computed
elsewhere in the order of `prediction_points(test_sessions)`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

RecommendOne = Callable[[Sequence[str], int], Sequence[str]]
RecommendBatch = Callable[[Sequence[Sequence[str]], int], Sequence[Sequence[str]]]


@dataclass(frozen=True)
class PredictionPoints:
    """The predictions the protocol asks for, flattened: prefix i is session[:position]."""

    prefixes: list[list[str]]
    targets: list[str]
    session_index: np.ndarray
    position: np.ndarray  # t: number of items in the prefix
    session_length: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


def prediction_points(sessions: Sequence[Sequence[str]]) -> PredictionPoints:
    prefixes, targets, index, position, length = [], [], [], [], []
    for s, session in enumerate(sessions):
        items = list(session)
        for t in range(1, len(items)):
            prefixes.append(items[:t])
            targets.append(items[t])
            index.append(s)
            position.append(t)
            length.append(len(items))
    return PredictionPoints(
        prefixes=prefixes,
        targets=targets,
        session_index=np.asarray(index, dtype=np.int64),
        position=np.asarray(position, dtype=np.int64),
        session_length=np.asarray(length, dtype=np.int64),
    )


def rank_in_list(recommended: Iterable[str], target: str, k: int) -> int:
    """1-based rank of `target` among the first k distinct items, 0 when absent."""
    seen: set[str] = set()
    for item in recommended:
        if item in seen:
            continue
        seen.add(item)
        if len(seen) > k:
            return 0
        if item == target:
            return len(seen)
    return 0


def rank_from_scores(scores: np.ndarray, target: int) -> int:
    """1-based rank of `target` in a score vector; ties count against the target."""
    return int(np.sum(scores >= scores[target]))


def metrics_from_ranks(ranks: np.ndarray, k: int) -> dict[str, float]:
    """HR@k, MRR@k, NDCG@k (one relevant item: 1 / log2(rank + 1)) averaged over ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = (ranks > 0) & (ranks <= k)
    n = max(len(ranks), 1)
    safe = np.where(hit, ranks, 1.0)
    return {
        f"hr_at_{k}": float(hit.sum() / n),
        f"mrr_at_{k}": float(np.where(hit, 1.0 / safe, 0.0).sum() / n),
        f"ndcg_at_{k}": float(np.where(hit, 1.0 / np.log2(safe + 1.0), 0.0).sum() / n),
    }


@dataclass
class EvalResult:
    k: int
    hr: float
    mrr: float
    ndcg: float
    coverage: float  # distinct recommended items / catalogue (training items)
    popularity_bias: float  # mean training popularity of recommended items / the top item's
    predictions: int
    excluded_targets: int  # targets outside `known_items`, not counted
    seconds: float
    ranks: np.ndarray = field(repr=False)
    points: PredictionPoints = field(repr=False)
    recommendations: list[list[str]] = field(repr=False)
    # the same predictions, each list without the prefix's own items (see the protocol)
    hr_excluding_viewed: float = math.nan
    mrr_excluding_viewed: float = math.nan
    ndcg_excluding_viewed: float = math.nan
    ranks_excluding_viewed: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def recs_per_second(self) -> float:
        return self.predictions / self.seconds if self.seconds > 0 else float("inf")

    def metrics(self) -> dict[str, float]:
        k = self.k
        return {
            f"hr_at_{k}": self.hr,
            f"mrr_at_{k}": self.mrr,
            f"ndcg_at_{k}": self.ndcg,
            "coverage": self.coverage,
            "popularity_bias": self.popularity_bias,
            "predictions": float(self.predictions),
            f"hr_at_{k}_excluding_viewed": self.hr_excluding_viewed,
            f"mrr_at_{k}_excluding_viewed": self.mrr_excluding_viewed,
            f"ndcg_at_{k}_excluding_viewed": self.ndcg_excluding_viewed,
        }


def popularity_counts(train_sessions: Iterable[Sequence[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for session in train_sessions:
        for item in session:
            counts[item] = counts.get(item, 0) + 1
    return counts


def evaluate(
    test_sessions: Sequence[Sequence[str]],
    *,
    recommend: RecommendOne | None = None,
    recommend_batch: RecommendBatch | None = None,
    recommendations: Sequence[Sequence[str]] | None = None,
    k: int = 20,
    popularity: dict[str, int] | None = None,
    known_items: set[str] | None = None,
    batch_size: int = 1024,
) -> EvalResult:
    """Evaluate one recommender (exactly one of the three sources) on test sessions.

    `popularity` (training counts per item) defines the catalogue for coverage and the
    popularity bias; without it both are computed against the test items. With `known_items`
    (usually the training items), predictions whose target is outside it are excluded and
    counted in `excluded_targets`, as session-rec does; inputs are never filtered.
    """
    if sum(x is not None for x in (recommend, recommend_batch, recommendations)) != 1:
        raise ValueError("give exactly one of recommend, recommend_batch, recommendations")
    points = prediction_points(test_sessions)
    keep = np.ones(len(points), dtype=bool)
    if known_items is not None:
        keep = np.fromiter((t in known_items for t in points.targets), bool, len(points))
    kept = np.flatnonzero(keep)
    began = time.perf_counter()
    if recommendations is not None:
        if len(recommendations) != len(points):
            raise ValueError(
                f"{len(recommendations)} recommendation lists for {len(points)} predictions"
                " (one per prefix, in the order of prediction_points)"
            )
        lists = [list(recommendations[i]) for i in kept]
    elif recommend_batch is not None:
        lists = []
        for start in range(0, len(kept), batch_size):
            chunk = [points.prefixes[i] for i in kept[start : start + batch_size]]
            asked = k + max(len(set(prefix)) for prefix in chunk)
            lists.extend(list(r) for r in recommend_batch(chunk, asked))
    else:
        assert recommend is not None
        lists = [
            list(recommend(points.prefixes[i], k + len(set(points.prefixes[i])))) for i in kept
        ]
    seconds = time.perf_counter() - began

    ranks = np.fromiter(
        (rank_in_list(r, points.targets[i], k) for r, i in zip(lists, kept, strict=True)),
        dtype=np.int64,
        count=len(kept),
    )
    scores = metrics_from_ranks(ranks, k)
    unseen_ranks = np.fromiter(
        (
            rank_in_list(_without(r, points.prefixes[i]), points.targets[i], k)
            for r, i in zip(lists, kept, strict=True)
        ),
        dtype=np.int64,
        count=len(kept),
    )
    unseen = metrics_from_ranks(unseen_ranks, k)
    top = [_distinct(r, k) for r in lists]
    recommended = {item for r in top for item in r}
    if popularity is None:
        popularity = popularity_counts(test_sessions)
    catalogue = len(popularity) or 1
    peak = max(popularity.values(), default=0) or 1
    shown = [popularity.get(item, 0) for r in top for item in r]
    flat_points = PredictionPoints(
        prefixes=[points.prefixes[i] for i in kept],
        targets=[points.targets[i] for i in kept],
        session_index=points.session_index[kept],
        position=points.position[kept],
        session_length=points.session_length[kept],
    )
    return EvalResult(
        k=k,
        hr=scores[f"hr_at_{k}"],
        mrr=scores[f"mrr_at_{k}"],
        ndcg=scores[f"ndcg_at_{k}"],
        coverage=len(recommended & popularity.keys()) / catalogue,
        popularity_bias=float(np.mean(shown) / peak) if shown else math.nan,
        predictions=len(kept),
        excluded_targets=int(len(points) - len(kept)),
        seconds=seconds,
        ranks=ranks,
        points=flat_points,
        recommendations=top,
        hr_excluding_viewed=unseen[f"hr_at_{k}"],
        mrr_excluding_viewed=unseen[f"mrr_at_{k}"],
        ndcg_excluding_viewed=unseen[f"ndcg_at_{k}"],
        ranks_excluding_viewed=unseen_ranks,
    )


def _without(items: Iterable[str], viewed: Sequence[str]) -> list[str]:
    leave_out = set(viewed)
    return [item for item in items if item not in leave_out]


def _distinct(items: Iterable[str], k: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
            if len(out) == k:
                break
    return out
