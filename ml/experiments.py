"""Online experiments as pure functions: assignment, the event log's records, statistics.

The server assigns a session to a variant by a stable hash of (experiment, session id), so a
session always sees the same variant and a new experiment reshuffles everyone. It appends one
JSON line per exposure (what it showed, which variant, which model) and per feedback (what the
user did with an exposure) to `events-YYYY-MM-DD.jsonl` files; `read_log` reads them back.

Statistics use the session, the unit of assignment, as the unit of analysis: a metric is a
ratio of per-session sums (clicked exposures / exposures, converting sessions / sessions), its
variance by the delta method (Deng et al., "Applying the Delta Method in Metric Analytics",
2018), so exposures of one session are not counted as independent. The sample-ratio-mismatch
check compares sessions per variant with the configured weights (chi-square): a mismatch means
assignment or logging is broken and no lift can be trusted.
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

LOG_GLOB = "events-*.jsonl"
ACTIONS = ("click", "add", "purchase")
# The metric a problem's experiment is decided on; the other is a guardrail.
PRIMARY = {"recommender": "ctr", "conversion": "conversion"}
METRICS = ("ctr", "conversion")
CONTROL_ROLE = "champion"

# Defaults; the Dagster asset exposes each as configuration.
CONFIDENCE = 0.95
SRM_ALPHA = 0.001  # a p-value below this is a sample ratio mismatch
MIN_SESSIONS = 1000  # per variant, before any decision other than "keep"


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
    "session_id",
    "variant",
    "role",
    "model_version",
    "weights",
)
FEEDBACK_COLUMNS = ("exposure_id", "action", "at")
SHADOW_COLUMNS = ("exposure_id", "role", "model_version")


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
    """One row per (problem, experiment, variant, session): exposures, exposures clicked,
    and whether the session added to cart or purchased after any of its exposures."""
    shown = exposures[exposures["experiment"].notna() & exposures["session_id"].notna()]
    keys = ["problem", "experiment", "variant", "role", "session_id"]
    if shown.empty:
        return pd.DataFrame(columns=[*keys, "exposures", "clicked", "added", "purchased"])
    acted = (
        feedback.assign(one=1)
        .pivot_table(index="exposure_id", columns="action", values="one", aggfunc="max")
        .reindex(columns=list(ACTIONS))
        .fillna(0)
    )
    joined = shown.join(acted, on="id").fillna({a: 0 for a in ACTIONS})
    table = joined.groupby(keys, dropna=False).agg(
        exposures=("id", "size"),
        clicked=("click", "sum"),
        added=("add", "max"),
        purchased=("purchase", "max"),
    )
    return table.reset_index()


# --- statistics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A ratio metric over units: its value, the variance of that value, and the units."""

    value: float
    variance: float
    units: int


def ratio_metric(numerators: np.ndarray, denominators: np.ndarray) -> Estimate:
    """sum(x) / sum(y) over units, with its delta-method variance (y = 1: a proportion)."""
    x = np.asarray(numerators, dtype=float)
    y = np.asarray(denominators, dtype=float)
    n = len(x)
    if n == 0 or y.sum() == 0:
        return Estimate(math.nan, math.nan, n)
    ratio = x.sum() / y.sum()
    if n < 2:
        return Estimate(float(ratio), math.nan, n)
    cov = np.cov(x, y)  # ddof=1
    variance = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]) / (n * y.mean() ** 2)
    return Estimate(float(ratio), float(max(variance, 0.0)), n)


@dataclass(frozen=True)
class Lift:
    """Treatment against control: the difference and the relative lift, each with a
    two-sided confidence interval, and the p-value of "no difference"."""

    control: float
    treatment: float
    absolute: float
    absolute_low: float
    absolute_high: float
    relative: float
    relative_low: float
    relative_high: float
    p_value: float


