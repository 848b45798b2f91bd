"""The conversion leaderboard: which candidate is best, and markdown tables for the UI."""

from typing import Any

import pandas as pd

from orchestration.conversion.config import BASELINES, CANDIDATES, METRIC_COLUMNS

SELECTION_METRIC = "pr_auc"  # on the validation day


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)


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
