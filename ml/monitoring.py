"""Monitoring: drift of a day against a reference, quality on labelled days, severities.

Pure functions over DataFrames (no Dagster, no warehouse), shared by the monitoring assets, the
benchmark and the tests.

- `data_drift` runs an Evidently 0.7 `DataDriftPreset` with fixed methods, so a threshold means
  the same thing at every sample size: the normed Wasserstein distance for numerical columns
  and the Jensen-Shannon distance for categorical ones (Evidently's own choice switches to
  p-value tests under 1,000 rows, whose thresholds read the other way round). The caller names
  the share of drifted columns at which the report calls the data set drifted: Evidently's
  default (0.5) would put a threshold nobody set in every report.
- `grade` turns a value and two thresholds into a severity: `ok`, `warn`, `error`.
- `conversion_quality` and `recommender_day` measure the champion on one day.
- `drift_episode` is the rule the drift sensor applies to a run of daily severities.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SEVERITIES: tuple[str, ...] = ("ok", "warn", "error")
# Model inputs watched for drift: the feature rows without the 25 action bigrams (which move
# with the counts), plus the two raw inputs the sequence model sees.
CATEGORICAL_INPUTS: tuple[str, ...] = ("category_top",)
NUMERICAL_EXTRA: tuple[str, ...] = ("price_bucket",)
# Normed Wasserstein for numbers: day-to-day variation of the behaviour counts in stable
# synthetic traffic reaches about 0.21 at 1,000 sessions a day (sparse counts such as
# distinct_categories), so the threshold sits above it; 0.1 (Jensen-Shannon) is Evidently's
# default for categories.
NUMERICAL_THRESHOLD = 0.25
CATEGORICAL_THRESHOLD = 0.1
METHOD_NAMES = {"wasserstein": "Wasserstein (normed)", "jensenshannon": "Jensen-Shannon"}


def monitored_features() -> list[str]:
    from ml.conversion.features import FEATURES

    return [f for f in FEATURES if not f.startswith("bigram_")]


# --- drift ------------------------------------------------------------------------------------


@dataclass
class DriftResult:
    """One drift report: per-column scores, the summary numbers and the Evidently snapshot."""

    columns: pd.DataFrame  # column, kind, method, score, threshold, drifted; most drifted first
    snapshot: Any = field(repr=False)
    reference_rows: int = 0
    current_rows: int = 0
    # the share of drifted columns at which Evidently's report calls the data set drifted
    dataset_share: float = math.nan

    @property
    def n_columns(self) -> int:
        return len(self.columns)

    @property
    def n_drifted(self) -> int:
        return int(self.columns["drifted"].sum())

    @property
    def drift_share(self) -> float:
        return self.n_drifted / self.n_columns if self.n_columns else 0.0

    def score(self, column: str) -> float:
        row = self.columns[self.columns["column"] == column]
        return float(row["score"].iloc[0]) if len(row) else math.nan

    def save_html(self, path: Path) -> Path:
        """The full Evidently report, self-contained (written then renamed)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        self.snapshot.save_html(str(tmp))
        tmp.replace(path)
        return path

    def markdown(self, top: int = 10) -> str:
        """The most drifted columns as a markdown table."""
        lines = [
            "| column | kind | method | score | threshold | drifted |",
            "|---|---|---|---:|---:|---|",
        ]
        for row in self.columns.head(top).itertuples(index=False):
            lines.append(
                f"| `{row.column}` | {row.kind} | {row.method} | {row.score:.4f} "
                f"| {row.threshold:.2f} | {'**yes**' if row.drifted else 'no'} |"
            )
        return "\n".join(lines)


