"""Online experiments as pure functions: assignment, the event log's records, the evidence.

The server assigns a session to a variant by a stable hash of (experiment, session id), so a
session always sees the same variant and a new experiment reshuffles everyone. It appends one
JSON line per exposure (what it showed, which variant, which model, the stage and weights in
force) and per feedback (what the user did with an exposure) to `events-YYYY-MM-DD.jsonl`
files; `read_log` reads them back and `sessions_table` is the pandas twin of the warehouse mart
`experiment_sessions` (the statistics read the mart, so they run on Snowflake too).

Evidence (`evidence`) is what the rollout controller reads every hour. Decisions:
- The session, the unit of assignment, is the unit of analysis: click-through is a ratio of
  per-session sums (clicked exposures / exposures), linearized by the delta method, so
  exposures of one session are not counted as independent; conversion is purchased / sessions.
- A period is (experiment, stage, weights). Each period is compared on its own and the
  per-period differences are combined by inverse variance (`ml.sequential.combine`): pooling
  sessions across a ramp would mix a 1% stage with a 50% one and let any drift of the baseline
  over time leak into the lift (Simpson's paradox); inverse-variance weights are the efficient
  ones and keep the combined estimate a sum of independent increments in information time,
  which is what the mixture martingale of the always-valid interval assumes. If the effect
  differs between stages, the estimate is their information-weighted average.
- A session seen in two periods is a unit of each (sessions last minutes, periods hours).
- CUPED within each period, covariates `history_events` and `history_adds` at the session's
  first exposure: what the session did before any answer of this period was shown.
- The always-valid interval's mixture is tuned to be narrowest when the comparison is as
  precise as a 50/50 experiment with `n_star` sessions per arm, from the unadjusted per-session
  variance, so CUPED changes the interval only through the variance (`width_ratio`).
- Control is the arm whose role is champion, treatment the challenger. SRM is tested against
  the weights in force in each period (`ml.sequential.sample_ratio_mismatch`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ml import sequential

LOG_GLOB = "events-*.jsonl"
ACTIONS = ("click", "add", "purchase")
# The metric a problem's experiment is decided on; the other is a guardrail.
PRIMARY = {"recommender": "ctr", "conversion": "conversion"}
METRICS = ("ctr", "conversion")
CONTROL_ROLE, TREATMENT_ROLE = "champion", "challenger"
COVARIATES = ("history_events", "history_adds")

ALPHA = 0.05
N_STAR = 10_000  # sessions per arm (50/50) where the always-valid interval is narrowest
SRM_ALPHA = 0.001  # a p-value below this is a sample ratio mismatch


# --- assignment ---------------------------------------------------------------------------------


def bucket(experiment: str, session_id: str) -> float:
    """A uniform number in [0, 1) fixed by the experiment's name and the session id."""
    digest = hashlib.sha256(f"{experiment}\0{session_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(experiment: str, session_id: str, weights: Sequence[tuple[str, float]]) -> str:
    """The variant of a session: the weights (any positive scale) cut [0, 1) in order."""
    total = sum(w for _, w in weights)
    point = bucket(experiment, session_id) * total
    cumulative = 0.0
    for name, weight in weights:
        cumulative += weight
        if point < cumulative:
            return name
    return weights[-1][0]  # point == total only by rounding


# --- the log ----------------------------------------------------------------------------------


def log_file(folder: Path, day: dt.date) -> Path:
    return Path(folder) / f"events-{day.isoformat()}.jsonl"


@dataclass(frozen=True)
class Log:
    """What the event log holds: exposures, feedback, and lines that did not parse."""

    exposures: pd.DataFrame
    feedback: pd.DataFrame
    shadows: pd.DataFrame
    bad_lines: int
    files: int


EXPOSURE_COLUMNS = (
    "id",
    "at",
    "problem",
    "experiment",
    "mode",
    "stage",
    "session_id",
    "variant",
    "role",
    "model_version",
    "weights",
    "latency_ms",
    "error",
    "history_events",
    "history_adds",
)
FEEDBACK_COLUMNS = ("exposure_id", "action", "at")
SHADOW_COLUMNS = ("exposure_id", "role", "model_version")
SESSION_KEYS = ("problem", "experiment", "mode", "stage", "weights", "variant", "session_id")
SESSION_COLUMNS = (
    "problem",
    "experiment",
    "mode",
    "stage",
    "weights",
    "variant",
    "role",
    "model_version",
    "session_id",
    "first_at",
    "exposures",
    "clicked",
    "added",
    "purchased",
    "errors",
    "history_events",
    "history_adds",
)


def read_log(folder: Path, since: dt.date | None = None) -> Log:
    """Every record of the log files in `folder` (from `since` on). A line cut short by a crash
    (the last one of a file) or otherwise unreadable is skipped and counted."""
    exposures: list[dict] = []
    feedback: list[dict] = []
    shadows: list[dict] = []
    bad = 0
    files = sorted(Path(folder).glob(LOG_GLOB)) if Path(folder).exists() else []
    if since is not None:
        files = [f for f in files if f.name >= log_file(folder, since).name]
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                    kind = record["kind"]
                except (ValueError, KeyError, TypeError):
                    bad += 1
                    continue
                if kind == "exposure":
                    exposures.append(
                        {
                            **{c: record.get(c) for c in EXPOSURE_COLUMNS},
                            "weights": json.dumps(record.get("weights") or {}, sort_keys=True),
                        }
                    )
                elif kind == "feedback":
                    feedback.append({c: record.get(c) for c in FEEDBACK_COLUMNS})
                elif kind == "shadow":
                    shadows.append({c: record.get(c) for c in SHADOW_COLUMNS})
                else:
                    bad += 1
    return Log(
        exposures=pd.DataFrame(exposures, columns=list(EXPOSURE_COLUMNS)),
        feedback=pd.DataFrame(feedback, columns=list(FEEDBACK_COLUMNS)),
        shadows=pd.DataFrame(shadows, columns=list(SHADOW_COLUMNS)),
        bad_lines=bad,
        files=len(files),
    )


def sessions_table(exposures: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """The mart `experiment_sessions` from the log: one row per (problem, experiment, mode
    (missing: "ab"), stage, weights, variant, session) with its role and model version, first
    exposure time, exposures, exposures clicked, whether it added to cart / purchased after any
    of its exposures (0/1), exposures whose model call failed, and `history_events`/`history_adds`
    of its first exposure (earliest `at`, ties by exposure id)."""
    shown = exposures[exposures["experiment"].notna() & exposures["session_id"].notna()]
    shown = shown.assign(mode=shown["mode"].fillna("ab") if "mode" in shown else "ab")
    if shown.empty:
        return pd.DataFrame(columns=list(SESSION_COLUMNS))
    acted = (
        feedback.assign(one=1)
        .pivot_table(index="exposure_id", columns="action", values="one", aggfunc="max")
        .reindex(columns=list(ACTIONS))
        .fillna(0)
    )
    joined = (
        shown.join(acted, on="id")
        .fillna({a: 0 for a in ACTIONS})
        .assign(error=lambda t: t["error"].eq(True))
        .sort_values(["at", "id"], kind="stable")
    )
    table = joined.groupby(list(SESSION_KEYS), dropna=False).agg(
        role=("role", "first"),
        model_version=("model_version", "first"),
        first_at=("at", "min"),
        exposures=("id", "size"),
        clicked=("click", "sum"),
        added=("add", "max"),
        purchased=("purchase", "max"),
        errors=("error", "sum"),
        history_events=("history_events", "first"),
        history_adds=("history_adds", "first"),
    )
    table = table.reset_index()[list(SESSION_COLUMNS)]
    counts = ["exposures", "clicked", "added", "purchased", "errors"]
    table[counts] = table[counts].astype("int64")
    covariates = table[list(COVARIATES)].apply(pd.to_numeric)
    table[list(COVARIATES)] = covariates.fillna(0).astype("int64")
    return table


def srm(observed: Mapping[str, int], weights: Mapping[str, float]) -> tuple[float, float]:
    """Chi-square of units per variant against one set of weights: (statistic, p-value).
    A variant with weight but no units counts as 0 observed; p is NaN with fewer than two
    variants or no units."""
    statistic, _, p = sequential.sample_ratio_mismatch([(observed, weights)])
    return statistic, p


# --- evidence ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Treatment against control on one metric, sessions as the units.

    `low`/`high` and `p_value` are always valid: they hold at every look (a confidence
    sequence and its p-value), so a controller may read them every hour. The fixed-horizon
    values are what one z-test at this look would say; shown for comparison, never decided on.
    `control`/`treatment` are the arms' plain values over all their sessions; `absolute` is
    the stratified (and, if used, CUPED-adjusted) difference, so it may differ from
    treatment - control by the rebalancing of periods and covariates.
    """

    metric: str
    control: float
    treatment: float
    absolute: float  # treatment - control, stratified over periods (and adjusted)
    low: float  # always-valid interval of `absolute`
    high: float
    p_value: float  # always-valid p-value of "no difference"
    fixed_low: float
    fixed_high: float
    fixed_p_value: float
    relative: float  # absolute / control
    width_ratio: float  # interval width with variance reduction / without (1.0: none used)


@dataclass(frozen=True)
class Health:
    """One arm's operational numbers over the sessions read."""

    sessions: int
    exposures: int
    error_rate: float  # exposures whose model call failed / exposures
    p99_latency_ms: float


@dataclass(frozen=True)
class Evidence:
    """What the rollout controller reads about one challenger: both arms' health, the
    comparison on every metric (stratified over the experiment's periods, so a ramp that
    changed the weights does not bias it), the SRM p-value against the weights in force in
    each period, and the sessions of the stage now running."""

    problem: str
    experiment: str
    primary: str
    control: Health
    treatment: Health
    comparisons: Mapping[str, Comparison]  # by metric name: "ctr", "conversion"
    srm_p_value: float
    stage: str | None  # the stage of the latest period
    stage_sessions: int  # treatment sessions in that stage
    stage_started_at: str  # first exposure of that stage (ISO 8601 UTC)
    shadow_scores: int
    first_at: str
    last_at: str


def _unit_values(rows: pd.DataFrame, metric: str, treated: np.ndarray) -> np.ndarray:
    """Per-session values whose arm means are the arms' metrics. Click-through is linearized
    within each arm (around that arm's ratio and mean exposures), so the difference of the arm
    means is the difference of the ratios even when one arm's sessions see more widgets."""
    if metric != "ctr":
        return rows["purchased"].to_numpy(dtype=float)
    values = np.empty(len(rows))
    for arm in (treated, ~treated):
        values[arm] = sequential.linearize(rows["clicked"][arm], rows["exposures"][arm])
    return values


def _difference(values: np.ndarray, treated: np.ndarray) -> tuple[float, float]:
    """Mean of treatment - mean of control, and its variance (ddof 1 in each arm)."""
    t, c = values[treated], values[~treated]
    return t.mean() - c.mean(), t.var(ddof=1) / len(t) + c.var(ddof=1) / len(c)


def _compare(
    periods: list[pd.DataFrame],
    metric: str,
    control: float,
    treatment: float,
    *,
    alpha: float,
    use_cuped: bool,
    n_star: int,
) -> Comparison:
    """One metric over the periods (each with both arms, >= 2 sessions in each)."""
    plain, adjusted, squares, dof = [], [], 0.0, 0
    for rows in periods:
        treated = (rows["role"] == TREATMENT_ROLE).to_numpy()
        values = _unit_values(rows, metric, treated)
        plain.append(_difference(values, treated))
        for arm in (treated, ~treated):
            squares += float(((values[arm] - values[arm].mean()) ** 2).sum())
            dof += int(arm.sum()) - 1
        if use_cuped:
            covariates = rows[list(COVARIATES)].to_numpy(dtype=float)
            values = sequential.cuped(values, covariates, treated).values
            adjusted.append(_difference(values, treated))
    d0, v0 = sequential.combine(*zip(*plain, strict=True)) if plain else (math.nan, math.nan)
    d, v = sequential.combine(*zip(*adjusted, strict=True)) if adjusted else (d0, v0)
    relative = d / control if control else math.nan
    unit_variance = squares / dof if dof > 0 else math.nan
    if not (unit_variance > 0 and v > 0):
        nan = math.nan
        return Comparison(
            metric, control, treatment, d, nan, nan, nan, nan, nan, nan, relative, 1.0
        )
    tau2 = sequential.tuned_mixture(2 * unit_variance / n_star, alpha)
    low, high = sequential.confidence_sequence(d, v, tau2, alpha)
    low0, high0 = sequential.confidence_sequence(d0, v0, tau2, alpha)
    fixed_low, fixed_high, fixed_p = sequential.fixed_interval(d, v, alpha)
    return Comparison(
        metric=metric,
        control=control,
        treatment=treatment,
        absolute=d,
        low=float(low),
        high=float(high),
        p_value=float(sequential.always_valid_p(d, v, tau2)),
        fixed_low=float(fixed_low),
        fixed_high=float(fixed_high),
        fixed_p_value=float(fixed_p),
        relative=relative,
        width_ratio=float((high - low) / (high0 - low0)) if use_cuped else 1.0,
    )


def _is_stage(stages: pd.Series, stage: str | None) -> pd.Series:
    return stages.isna() if stage is None else stages == stage


def _health(sessions: pd.DataFrame, exposures: pd.DataFrame) -> Health:
    latency = exposures["latency_ms"].dropna().to_numpy(dtype=float)
    errors = exposures["error"].eq(True)
    return Health(
        sessions=int(sessions["session_id"].nunique()),
        exposures=len(exposures),
        error_rate=float(errors.mean()) if len(errors) else math.nan,
        p99_latency_ms=float(np.quantile(latency, 0.99)) if len(latency) else math.nan,
    )


def _arm_value(rows: pd.DataFrame, metric: str) -> float:
    if metric == "ctr":
        exposed = rows["exposures"].sum()
        return float(rows["clicked"].sum() / exposed) if exposed else math.nan
    return float(rows["purchased"].mean()) if len(rows) else math.nan


def _periods(rows: pd.DataFrame):
    """(stage, weights, rows) per period, in order of first exposure."""
    keyed = rows.assign(_stage=rows["stage"].fillna("\0"))
    order = keyed.groupby(["_stage", "weights"])["first_at"].min().sort_values()
    for stage, weights in order.index:
        period = keyed[(keyed["_stage"] == stage) & (keyed["weights"] == weights)]
        yield (None if stage == "\0" else stage), weights, period.drop(columns="_stage")


def evidence(
    sessions: pd.DataFrame,
    exposures: pd.DataFrame,
    problem: str,
    experiment: str,
    *,
    alpha: float = ALPHA,
    cuped: bool = True,
    n_star: int = N_STAR,
    shadow_scores: int = 0,
) -> Evidence | None:
    """The evidence on one experiment from the marts `experiment_sessions` and
    `experiment_exposures` (None when it has no sessions). Comparisons have NaN intervals
    until some period has >= 2 sessions in each arm (e.g. during the shadow stage)."""
    rows = sessions[(sessions["problem"] == problem) & (sessions["experiment"] == experiment)]
    if rows.empty:
        return None
    shown = exposures[(exposures["problem"] == problem) & (exposures["experiment"] == experiment)]
    periods, counts = [], []
    for _, weights, period in _periods(rows):
        counts.append((period.groupby("variant").size().to_dict(), json.loads(weights)))
        arms = period["role"].value_counts()
        if arms.get(CONTROL_ROLE, 0) >= 2 and arms.get(TREATMENT_ROLE, 0) >= 2:
            periods.append(period[period["role"].isin([CONTROL_ROLE, TREATMENT_ROLE])])
    control = rows[rows["role"] == CONTROL_ROLE]
    treatment = rows[rows["role"] == TREATMENT_ROLE]
    comparisons = {
        m: _compare(
            periods,
            m,
            _arm_value(control, m),
            _arm_value(treatment, m),
            alpha=alpha,
            use_cuped=cuped,
            n_star=n_star,
        )
        for m in METRICS
    }
    # the stage and times from the exposures; from the sessions if the caller has none
    seen = shown if len(shown) else rows.rename(columns={"first_at": "at"})
    stage = seen.sort_values("at")["stage"].iloc[-1]
    stage = None if pd.isna(stage) else str(stage)
    return Evidence(
        problem=problem,
        experiment=experiment,
        primary=PRIMARY.get(problem, "conversion"),
        control=_health(control, shown[shown["role"] == CONTROL_ROLE]),
        treatment=_health(treatment, shown[shown["role"] == TREATMENT_ROLE]),
        comparisons=comparisons,
        srm_p_value=sequential.sample_ratio_mismatch(counts)[2],
        stage=stage,
        stage_sessions=int(
            treatment.loc[_is_stage(treatment["stage"], stage), "session_id"].nunique()
        ),
        stage_started_at=str(seen.loc[_is_stage(seen["stage"], stage), "at"].min()),
        shadow_scores=shadow_scores,
        first_at=str(seen["at"].min()),
        last_at=str(seen["at"].max()),
    )


@dataclass(frozen=True)
class ExperimentResult:
    problem: str
    experiment: str
    primary: str
    variants: pd.DataFrame  # one row per variant: counts, metrics, health, lifts vs control
    evidence: Evidence


def experiment_results(
    sessions: pd.DataFrame,
    exposures: pd.DataFrame,
    *,
    alpha: float = ALPHA,
    cuped: bool = True,
    n_star: int = N_STAR,
    shadow_scores: Mapping[str, int] | None = None,
) -> list[ExperimentResult]:
    """Per experiment (sorted by problem, name): a table of its variants (role, model
    version, latest weight, sessions, exposures, clicked, purchases, ctr, conversion, error
    rate, p99 latency; for the challenger each metric's relative lift with its always-valid
    interval, the interval divided by the control's value, and p-value) and its Evidence.
    `shadow_scores`: shadow records per experiment name, counted by the caller."""
    results = []
    for (problem, experiment), rows in sessions.groupby(["problem", "experiment"], sort=True):
        found = evidence(
            sessions,
            exposures,
            str(problem),
            str(experiment),
            alpha=alpha,
            cuped=cuped,
            n_star=n_star,
            shadow_scores=(shadow_scores or {}).get(str(experiment), 0),
        )
        shown = exposures[
            (exposures["problem"] == problem) & (exposures["experiment"] == experiment)
        ]
        weights = json.loads(rows.sort_values("first_at")["weights"].iloc[-1])
        table = []
        for variant in sorted(set(rows["variant"]) | set(weights)):
            units = rows[rows["variant"] == variant]
            health = _health(units, shown[shown["variant"] == variant])
            role = units["role"].iloc[0] if len(units) else None
            row = {
                "variant": variant,
                "role": role,
                "model_version": units["model_version"].iloc[0] if len(units) else None,
                "weight": float(weights.get(variant, 0.0)),
                "sessions": health.sessions,
                "exposures": int(units["exposures"].sum()),
                "clicked": int(units["clicked"].sum()),
                "purchases": int(units["purchased"].sum()),
                **{m: _arm_value(units, m) for m in METRICS},
                "error_rate": health.error_rate,
                "p99_latency_ms": health.p99_latency_ms,
            }
            if role == TREATMENT_ROLE:
                for m, c in found.comparisons.items():
                    scale = c.control if c.control else math.nan
                    row |= {
                        f"{m}_lift": c.relative,
                        f"{m}_lift_low": c.low / scale,
                        f"{m}_lift_high": c.high / scale,
                        f"{m}_p_value": c.p_value,
                    }
            table.append(row)
        results.append(
            ExperimentResult(
                problem=str(problem),
                experiment=str(experiment),
                primary=found.primary,
                variants=pd.DataFrame(table),
                evidence=found,
            )
        )
    return results
