"""Answers from a loaded model: purchase probabilities, or next products; for a batch of
requests at once (see `serving.batching`), or one.

Features come from `ml.conversion.features.prefix_features`, the code training uses.
scikit-learn models are scored on those feature rows directly: their `predict_proba` wraps each
call in threadpoolctl's `threadpool_limits`, whose scan of the loaded libraries costs about
6 ms a call, more than the whole prediction; the server limits OpenMP and BLAS to one thread
once, at start, and in each inference worker thread as it starts (`single_threaded`: OpenMP's
limit is per thread), which is what that wrapper ensures for small batches.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml.conversion import features
from serving.batching import MicroBatcher
from serving.metrics import Metrics
from serving.rules import NO_RULES, Rules
from serving.store import Loaded

log = logging.getLogger("skiff.serving")

PATHS = ("model", "item_lookup", "popularity")
_failed: set[str] = set()  # versions whose failure was logged


def single_threaded() -> None:
    """One OpenMP/BLAS thread for the whole process: one request is one small prediction."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


Events = Sequence[Mapping[str, Any]]


def conversion_probabilities(model: Any, sessions: Sequence[Events]) -> list[float]:
    """The purchase probability after each session's events (time-ordered, no purchase)."""
    estimator = getattr(model, "estimator", None)
    if estimator is not None and hasattr(estimator, "predict_proba"):
        rows = [list(features.prefix_features(events).values()) for events in sessions]
        # the rows training fits on are FEATURE_DTYPE (float32): the same numbers here
        rows = np.asarray(rows, dtype=features.FEATURE_DTYPE)
        return estimator.predict_proba(rows)[:, 1].tolist()
    return [float(model.predict_proba(features.batch_from_events(e))[0]) for e in sessions]


def conversion_probability(model: Any, events: Events) -> float:
    return conversion_probabilities(model, [events])[0]


def recommendation_lists(model: Any, requests: Sequence[tuple[list[str], int]]) -> list[list[str]]:
    """Top-k lists for (known viewed products, k) requests in one `recommend_batch` call (a
    longer list's first k are the k-list: rankings are fixed, ties broken by popularity)."""
    k = max(k for _, k in requests)
    lists = model.recommend_batch([items for items, _ in requests], k)
    return [items[:k] for items, (_, k) in zip(lists, requests, strict=True)]


def _padded(items: list[str], k: int, popular: list[str]) -> list[str]:
    """`items`, then popular products not in it, up to k."""
    seen = set(items)
    return (items + [p for p in popular if p not in seen])[:k]


@dataclass(frozen=True)
class Recommended:
    items: list[str]
    path: str  # what answered: one of PATHS
    unknown: int  # viewed products the model does not know
    failed: bool = False  # the model raised, and the lookup answered instead
    # what `serving.showing` adds to the exposure record (context, propensities, teams, ...)
    logged: Mapping[str, Any] = field(default_factory=dict)


async def recommend(
    loaded: Loaded,
    viewed: Sequence[str],
    k: int,
    metrics: Metrics,
    batcher: MicroBatcher,
    rules: Rules = NO_RULES,
) -> Recommended:
    """Top-k next products the `rules` allow, the path that answered and how many viewed
    products were unknown.

    model: the model, on the viewed products it knows. item_lookup: the version's precomputed
    list (`next_items.parquet`, the model's own top 20 after each product alone) of the only
    known product (when k of it pass the rules), or of the latest one when the model failed.
    popularity: no known product (an empty or unseen history), or no list either. Each path
    asks for more than k when the rules filter (`Rules.enough`).
    """
    model = loaded.model
    known = [sku for sku in viewed if sku in model.vocab]
    unknown = len(viewed) - len(known)
    most = len(model.vocab)
    if len(known) == 1:
        listed = rules.apply(loaded.lookup.get(known[0], ()), k)
        if len(listed) == k:
            return Recommended(listed, "item_lookup", unknown)
    failed = False
    if known:
        try:
            batch = functools.partial(recommendation_lists, model)

            async def ranked(n: int) -> list[str]:
                return await batcher.submit(id(model), batch, (known, n))

            items = await rules.enough(ranked, k, most)
            if items:
                return Recommended(items, "model", unknown)
        except Exception:
            failed = True
            metrics.inc("skiff_model_errors_total", problem=loaded.problem, role=loaded.role)
            if loaded.version not in _failed:  # the traceback once per version, then counts
                _failed.add(loaded.version)
                log.exception("recommender %s failed; falling back to the lookup", loaded.version)
        listed = next((loaded.lookup[s] for s in reversed(known) if loaded.lookup.get(s)), None)
        if listed:

            async def padded(n: int) -> list[str]:  # popular products pad a short list
                return _padded(list(listed), n, model.recommend([], n + len(listed)))

            items = await rules.enough(padded, k, most)
            return Recommended(items, "item_lookup", unknown, failed)

    async def popular(n: int) -> list[str]:
        return model.recommend([], n)

    return Recommended(await rules.enough(popular, k, most), "popularity", unknown, failed)