def data_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numerical: Sequence[str] = (),
    categorical: Sequence[str] = (),
    numerical_threshold: float = NUMERICAL_THRESHOLD,
    categorical_threshold: float = CATEGORICAL_THRESHOLD,
    drift_share: float,
) -> DriftResult:
    """Evidently's data drift of `current` against `reference` over the named columns.
    `drift_share`: the share of drifted columns at which Evidently's report calls the whole
    data set drifted (its "Dataset drift detection threshold is ..." line and its test). No
    default: Evidently's own is 0.5, which is nobody's threshold here, so every caller states
    the share it means (`orchestration/monitoring/config.py` holds the assets')."""
    if not 0 <= drift_share <= 1:
        raise ValueError(f"drift_share is a share of the columns, in [0, 1]: got {drift_share}")
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = [*numerical, *categorical]
    if not columns:
        raise ValueError("name at least one column to compare")
    for name, frame in (("reference", reference), ("current", current)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} data lacks the columns {missing}")
        if frame.empty:
            raise ValueError(f"{name} data has no rows")

    def prepared(frame: pd.DataFrame) -> Dataset:
        data = frame[columns].copy()
        for c in numerical:
            data[c] = pd.to_numeric(data[c], errors="coerce").astype("float64")
        for c in categorical:
            data[c] = data[c].astype(object).where(data[c].notna(), "(none)").astype(str)
        definition = DataDefinition(
            numerical_columns=list(numerical), categorical_columns=list(categorical)
        )
        return Dataset.from_pandas(data, data_definition=definition)

    preset = DataDriftPreset(
        columns=columns,
        num_method="wasserstein",
        cat_method="jensenshannon",
        num_threshold=numerical_threshold,
        cat_threshold=categorical_threshold,
        drift_share=drift_share,
    )
    snapshot = Report([preset], include_tests=True).run(
        current_data=prepared(current), reference_data=prepared(reference)
    )
    rows = []
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if not config.get("type", "").endswith("ValueDrift"):
            continue
        column = config["column"]
        score = float(metric["value"])
        threshold = float(config["threshold"])
        rows.append(
            {
                "column": column,
                "kind": "categorical" if column in categorical else "numerical",
                "method": METHOD_NAMES.get(config["method"], config["method"]),
                "score": score,
                "threshold": threshold,
                # both methods are distances: drift when the distance reaches the threshold
                "drifted": bool(score >= threshold),
            }
        )
    table = pd.DataFrame(rows, columns=["column", "kind", "method", "score", "threshold"])
    if rows:
        table["drifted"] = [r["drifted"] for r in rows]
        table["excess"] = table["score"] / table["threshold"]
        table = (
            table.sort_values("excess", ascending=False)
            .drop(columns="excess")
            .reset_index(drop=True)
        )
    else:
        table["drifted"] = pd.Series(dtype=bool)
    return DriftResult(table, snapshot, len(reference), len(current), float(drift_share))


def sample_sessions(frame: pd.DataFrame, max_rows: int, seed: int = 0) -> pd.DataFrame:
    """At most about `max_rows` rows, keeping whole sessions (chosen by a seeded hash)."""
    if len(frame) <= max_rows:
        return frame
    keys = frame["session_key"].drop_duplicates()
    salted = keys.astype(str) + f"#{seed}"
    order = keys.iloc[np.argsort(pd.util.hash_pandas_object(salted, index=False).to_numpy())]
    sizes = frame.groupby("session_key").size().reindex(order.to_numpy())
    chosen = sizes.index[np.cumsum(sizes.to_numpy()) <= max_rows]
    return frame[frame["session_key"].isin(set(chosen))]


def conversion_inputs(batch: Any) -> pd.DataFrame:
    """The model inputs of every prefix of a `ml.conversion.features.Batch`: the monitored
    feature columns plus the prefix's last category and price bucket, keyed by session and
    prefix length, with the label."""
    events = batch.events.iloc[batch.ends]
    frame = batch.features[monitored_features()].reset_index(drop=True)
    frame["category_top"] = events["category_top"].to_numpy()
    frame["price_bucket"] = pd.to_numeric(events["price_bucket"], errors="coerce").to_numpy()
    frame["session_key"] = events["session_key"].to_numpy()
    frame["will_purchase"] = events["will_purchase"].astype(bool).to_numpy()
    return frame


