"""Conversion metrics: ranking, probability quality, a decision threshold, and slices.

F1 is taken at a threshold chosen on the validation day (the one that maximises F1 there) and
applied unchanged to the test day, as it would be in production. Calibration error is the
expected calibration error over equal-count bins: purchase probabilities crowd near zero, so
equal-width bins would put almost every prefix in the first one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

PREFIX_BUCKETS: tuple[tuple[int, int], ...] = ((1, 1), (2, 3), (4, 7), (8, 15), (16, 10**9))
CALIBRATION_BINS = 10
_EPS = 1e-15


def choose_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability threshold with the best F1 (on the validation day)."""
    from sklearn.metrics import precision_recall_curve

    y, p = np.asarray(y), np.asarray(p)
    if y.min(initial=0) == y.max(initial=0):
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros_like(precision),
        where=precision + recall > 0,
    )
    return float(thresholds[int(np.argmax(f1[:-1]))])


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """Equal-count bins of predicted probability: mean prediction against observed rate."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if not len(y):
        return pd.DataFrame(columns=["bin", "n", "p_min", "p_max", "predicted", "observed"])
    order = np.argsort(p, kind="stable")
    parts = np.array_split(order, min(bins, len(p)))
    return pd.DataFrame(
        [
            {
                "bin": i + 1,
                "n": len(part),
                "p_min": float(p[part].min()),
                "p_max": float(p[part].max()),
                "predicted": float(p[part].mean()),
                "observed": float(y[part].mean()),
            }
            for i, part in enumerate(parts)
            if len(part)
        ]
    )


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    table = calibration_table(y, p, bins)
    if table.empty:
        return float("nan")
    return float((table["n"] * (table["predicted"] - table["observed"]).abs()).sum() / len(y))


def scores(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Every headline metric of one set of predictions (NaN where a metric is undefined)."""
    from sklearn.metrics import (
        average_precision_score,
        brier_score_loss,
        f1_score,
        log_loss,
        roc_auc_score,
    )

    y = np.asarray(y, dtype=np.int64)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    both = len(y) > 0 and y.min() != y.max()
    # sklearn clips at machine epsilon; 1e-15 keeps a saturated wrong prediction's cost as it was
    q = np.clip(p, _EPS, 1 - _EPS)
    predicted = p >= threshold
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, q, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p, pos_label=1)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "precision": float((y[predicted] == 1).mean()) if predicted.any() else 0.0,
        "recall": float(predicted[y == 1].mean()) if (y == 1).any() else 0.0,
        "ece": expected_calibration_error(y, p),
        "threshold": float(threshold),
        "positive_rate": float(y.mean()) if len(y) else 0.0,
        "n": float(len(y)),
    }


def prefix_bucket(prefix_length: np.ndarray) -> np.ndarray:
    """`1`, `2-3`, `4-7`, `8-15`, `16+`: the slice names of prefix lengths."""
    k = np.asarray(prefix_length)
    names = np.empty(len(k), dtype=object)
    for lo, hi in PREFIX_BUCKETS:
        name = str(lo) if lo == hi else (f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}")
        names[(k >= lo) & (k <= hi)] = name
    return names


def by_slice(y: np.ndarray, p: np.ndarray, threshold: float, slices: pd.Series) -> pd.DataFrame:
    """`scores` per value of `slices` (in order of first appearance)."""
    y, p = np.asarray(y), np.asarray(p)
    values = pd.Series(np.asarray(slices, dtype=object))
    rows = []
    for value in pd.unique(values):
        mask = (values == value).to_numpy()
        rows.append({"slice": str(value), **scores(y[mask], p[mask], threshold)})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Evaluation:
    overall: dict[str, float]
    slices: pd.DataFrame  # columns: kind (prefix_length | day), slice, metrics...
    calibration: pd.DataFrame


def evaluate(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    prefix_length: np.ndarray,
    day: np.ndarray,
) -> Evaluation:
    """Overall metrics, the same by prefix-length bucket and by day, and the calibration table."""
    buckets = prefix_bucket(prefix_length)
    order = {
        name: i for i, name in enumerate(prefix_bucket(np.array([b[0] for b in PREFIX_BUCKETS])))
    }
    by_length = by_slice(y, p, threshold, pd.Series(buckets))
    by_length = by_length.sort_values("slice", key=lambda s: s.map(order)).reset_index(drop=True)
    by_day = by_slice(y, p, threshold, pd.Series([str(d) for d in day]))
    slices = pd.concat(
        [by_length.assign(kind="prefix_length"), by_day.assign(kind="day")], ignore_index=True
    )
    return Evaluation(scores(y, p, threshold), slices, calibration_table(y, p))
