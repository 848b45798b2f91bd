"""Are the experiment statistics honest? A Monte Carlo against the simulator's ground truth.

    .venv/bin/python bench/experiments.py [--runs N] [--json]

The Monte Carlo calls the ml functions directly (`ml.simulate.simulate_sessions`,
`ml.sequential`, `ml.experiments.evidence`), not the HTTP server: thousands of 14-day
experiments would take days over HTTP, and the server's path to the log is tested elsewhere.

Pools. Shoppers of the generator's default world (`GeneratorConfig()`, regime "pre") meet two
recommenders of known quality, `POOL` sessions each (sessions that saw at least one widget):
"best", the truth's own top-10 next items (`true_top_k`), and "swapped", the same list with
its first and last items swapped (position bias makes that worse). A session drawn into an
experiment is a pool session drawn with replacement whose clicks are redrawn as
Binomial(exposures, expected_clicks / exposures) and purchase as Bernoulli(exact purchase
probability), so the true click-through of a policy is sum(expected_clicks) / sum(exposures)
over its pool and the true lift (absolute, best - swapped) is known exactly for this design.

Experiments: `SESSIONS_PER_DAY` sessions a day for 14 days, arriving uniformly, a look at the
end of every hour (336 looks), the always-valid interval's mixture tuned at `N_STAR` sessions
per arm from the pool's per-session variance (a fixed, pre-set tau2), alpha 0.05.
- A/A (`--runs`, "best" in both arms, 50/50): a false promotion is a lower bound > 0 at any
  look, by the always-valid interval and by a z-interval recomputed at every look.
- Real effect (`--runs`, best as challenger against swapped), 50/50: sessions (both arms) at
  the first look whose always-valid lower bound is > 0; runs never deciding count as never.
- Coverage (`--runs`, the same pair through a ramp 1% -> 5% -> 25% -> 50% over the days,
  analysed once at day 14 by `ml.experiments.evidence` on mart-shaped rows: periods
  stratified, CUPED on): the share of fixed and of always-valid 95% intervals containing the
  true lift, and the CUPED width ratio (interval with / without adjustment).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from ml import experiments as stats
from ml import sequential as seq
from ml.simulate import simulate_sessions, true_top_k, world
from ml.synthetic import GeneratorConfig

POOL = 20_000
DAYS = 14
SESSIONS_PER_DAY = 1_500
N_STAR = stats.N_STAR
ALPHA = 0.05
RAMP = ((0, 0.01, "1%"), (1, 0.05, "5%"), (2, 0.25, "25%"), (4, 0.5, "50%"))  # from day, share
SEED = 2026


def pools() -> dict[str, pd.DataFrame]:
    w = world(GeneratorConfig())
    best = true_top_k(w)

    def swapped(items: list[str], k: int) -> list[str]:
        shown = best(items, k)
        if len(shown) > 1:
            shown[0], shown[-1] = shown[-1], shown[0]
        return shown

    out = {}
    for seed, (name, policy) in enumerate({"best": best, "swapped": swapped}.items()):
        sessions = simulate_sessions(w, policy, int(POOL * 1.2), seed=SEED + seed)
        out[name] = sessions[sessions["exposures"] > 0].head(POOL).reset_index(drop=True)
    return out


def true_ctr(pool: pd.DataFrame) -> float:
    return float(pool["expected_clicks"].sum() / pool["exposures"].sum())


def draw(pool: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    rows = pool.iloc[rng.integers(0, len(pool), n)]
    exposures = rows["exposures"].to_numpy()
    chance = np.clip(rows["expected_clicks"].to_numpy() / exposures, 0, 1)
    return pd.DataFrame(
        {
            "exposures": exposures,
            "clicked": rng.binomial(exposures, chance),
            "purchased": (rng.random(n) < rows["purchase_probability"].to_numpy()).astype(int),
            "history_events": rows["history_events"].to_numpy(),
            "history_adds": rows["history_adds"].to_numpy(),
        }
    )


def hourly_looks(treated: np.ndarray, control: np.ndarray, rng: np.random.Generator):
    """Difference in CTR (treated - control) and its variance at the end of every hour of a
    50/50 experiment of len(treated) sessions (each frame holds enough for its arm), and the
    sessions seen by then; from cumulative sums (`ratio_from_sums`)."""
    n = len(treated)
    hours = np.sort(rng.random(n) * DAYS * 24)
    arm = rng.random(n) < 0.5
    ends = np.arange(1, DAYS * 24 + 1)
    estimates = []
    for frame, mask in ((treated, arm), (control, ~arm)):
        x = frame["clicked"].to_numpy(float)[: mask.sum()]
        y = frame["exposures"].to_numpy(float)[: mask.sum()]
        seen = np.searchsorted(hours[mask], ends, side="right")

        def at(values: np.ndarray, seen: np.ndarray = seen) -> np.ndarray:
            return np.concatenate([[0.0], np.cumsum(values)])[seen]

        estimates.append(seq.ratio_from_sums(seen, at(x), at(y), at(x * x), at(x * y), at(y * y)))
    (rt, vt), (rc, vc) = estimates
    total = np.searchsorted(hours, ends, side="right")
    return rt - rc, vt + vc, total


def ramped(treated: pd.DataFrame, control: pd.DataFrame, rng: np.random.Generator):
    """Mart rows (`experiment_sessions`) of one experiment ramped through `RAMP`."""
    n = DAYS * SESSIONS_PER_DAY
    day = np.sort(rng.integers(0, DAYS, n))
    starts = np.array([d for d, _, _ in RAMP])
    stage = np.searchsorted(starts, day, side="right") - 1
    share = np.array([s for _, s, _ in RAMP])[stage]
    challenger = rng.random(n) < share
    rows = pd.concat([treated.head(challenger.sum()), control.head((~challenger).sum())])
    order = np.concatenate([np.flatnonzero(challenger), np.flatnonzero(~challenger)])
    rows = rows.set_axis(order).sort_index()
    names = np.array([name for _, _, name in RAMP])
    weights = [json.dumps({"challenger": s, "champion": 1 - s}, sort_keys=True) for _, s, _ in RAMP]
    return rows.assign(
        problem="recommender",
        experiment="bench",
        stage=names[stage],
        weights=np.array(weights)[stage],
        variant=np.where(challenger, "challenger", "champion"),
        role=np.where(challenger, "challenger", "champion"),
        model_version=np.where(challenger, "best", "swapped"),
        session_id=[f"s{i}" for i in range(n)],
        first_at=[f"2026-01-{5 + d:02d}T00:00:00.000Z" for d in day],
        added=0,
        errors=0,
    )


def run(runs: int) -> dict:
    began = time.perf_counter()
    rng = np.random.default_rng(SEED)
    pool = pools()
    truth = true_ctr(pool["best"]) - true_ctr(pool["swapped"])
    sample = draw(pool["best"], POOL, rng)
    unit_variance = float(np.var(seq.linearize(sample["clicked"], sample["exposures"]), ddof=1))
    tau2 = seq.tuned_mixture(2 * unit_variance / N_STAR, ALPHA)
    n = DAYS * SESSIONS_PER_DAY

    valid_false = fixed_false = 0
    for _ in range(runs):
        d, v, _ = hourly_looks(draw(pool["best"], n, rng), draw(pool["best"], n, rng), rng)
        low, _ = seq.confidence_sequence(d, v, tau2, ALPHA)
        valid_false += bool(np.any(low > 0))
        fixed_false += bool(np.any(seq.fixed_interval(d, v, ALPHA)[0] > 0))

    decided_at = []
    for _ in range(runs):
        d, v, total = hourly_looks(draw(pool["best"], n, rng), draw(pool["swapped"], n, rng), rng)
        low, _ = seq.confidence_sequence(d, v, tau2, ALPHA)
        hits = np.flatnonzero(low > 0)
        decided_at.append(int(total[hits[0]]) if len(hits) else np.inf)

    covered_fixed = covered_valid = 0
    width = {m: [] for m in stats.METRICS}
    no_exposures = pd.DataFrame(
        columns=["problem", "experiment", "stage", "variant", "role", "latency_ms", "error", "at"]
    )
    for _ in range(runs):
        rows = ramped(draw(pool["best"], n, rng), draw(pool["swapped"], n, rng), rng)
        found = stats.evidence(rows, no_exposures, "recommender", "bench", alpha=ALPHA)
        ctr = found.comparisons["ctr"]
        covered_fixed += ctr.fixed_low <= truth <= ctr.fixed_high
        covered_valid += ctr.low <= truth <= ctr.high
        for m in stats.METRICS:
            width[m].append(found.comparisons[m].width_ratio)

    median = float(np.median(decided_at))
    return {
        "aa_runs": runs,
        "aa_false_promotion_rate": valid_false / runs,
        "fixed_horizon_false_promotion_rate": fixed_false / runs,
        "looks": DAYS * 24,
        "sessions_per_day": SESSIONS_PER_DAY,
        "true_ctr": {"best": true_ctr(pool["best"]), "swapped": true_ctr(pool["swapped"])},
        "true_lift": truth,
        "effect_runs": runs,
        "coverage": covered_fixed / runs,
        "always_valid_coverage": covered_valid / runs,
        "cuped_width_ratio": float(np.mean(width["ctr"])),
        "cuped_width_ratio_conversion": float(np.mean(width["conversion"])),
        "sessions_to_decision": None if np.isinf(median) else median,
        "decided_share": float(np.mean(np.isfinite(decided_at))),
        "seconds": round(time.perf_counter() - began, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="experiments of each kind")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    result = run(args.runs)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:38} {value}")


if __name__ == "__main__":
    main()
