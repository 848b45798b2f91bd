"""The conversion leaderboard: which candidate is best, and markdown tables for the UI."""

from typing import Any

import pandas as pd

from orchestration.conversion.config import BASELINES, CANDIDATES, METRIC_COLUMNS


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
    """The candidate with the best test PR AUC (undefined counts as worst; ties: first)."""

    def key(algorithm: str) -> float:
        value = results[algorithm]["test"]["pr_auc"]
        return -1.0 if value is None or value != value else float(value)

    return max(CANDIDATES, key=key)


def leaderboard_markdown(results: dict[str, dict[str, Any]], best: str) -> str:
    """All models on the test day, best first by PR AUC; baselines beside the candidates."""
    rows = []
    for algorithm, result in results.items():
        kind = "baseline" if algorithm in BASELINES else "candidate"
        name = f"**{algorithm}** (best)" if algorithm == best else algorithm
        metrics = result["test"]
        rows.append(
            {
                "model": name,
                "kind": kind,
                **{m: float(metrics[m]) for m in METRIC_COLUMNS},
                "fit s": float(result["fit_seconds"]),
                "version": f"`{result['version']}`",
            }
        )
    frame = pd.DataFrame(rows).sort_values("pr_auc", ascending=False, na_position="last")
    day = next(iter(results.values()))["window"]["test_day"]
    heading = f"Test day {day} (F1 at the threshold chosen on the validation day)"
    return heading + "\n\n" + markdown_table(frame)


def gates_report(leaderboard: str, best: str, outcome: dict[str, tuple[bool, str]]) -> str:
    """The leaderboard followed by the best candidate's gates, passed or failed."""
    return (
        leaderboard
        + "\n\nGates for "
        + best
        + ":\n\n"
        + "\n".join(f"- {'pass' if p else 'FAIL'} `{n}`: {r}" for n, (p, r) in outcome.items())
    )