# --- severities -------------------------------------------------------------------------------


def grade(value: float, warn: float, error: float, *, higher_is_worse: bool = True) -> str:
    """`error` past the second threshold, `warn` past the first, else `ok` (NaN is `ok`:
    nothing was measured, and the metadata says so)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "ok"
    if higher_is_worse:
        return "error" if value > error else "warn" if value > warn else "ok"
    return "error" if value < error else "warn" if value < warn else "ok"


def worst(*severities: str) -> str:
    return max(severities, key=SEVERITIES.index, default="ok")


def level(severity: str) -> int:
    """0, 1, 2: the number the Plots tab draws."""
    return SEVERITIES.index(severity)


# --- quality ----------------------------------------------------------------------------------


def conversion_quality(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """The champion on one labelled day: ranking, calibration, and the two rates."""
    from ml.conversion import metrics

    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    scores = metrics.scores(y, p, 0.5)
    observed = float(y.mean()) if len(y) else math.nan
    predicted = float(p.mean()) if len(p) else math.nan
    return {
        "roc_auc": float(scores["roc_auc"]),
        "pr_auc": float(scores["pr_auc"]),
        "ece": float(scores["ece"]),
        "brier": float(scores["brier"]),
        "observed_rate": observed,
        "predicted_rate": predicted,
        # above 1: the model expects more purchases than happen (e.g. conversion fell)
        "calibration_ratio": predicted / observed if observed else math.nan,
        "positives": float(y.sum()),
        "prefixes": float(len(y)),
    }


@dataclass(frozen=True)
class RecommenderDay:
    metrics: dict[str, float]
    points: pd.DataFrame  # one row per prediction point: the columns watched for drift


def sample_requests(
    sessions: Sequence[Sequence[str]], max_sessions: int | None, seed: int = 0
) -> list[Sequence[str]]:
    """At most `max_sessions` of the sessions, a seeded simple random sample in their order
    (all of them when there are no more)."""
    if max_sessions is None or len(sessions) <= max_sessions:
        return list(sessions)
    if max_sessions < 1:
        raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
    chosen = np.random.default_rng(seed).choice(len(sessions), max_sessions, replace=False)
    return [sessions[i] for i in np.sort(chosen)]


def hit_rate_error(hits: np.ndarray, predictions: np.ndarray, population: int) -> float:
    """Standard error of a hit rate (sum of hits / sum of predictions over sampled sessions),
    the sessions a simple random sample of `population` sessions.

    A session's predictions are not independent (one session's hits go together), so the error
    is the session-level delta method of the ratio; the finite-population correction makes it
    0 when every session of the day was evaluated: the error is the sample's, not the day's.
    """
    n, total = len(hits), float(np.sum(predictions))
    if n < 2 or total == 0:
        return math.nan
    rate = float(np.sum(hits)) / total
    residual = np.asarray(hits, dtype=float) - rate * np.asarray(predictions, dtype=float)
    variance = n / (n - 1) * float(np.sum(residual**2)) / total**2
    return math.sqrt(max(0.0, 1 - n / population) * variance)


def recommender_day(
    sessions: Sequence[Sequence[str]],
    recommend_batch: Callable[[Sequence[Sequence[str]], int], list[list[str]]],
    known_items: set[str],
    popularity: Mapping[str, int],
    k: int = 20,
    *,
    max_sessions: int | None = None,
    seed: int = 0,
) -> RecommenderDay:
    """The recommender on one day's sessions with the offline protocol (item t+1 from items
    1..t), plus what the day asked of it: the share of requests whose last viewed item the
    model never saw in training, and how popular its recommendations are.

    `known_items` is the model's vocabulary; `popularity` its training counts per item. As in
    the champion's own evaluation, next items the model cannot know are left out of HR/MRR
    and counted instead (`unseen_target_share`), so the day's HR compares with the champion's.

    Recommending is what costs (about 90% of a day's monitoring when every session was
    evaluated), so with `max_sessions` the ranking metrics and the drift columns come from a
    seeded random sample of that many sessions, and `hr_at_<k>_se` with its 95% interval states
    that sample's error (`hit_rate_error`); the unseen shares, a set lookup per request, count
    every request of the day.
    """
    from ml.recommend.evaluate import evaluate

    sample = sample_requests(sessions, max_sessions, seed)
    result = evaluate(
        sample,
        recommend_batch=recommend_batch,
        k=k,
        popularity=dict(popularity),
        known_items=known_items,
    )
    # `result.points` holds only the requests whose next item the model can know (the ones HR
    # and the drift columns are about)
    steps = [(s[t - 1], s[t]) for s in sessions for t in range(1, len(s))]
    n = len(steps)
    unseen_input = np.fromiter((last not in known_items for last, _ in steps), bool, n)
    unseen_target = np.fromiter((nxt not in known_items for _, nxt in steps), bool, n)
    hits = np.bincount(result.points.session_index, weights=result.ranks > 0, minlength=len(sample))
    predictions = np.bincount(result.points.session_index, minlength=len(sample))
    se = hit_rate_error(hits, predictions, len(sessions))
    log_pop = {item: math.log1p(count) for item, count in popularity.items()}
    last = [prefix[-1] for prefix in result.points.prefixes]
    shown = [
        np.mean([log_pop.get(i, 0.0) for i in recs]) if recs else 0.0
        for recs in result.recommendations
    ]
    frame = pd.DataFrame(
        {
            "session_length": result.points.session_length.astype(float),
            "position": result.points.position.astype(float),
            "input_log_popularity": [log_pop.get(i, 0.0) for i in last],
            "input_unseen": ["known" if i in known_items else "unseen" for i in last],
            "recommended_log_popularity": np.asarray(shown, dtype=float),
            "hit": np.where(result.ranks > 0, "hit", "miss"),
        }
    )
    return RecommenderDay(
        metrics={
            f"hr_at_{k}": result.hr,
            f"hr_at_{k}_se": se,
            f"hr_at_{k}_ci95_low": result.hr - 1.96 * se,
            f"hr_at_{k}_ci95_high": result.hr + 1.96 * se,
            f"mrr_at_{k}": result.mrr,
            f"ndcg_at_{k}": result.ndcg,
            "unseen_request_share": float(unseen_input.mean()) if n else math.nan,
            "unseen_target_share": float(unseen_target.mean()) if n else math.nan,
            "popularity_bias": result.popularity_bias,
            "coverage": result.coverage,
            "predictions": float(result.predictions),
            "sessions": float(len(sessions)),
            "sampled_sessions": float(len(sample)),
        },
        points=frame,
    )


RECOMMENDER_NUMERICAL: tuple[str, ...] = (
    "session_length",
    "position",
    "input_log_popularity",
    "recommended_log_popularity",
)
RECOMMENDER_CATEGORICAL: tuple[str, ...] = ("input_unseen", "hit")


# --- the drift sensor's rule ------------------------------------------------------------------


def drift_episode(
    severities: Mapping[dt.date, str], day: dt.date, persistence: int
) -> dt.date | None:
    """The first day of the drift episode that `day` completes, or None.

    An episode is a run of consecutive days at `error`; it calls for retraining once it is
    `persistence` days long. The run is followed back from `day` (which must be at `error`)
    to its first day, so every later day of the same episode names the same first day.
    """
    if persistence < 1:
        raise ValueError("persistence must be at least 1 day")
    if severities.get(day) != "error":
        return None
    first = day
    while severities.get(first - dt.timedelta(days=1)) == "error":
        first -= dt.timedelta(days=1)
    return first if (day - first).days + 1 >= persistence else None
