"""The conversion leaderboard: which candidate is best, and markdown tables for the UI."""

from collections.abc import Sequence
from typing import Any

import pandas as pd

from orchestration.conversion.config import BASELINES, CANDIDATES, METRIC_COLUMNS
from orchestration.markdown import markdown_table, number

SELECTION_METRIC = "pr_auc"  # on the validation day
# Reading order of the tables (whatever order the records came in): a calibration bin is read
# from its probability range to what was predicted and observed in it; a slice from its size
# and base rate to the ranking metrics, then the calibration ones.
CALIBRATION_COLUMNS = ("bin", "n", "p_min", "p_max", "predicted", "observed")
# The UI's metadata cell shows about eight columns before it scrolls sideways (the table's
# last columns were cut off): precision, recall and log loss per slice stay in the models'
# hand-off values (`slices`), not in the table.
SLICE_METRICS = ("n", "positive_rate", "roc_auc", "pr_auc", "f1", "ece", "brier")
SLICE_KINDS = {"prefix_length": "prefix length", "day": "day"}


def calibration_markdown(calibration: pd.DataFrame) -> str:
    """The calibration bins in reading order."""
    return markdown_table(calibration, CALIBRATION_COLUMNS)


def slices_markdown(slices: pd.DataFrame, metrics: Sequence[str] = SLICE_METRICS) -> str:
    """One table per kind of slice (prefix length, day), the slice first, then its size, base
    rate and `metrics`; the decision threshold, the same in every row, is said once."""
    parts = []
    if "threshold" in slices and len(slices):
        parts.append(
            f"F1, precision and recall at the threshold {number(slices['threshold'].iloc[0])}"
        )
    for kind, title in SLICE_KINDS.items():
        rows = slices[slices["kind"] == kind].rename(columns={"slice": title})
        if len(rows):
            parts.append(markdown_table(rows, [title, *metrics]))
    return "\n\n".join(parts)


def best_candidate(results: dict[str, dict[str, Any]]) -> str:
    """The candidate with the best PR AUC on the validation day (undefined counts as worst;
    ties: first). Test-day metrics are never read here: they report and gate the choice."""

    def key(algorithm: str) -> float:
        value = results[algorithm]["validation"][SELECTION_METRIC]
        return -1.0 if value is None or value != value else float(value)

    return max(CANDIDATES, key=key)


def leaderboard_markdown(results: dict[str, dict[str, Any]], best: str) -> str:
    """All models, baselines beside the candidates, best validation PR AUC first: the
    validation column is what chose, the test-day columns are what is reported."""
    rows = []
    for algorithm, result in results.items():
        kind = "baseline" if algorithm in BASELINES else "candidate"
        name = f"**{algorithm}** (best)" if algorithm == best else algorithm
        metrics = result["test"]
        rows.append(
            {
                "model": name,
                "kind": kind,
                "validation pr_auc": float(result["validation"][SELECTION_METRIC]),
                **{m: float(metrics[m]) for m in METRIC_COLUMNS},
                "fit s": float(result["fit_seconds"]),
                "version": f"`{result['version']}`",
            }
        )
    frame = pd.DataFrame(rows).sort_values("validation pr_auc", ascending=False, na_position="last")
    window = next(iter(results.values()))["window"]
    heading = (
        f"Test day {window['test_day']}: the best candidate is chosen on the validation day "
        f"{window['validation_day']} (`validation pr_auc`); the other columns are the test "
        "day's (F1 at the threshold chosen on the validation day)"
    )
    return heading + "\n\n" + markdown_table(frame)


def selection_table(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per model, the validation PR AUC that chose and the test PR AUC that is reported."""
    return {
        algorithm: {
            "validation_pr_auc": float(result["validation"][SELECTION_METRIC]),
            "test_pr_auc": float(result["test"][SELECTION_METRIC]),
        }
        for algorithm, result in results.items()
    }


def gates_report(leaderboard: str, best: str, outcome: dict[str, tuple[bool, str]]) -> str:
    """The leaderboard followed by the best candidate's gates, passed or failed."""
    return (
        leaderboard
        + "\n\nGates for "
        + best
        + ":\n\n"
        + "\n".join(f"- {'pass' if p else 'FAIL'} `{n}`: {r}" for n, (p, r) in outcome.items())
    )
