"""One request's answer from a loaded model: a purchase probability, or next products.

Features come from `ml.conversion.features.prefix_features`, the code training uses.
scikit-learn models are scored on that feature row directly: their `predict_proba` wraps each
call in threadpoolctl's `threadpool_limits`, whose scan of the loaded libraries costs about
6 ms a call, more than the whole prediction; the server limits OpenMP and BLAS to one thread
once, at start (`single_threaded`), which is what that wrapper ensures for small batches.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ml.conversion import features
from serving.metrics import Metrics
from serving.store import Loaded

log = logging.getLogger("skiff.serving")

PATHS = ("model", "item_lookup", "popularity")
_failed: set[str] = set()  # versions whose failure was logged


def single_threaded() -> None:
    """One OpenMP/BLAS thread for the whole process: one request is one small prediction."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def conversion_probability(model: Any, events: Sequence[Mapping[str, Any]]) -> float:
    """The purchase probability after `events` (time-ordered, no purchase)."""
    estimator = getattr(model, "estimator", None)
    if estimator is not None and hasattr(estimator, "predict_proba"):
        row = features.prefix_features(events)
        matrix = np.fromiter(row.values(), dtype=np.float64, count=len(row)).reshape(1, -1)
        return float(estimator.predict_proba(matrix)[0, 1])
    return float(model.predict_proba(features.batch_from_events(events))[0])


def _padded(items: list[str], k: int, popular: list[str]) -> list[str]:
    """`items`, then popular products not in it, up to k."""
    seen = set(items)
    return (items + [p for p in popular if p not in seen])[:k]


def recommend(
    loaded: Loaded, viewed: Sequence[str], k: int, metrics: Metrics
) -> tuple[list[str], str, int]:
    """Top-k next products, the path that answered and how many viewed products were unknown.

    model: the model, on the viewed products it knows. item_lookup: the precomputed list of
    the latest known product, when the model failed. popularity: no known product (an empty
    or unseen history), or no list either.
    """
    model = loaded.model
    known = [sku for sku in viewed if sku in model.vocab]
    unknown = len(viewed) - len(known)
    if known:
        try:
            items = model.recommend(known, k)
            if items:
                return items[:k], "model", unknown
        except Exception:
            metrics.inc("skiff_model_errors_total", problem=loaded.problem, role=loaded.role)
            if loaded.version not in _failed:  # the traceback once per version, then counts
                _failed.add(loaded.version)
                log.exception("recommender %s failed; falling back to the lookup", loaded.version)
        for sku in reversed(known):
            listed = loaded.lookup.get(sku)
            if listed:
                popular = model.recommend([], k + len(listed))  # pads a list shorter than k
                return _padded(list(listed), k, popular), "item_lookup", unknown
    return model.recommend([], k), "popularity", unknown