def _normal_quantile(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


def lift(treatment: Estimate, control: Estimate, confidence: float = CONFIDENCE) -> Lift:
    """Difference (z interval on the summed variances) and relative lift (interval on the log
    of the ratio, delta method), for independent groups."""
    from scipy.stats import norm

    z = _normal_quantile(confidence)
    t, c = treatment.value, control.value
    diff = t - c
    se = math.sqrt(treatment.variance + control.variance)
    if math.isnan(se) or se == 0:
        p = math.nan if math.isnan(diff) or math.isnan(se) or diff == 0 else 0.0
        low = high = diff
    else:
        p = float(2 * norm.sf(abs(diff) / se))
        low, high = diff - z * se, diff + z * se
    if t > 0 and c > 0:
        log_se = math.sqrt(treatment.variance / t**2 + control.variance / c**2)
        relative = t / c - 1
        rel_low = math.exp(math.log(t / c) - z * log_se) - 1
        rel_high = math.exp(math.log(t / c) + z * log_se) - 1
    else:
        relative = rel_low = rel_high = math.nan
    return Lift(c, t, diff, low, high, relative, rel_low, rel_high, p)


def srm(observed: Mapping[str, int], weights: Mapping[str, float]) -> tuple[float, float]:
    """Chi-square goodness of fit of units per variant to the weights: (statistic, p-value).

    A variant with weight but no units counts as 0 observed; p is NaN with fewer than two
    variants or no units."""
    from scipy.stats import chisquare

    names = sorted(weights)
    counts = np.array([observed.get(n, 0) for n in names], dtype=float)
    shares = np.array([weights[n] for n in names], dtype=float)
    if len(names) < 2 or counts.sum() == 0 or shares.sum() <= 0:
        return math.nan, math.nan
    statistic, p = chisquare(counts, counts.sum() * shares / shares.sum())
    return float(statistic), float(p)


def decide(
    primary: Lift,
    guardrails: Sequence[Lift],
    srm_p: float,
    sessions: Sequence[int],
    *,
    min_sessions: int = MIN_SESSIONS,
    srm_alpha: float = SRM_ALPHA,
) -> tuple[str, str]:
    """promote / keep / stop for one challenger, with the reason. Only a recommendation:
    promotion itself still goes through the gates in Dagster."""
    if not math.isnan(srm_p) and srm_p < srm_alpha:
        return "stop", (
            f"sample ratio mismatch (p = {srm_p:.2g} < {srm_alpha}): assignment or logging is "
            "broken, so no lift can be trusted; fix it and restart the experiment"
        )
    if min(sessions) < min_sessions:
        return (
            "keep",
            f"{min(sessions):,} sessions in the smallest variant, fewer than {min_sessions:,}",
        )
    harmed = [g for g in guardrails if g.absolute_high < 0]
    if primary.absolute_high < 0 or harmed:
        what = "the primary metric" if primary.absolute_high < 0 else "a guardrail metric"
        return "stop", f"the challenger is significantly worse on {what}"
    if primary.absolute_low > 0:
        return "promote", (
            f"the challenger is significantly better: {primary.relative:+.1%} "
            f"({primary.relative_low:+.1%} .. {primary.relative_high:+.1%})"
        )
    return "keep", "no significant difference yet"


@dataclass(frozen=True)
class ExperimentResult:
    problem: str
    experiment: str
    primary: str
    variants: pd.DataFrame  # one row per variant: counts, metrics, lifts against control
    srm_statistic: float
    srm_p_value: float
    decision: str
    reason: str
    first_at: str
    last_at: str
    shadow_scores: int


def _weights(exposures: pd.DataFrame) -> dict[str, float]:
    """The experiment's configured weights, as its latest exposure logged them."""
    return {k: float(v) for k, v in json.loads(exposures["weights"].iloc[-1]).items()}


def experiment_results(
    log: Log,
    *,
    confidence: float = CONFIDENCE,
    min_sessions: int = MIN_SESSIONS,
    srm_alpha: float = SRM_ALPHA,
) -> list[ExperimentResult]:
    """Per experiment and variant: sessions, exposures, click-through and conversion; the lift
    of each challenger over the champion with confidence intervals; the SRM check; and a
    recommendation (promote, keep, stop)."""
    sessions = sessions_table(log.exposures, log.feedback)
    results = []
    for (problem, experiment), group in sessions.groupby(["problem", "experiment"], sort=True):
        exposures = log.exposures[
            (log.exposures["problem"] == problem) & (log.exposures["experiment"] == experiment)
        ]
        weights = _weights(exposures)
        estimates = {}
        rows = []
        for variant, units in group.groupby("variant", sort=False):
            metrics = {
                "ctr": ratio_metric(units["clicked"], units["exposures"]),
                "conversion": ratio_metric(units["purchased"], np.ones(len(units))),
            }
            estimates[variant] = metrics
            rows.append(
                {
                    "variant": variant,
                    "role": units["role"].iloc[0],
                    "weight": weights.get(variant, math.nan),
                    "sessions": len(units),
                    "exposures": int(units["exposures"].sum()),
                    "clicked": int(units["clicked"].sum()),
                    "purchases": int(units["purchased"].sum()),
                    **{m: e.value for m, e in metrics.items()},
                }
            )
        table = pd.DataFrame(rows).set_index("variant")
        for missing in set(weights) - set(table.index):
            table.loc[missing] = {"weight": weights[missing], "sessions": 0, "exposures": 0}
        statistic, p = srm(table["sessions"].to_dict(), weights)
        primary = PRIMARY.get(problem, "conversion")
        control = next((v for v in table.index if table.loc[v, "role"] == CONTROL_ROLE), None)
        decisions = []
        for variant in table.index:
            if variant == control or control is None or variant not in estimates:
                continue
            lifts = {
                m: lift(estimates[variant][m], estimates[control][m], confidence) for m in METRICS
            }
            for m, value in lifts.items():
                table.loc[variant, f"{m}_lift"] = value.relative
                table.loc[variant, f"{m}_lift_low"] = value.relative_low
                table.loc[variant, f"{m}_lift_high"] = value.relative_high
                table.loc[variant, f"{m}_p_value"] = value.p_value
            decision, reason = decide(
                lifts[primary],
                [lifts[m] for m in METRICS if m != primary],
                p,
                [int(table.loc[variant, "sessions"]), int(table.loc[control, "sessions"])],
                min_sessions=min_sessions,
                srm_alpha=srm_alpha,
            )
            table.loc[variant, "decision"] = decision
            decisions.append((variant, decision, reason, lifts[primary].relative))
        decision, reason = _overall(decisions, control)
        results.append(
            ExperimentResult(
                problem=str(problem),
                experiment=str(experiment),
                primary=primary,
                variants=table.reset_index(),
                srm_statistic=statistic,
                srm_p_value=p,
                decision=decision,
                reason=reason,
                first_at=str(exposures["at"].min()),
                last_at=str(exposures["at"].max()),
                shadow_scores=int(log.shadows["exposure_id"].isin(exposures["id"]).sum()),
            )
        )
    return results


def _overall(decisions: list[tuple[str, str, str, float]], control: str | None) -> tuple[str, str]:
    """One recommendation for the experiment from its challengers' decisions."""
    if control is None:
        return "keep", "no champion variant in this experiment: nothing to compare with"
    if not decisions:
        return "keep", "only the champion gets traffic (a challenger, if any, runs in shadow)"
    promoted = [d for d in decisions if d[1] == "promote"]
    if promoted:
        variant, _, reason, _ = max(promoted, key=lambda d: d[3])
        return "promote", f"{variant}: {reason}"
    stopped = [d for d in decisions if d[1] == "stop"]
    if len(stopped) == len(decisions):
        return "stop", "; ".join(f"{v}: {r}" for v, _, r, _ in stopped)
    return "keep", "; ".join(f"{v}: {r}" for v, d, r, _ in decisions if d == "keep")
