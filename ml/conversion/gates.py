"""Promotion rules as pure functions: each returns (passed, reason), the reason for people.

A candidate becomes champion only if every gate passes and it is at least as good as the
current champion scored on the same test day (`promotion`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

# Defaults; the Dagster assets expose each as configuration.
PR_AUC_MARGIN = 0.0  # the candidate's test PR AUC must exceed logistic regression's by this
MAX_CALIBRATION_ERROR = 0.05  # expected calibration error on the test day, at most
# Features recomputed from raw events may differ by this, relative to max(1, |value|): the
# training rows are float32 (ml.conversion.features.FEATURE_DTYPE), which rounds at 6e-8.
LEAKAGE_TOLERANCE = 1e-6
PROMOTION_METRIC = "pr_auc"

Gate = tuple[bool, str]


def _bad(value: float) -> bool:
    return value is None or math.isnan(value)


def beats_baseline(
    candidate: Mapping[str, float], baseline: Mapping[str, float], margin: float = PR_AUC_MARGIN
) -> Gate:
    c, b = candidate.get("pr_auc", math.nan), baseline.get("pr_auc", math.nan)
    if _bad(c) or _bad(b):
        return False, f"PR AUC undefined (candidate {c}, logistic {b})"
    if c > b + margin:
        return True, f"PR AUC {c:.4f} beats logistic regression {b:.4f} by more than {margin:.4f}"
    return False, f"PR AUC {c:.4f} does not beat logistic regression {b:.4f} by {margin:.4f}"


def calibration_bounded(metrics: Mapping[str, float], limit: float = MAX_CALIBRATION_ERROR) -> Gate:
    ece = metrics.get("ece", math.nan)
    if _bad(ece):
        return False, "calibration error undefined"
    if ece <= limit:
        return True, f"expected calibration error {ece:.4f} <= {limit:.4f}"
    return False, f"expected calibration error {ece:.4f} > {limit:.4f}"


def no_leakage(
    training: pd.DataFrame, recomputed: pd.DataFrame, tolerance: float = LEAKAGE_TOLERANCE
) -> Gate:
    """Training feature rows equal rows recomputed from raw events cut before the purchase
    (to `tolerance`, relative to max(1, |recomputed value|)).

    Both frames are indexed by (session_key, prefix_length) with the same feature columns. A
    training row the recomputation lacks is a prefix that reaches the purchase or beyond.
    """
    if recomputed.empty:
        return False, "no session to recompute"
    extra = training.index.difference(recomputed.index)
    missing = recomputed.index.difference(training.index)
    if len(extra):
        return (
            False,
            f"{len(extra)} training prefixes reach the purchase or beyond, e.g. {extra[0]}",
        )
    if len(missing):
        return False, f"{len(missing)} prefixes before the purchase are missing, e.g. {missing[0]}"
    a = training.loc[recomputed.index, recomputed.columns].to_numpy(dtype=float)
    b = recomputed.to_numpy(dtype=float)
    diff = (np.abs(a - b) / np.maximum(1.0, np.abs(b))).max(axis=0)
    worst = int(np.argmax(diff))
    if diff[worst] > tolerance:
        return (
            False,
            f"feature {recomputed.columns[worst]} differs by {diff[worst]:.6g} (relative)",
        )
    sessions = recomputed.index.get_level_values(0).nunique()
    return True, (
        f"{len(recomputed)} prefixes of {sessions} sessions recomputed: identical within "
        f"float32 rounding (largest relative difference {diff[worst]:.2g})"
    )


def at_least_as_good(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    metric: str = PROMOTION_METRIC,
) -> Gate:
    """Both scored on the same test day; no champion yet counts as a pass."""
    if champion is None:
        return True, "no current champion"
    c, h = candidate.get(metric, math.nan), champion.get(metric, math.nan)
    if _bad(c):
        return False, f"candidate {metric} undefined"
    if _bad(h) or c >= h:
        return True, f"{metric} {c:.4f} >= champion's {h:.4f} on the same test day"
    return False, f"{metric} {c:.4f} < champion's {h:.4f} on the same test day"


def promotion(gates: Mapping[str, Gate], versus_champion: Gate) -> Gate:
    """Promote only when every gate passes and the candidate is as good as the champion."""
    failed = [f"{name}: {reason}" for name, (passed, reason) in gates.items() if not passed]
    if failed:
        return False, "gates failed — " + "; ".join(failed)
    passed, reason = versus_champion
    if not passed:
        return False, f"not better than the champion — {reason}"
    return True, f"all gates passed; {reason}"
