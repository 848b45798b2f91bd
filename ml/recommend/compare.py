"""Train several recommenders on one file, evaluate them on another: `skiff evaluate-recs`.

The train file's sessions fit every model; the test file's sessions are evaluated with the one
protocol (`ml.recommend.evaluate`). Test targets never seen in training are excluded (counted
in `excluded_targets`), as in session-rec, so numbers compare with published ones; unseen
input items are skipped by the models. Give a test file that is later in time than the train
file: the recommender evaluates next items of later sessions only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ml.recommend.evaluate import EvalResult, evaluate, popularity_counts
from ml.recommend.importers import load_sessions
from ml.recommend.models import ALGORITHMS, Recommender, make_model

DEFAULT_MODELS = ("pop", "sknn", "gru")
# What `compare` trains with unless told otherwise; seeds fixed, so runs repeat exactly.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "pop": {},
    "sknn": {"k_neighbors": 100, "sample_size": 1000},
    "gru": {"seed": 0},  # the constructor's defaults: early stopping on held-out sessions
    "sasrec": {"dim": 64, "epochs": 5, "seed": 0, "lr": 0.005},
}


def fit_and_evaluate(
    algorithm: str,
    train: Sequence[Sequence[str]],
    test: Sequence[Sequence[str]],
    k: int = 20,
    params: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[Recommender, EvalResult, dict[str, Any]]:
    """One leaderboard row, and the model and evaluation behind it. `progress` receives the
    torch model's epoch lines."""
    params = {**DEFAULT_PARAMS.get(algorithm, {}), **(params or {})}
    model = make_model(algorithm, **params)
    if progress is not None and hasattr(model, "progress"):
        model.progress = progress
    began, cpu = time.perf_counter(), time.process_time()
    model.fit(train)
    train_seconds = time.perf_counter() - began
    cpu = time.process_time() - cpu  # beside wall time: other processes may share the cores
    result = evaluate_model(model, train, test, k)
    row = {
        "model": algorithm,
        f"hr_at_{k}": result.hr,
        f"mrr_at_{k}": result.mrr,
        f"ndcg_at_{k}": result.ndcg,
        # the way the server shows lists by default: the session's viewed products left out
        f"hr_at_{k}_excluding_viewed": result.hr_excluding_viewed,
        f"mrr_at_{k}_excluding_viewed": result.mrr_excluding_viewed,
        f"ndcg_at_{k}_excluding_viewed": result.ndcg_excluding_viewed,
        "coverage": result.coverage,
        "popularity_bias": result.popularity_bias,
        "predictions": result.predictions,
        "excluded_targets": result.excluded_targets,
        "train_seconds": round(train_seconds, 3),
        "train_cpu_seconds": round(cpu, 3),
        "recs_per_second": round(result.recs_per_second, 1),
        "params": params,
    }
    return model, result, row


def evaluate_model(
    model: Recommender, train: Sequence[Sequence[str]], sessions: Sequence[Sequence[str]], k: int
) -> EvalResult:
    """A fitted model on other sessions (validation or test), with the training popularity."""
    popularity = popularity_counts(train)
    return evaluate(
        sessions,
        recommend_batch=model.recommend_batch,
        k=k,
        popularity=popularity,
        known_items=set(popularity),
    )


def best_row(rows: Sequence[dict[str, Any]], k: int = 20) -> dict[str, Any]:
    """The row with the best validation HR@k (ties: first). Test metrics are never read here:
    they report and gate the choice."""
    key = f"validation_hr_at_{k}"
    missing = [r["model"] for r in rows if key not in r]
    if missing:
        raise ValueError(f"rows of {missing} have no {key}: evaluate on validation days first")
    return max(rows, key=lambda r: r[key])


def compare(
    train: Path | str | Sequence[Sequence[str]],
    test: Path | str | Sequence[Sequence[str]],
    fmt: str = "sessions",
    models: Sequence[str] = DEFAULT_MODELS,
    k: int = 20,
    params: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per model, best HR@k first. `train`/`test` are files of format `fmt` (see
    `ml.recommend.importers`) or lists of sessions; `progress` gets the torch model's epochs."""
    unknown = [m for m in models if m not in ALGORITHMS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {sorted(ALGORITHMS)}")
    extra: dict[str, Any] = {}
    if isinstance(train, (str, Path)):
        data = load_sessions(train, fmt)
        train, extra["train_bad_rows"] = data.sessions, data.report.rows_rejected
    if isinstance(test, (str, Path)):
        data = load_sessions(test, fmt)
        test, extra["test_bad_rows"] = data.sessions, data.report.rows_rejected
    rows = []
    for algorithm in models:
        chosen = (params or {}).get(algorithm)
        _, _, row = fit_and_evaluate(algorithm, train, test, k, chosen, progress)
        rows.append({**row, **extra})
    return sorted(rows, key=lambda r: -r[f"hr_at_{k}"])


def format_leaderboard(rows: Sequence[dict[str, Any]], k: int = 20) -> str:
    """A markdown table: what the CLI prints and the evaluation asset shows. Rows with a
    validation HR@k (the assets') get it as a column before the test metrics. "HR@k new
    items" is HR@k with the session's viewed products left out of each list, as the server
    shows them by default (serving business rules)."""
    validation = bool(rows) and all(f"validation_hr_at_{k}" in r for r in rows)
    first = f" validation HR@{k} |" if validation else ""
    lines = [
        f"| model |{first} HR@{k} | MRR@{k} | NDCG@{k} | HR@{k} new items | coverage "
        "| popularity bias | predictions | train s | recs/s |",
        "|---|" + "---:|" * (10 if validation else 9),
    ]
    for r in rows:
        chosen_on = f" {r[f'validation_hr_at_{k}']:.4f} |" if validation else ""
        lines.append(
            f"| {r['model']} |{chosen_on} {r[f'hr_at_{k}']:.4f} | {r[f'mrr_at_{k}']:.4f} "
            f"| {r[f'ndcg_at_{k}']:.4f} | {r.get(f'hr_at_{k}_excluding_viewed', float('nan')):.4f} "
            f"| {r['coverage']:.3f} | {r['popularity_bias']:.3f} "
            f"| {r['predictions']:,} | {r['train_seconds']:.1f} | {r['recs_per_second']:,.0f} |"
        )
    return "\n".join(lines)
