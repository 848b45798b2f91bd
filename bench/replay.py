"""Testing recommenders before traffic: do replay estimates and interleaving rank candidates as
shoppers would, and how many fewer sessions does interleaving need than an A/B test?

    .venv/bin/python bench/replay.py [--json] [--quick]

Everything runs in process against the simulator's truth (`ml.simulate`), no HTTP:

1. Data, in memory: a generated world (`GeneratorConfig(seed=7, n_products=...)`, regime
   "pre") and its visits without a widget (`ml.simulate.browsing_sessions`): training sessions
   and a held-out "test day" drawn with another seed.
2. Candidates: POP, session-kNN, the torch GRU (few epochs) and TailFirst(session-kNN) (the
   kNN's top 20 shown weakest first: its HR@20 exactly, built to look good offline). The
   champion is session-kNN, the best HR@20 here (TailFirst ties it by construction).
   Offline HR@20 and MRR@20 on the test day (`ml.recommend.evaluate`, targets unseen in
   training excluded).
3. `ml.offline_online.offline_online`: the champion exploring at the server's defaults
   (`Exploration()`: 5% of requests shuffle the top 20) logs the replay log; every candidate's
   IPS, SNIPS, DM and DR on it, the exact click-through its lists would have had on the logged
   contexts (`true_ctr_logged`), its own online click-through (`true_ctr`), an A/B lift and an
   interleaving win rate against the champion, and rank correlations with `true_ctr`.
   `ope_relative_error`: per estimator, the largest |estimate - true_ctr_logged| /
   true_ctr_logged over the candidates.
   Accuracy against exploration (`ope_by_exploration`): the same number of logged sessions
   replayed again with 20% of requests explored (replay only, no online runs). At 5% a
   matching shuffled position weighs 1 / (0.05 / 20) = 400, and DR's correction term is
   noise-dominated for targets far from the champion; at 20% it weighs 100.
   `ope_max_relative_error` is the smaller of SNIPS's and DR's at `OPE_EXPLORATION` (20%),
   with the volume; the server's default 5% is reported beside it (it would need about four
   times the log for the same accuracy). Exploration costs clicks: `exploration_cost` is the
   logged click-through at each share against the champion's unexplored click-through.
4. Sensitivity (`interleaving_sessions_ratio`): a pair of cheap recommenders, the lists of
   the champion (session-kNN) and of session-kNN with IDF weighting for the last viewed item
   alone, precomputed for every product: a dict lookup per request, so thousands of sessions
   take seconds, and both fit in a second, so `--quick` measures the same pair. They differ
   by a few percent of click-through (about 4% here), the size of difference a release
   decides; against a pair far apart (the truth's own ranking, 30% better) interleaving
   decides at its first look, and the ratio measures the look interval. The truly better
   one (exact expected clicks over the pools) is the challenger. Pools of sessions under
   each alone and under their team draft; each run draws sessions with replacement and
   looks every `LOOK` sessions until the always-valid interval is above 0: A/B 50/50 by
   session on click-through (per-session sums linearized, `ml.sequential`, the mixture tuned
   at `ml.experiments.N_STAR` sessions per arm as the release evidence is), interleaving
   with `ml.interleaving.interleaving_result` (its default n_star). A run that never decides
   within the cap counts at the cap (the ratio is then a lower bound) and is reported.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml import experiments as stats
from ml import sequential as seq
from ml.interleaving import interleaving_result
from ml.offline_online import (
    ESTIMATORS,
    TailFirst,
    credits_of,
    log_of,
    logged_rates,
    offline_online,
    replayed,
)
from ml.offpolicy import Exploration
from ml.recommend.evaluate import evaluate, popularity_counts
from ml.recommend.models import PopRecommender, SequenceRecommender, SKNNRecommender
from ml.simulate import (
    ShopperModel,
    browsing_sessions,
    interleaved,
    simulate_exposures,
    world,
)
from ml.synthetic import GeneratorConfig

SEED = 7
LOOK = 50  # sessions between looks
ALPHA = 0.05
WANTED = {"ope_max_relative_error": 0.10, "interleaving_sessions_ratio": 10.0}
OPE_EXPLORATION = 0.2  # the share the headline accuracy is measured at (the default is 0.05)


@dataclass(frozen=True)
class Settings:
    n_products: int
    train_visits: int  # generator visits; about a third view a product
    test_visits: int
    gru_epochs: int
    logged_sessions: int
    online_sessions: int
    pool_sessions: int
    runs: int
    cap: int  # sessions after which a run counts as undecided


FULL = Settings(2000, 60_000, 6_000, 2, 15_000, 2_500, 10_000, 200, 60_000)
QUICK = Settings(2000, 30_000, 3_000, 1, 2_500, 400, 2_500, 50, 30_000)


class LastItem:
    """A model's top k for the last viewed product alone, precomputed for every product."""

    def __init__(self, model, skus: list[str], k: int, name: str | None = None):
        self.lists = dict(zip(skus, model.recommend_batch([[s] for s in skus], k), strict=True))
        self.fallback = model.recommend_batch([[]], k)[0]
        self.algorithm = name or f"last-item({model.algorithm})"

    def recommend_batch(self, sessions, k: int = 10) -> list[list[str]]:
        lists = (self.lists.get(s[-1], self.fallback) if s else self.fallback for s in sessions)
        return [list(items)[:k] for items in lists]


def candidates(train: list[list[str]], settings: Settings) -> dict:
    sknn = SKNNRecommender().fit(train)
    gru = SequenceRecommender(dim=64, epochs=settings.gru_epochs, seed=0).fit(train)
    return {
        "pop": PopRecommender().fit(train),
        "sknn": sknn,
        "gru": gru,
        "tail-first": TailFirst(sknn, window=20),
    }


def offline_metrics(models: dict, train, test) -> dict[str, dict[str, float]]:
    popularity = popularity_counts(train)
    out = {}
    for name, model in models.items():
        found = evaluate(
            test,
            recommend_batch=model.recommend_batch,
            k=20,
            popularity=popularity,
            known_items=set(popularity),
        )
        out[name] = {"hr_at_20": found.hr, "mrr_at_20": found.mrr}
    return out


def _per_session(exposures: pd.DataFrame) -> pd.DataFrame:
    return (
        exposures.assign(clicked=exposures["clicked_item"].notna().astype(float))
        .groupby("session_id", sort=False)
        .agg(
            clicked=("clicked", "sum"),
            exposures=("clicked", "size"),
            expected=("expected_click", "sum"),
        )
        .reset_index()
    )


def _ab_needed(treated: pd.DataFrame, control: pd.DataFrame, tau2: float, settings, rng) -> float:
    """Sessions (both arms) at the first look whose always-valid lower bound is > 0."""
    n = settings.cap
    arm = rng.random(n) < 0.5
    ends = np.arange(LOOK, n + 1, LOOK)
    estimates = []
    for pool, mask in ((treated, arm), (control, ~arm)):
        picks = rng.integers(0, len(pool), int(mask.sum()))
        x = pool["clicked"].to_numpy()[picks]
        y = pool["exposures"].to_numpy(float)[picks]
        seen = np.searchsorted(np.flatnonzero(mask), ends, side="left")

        def at(values: np.ndarray, seen: np.ndarray = seen) -> np.ndarray:
            return np.concatenate([[0.0], np.cumsum(values)])[seen]

        estimates.append(seq.ratio_from_sums(seen, at(x), at(y), at(x * x), at(x * y), at(y * y)))
    (rt, vt), (rc, vc) = estimates
    with np.errstate(invalid="ignore"):
        low, _ = seq.confidence_sequence(rt - rc, vt + vc, tau2, ALPHA)
    hits = np.flatnonzero(low > 0)
    return float(ends[hits[0]]) if len(hits) else math.inf


def _interleaving_needed(credits: pd.DataFrame, settings, rng) -> float:
    picks = credits.iloc[rng.integers(0, len(credits), settings.cap)].reset_index(drop=True)
    for n in range(LOOK, settings.cap + 1, LOOK):
        if interleaving_result(picks.iloc[:n], alpha=ALPHA).low > 0:
            return float(n)
    return math.inf


def sensitivity(w, train, models: dict, settings: Settings, shopper: ShopperModel) -> dict:
    """The A/B-to-interleaving sessions ratio of the module docstring."""
    began = time.perf_counter()
    idf = SKNNRecommender(idf=True).fit(train)
    pair = {
        "sknn": LastItem(models["sknn"], list(w.skus), shopper.shown),
        "sknn-idf": LastItem(idf, list(w.skus), shopper.shown, name="last-item(sknn, idf)"),
    }
    pools = {
        name: _per_session(
            simulate_exposures(w, m, settings.pool_sessions, SEED + 10 + i, shopper=shopper)
        )
        for i, (name, m) in enumerate(pair.items())
    }
    ctr = {name: float(p["expected"].sum() / p["exposures"].sum()) for name, p in pools.items()}
    challenger, champion = sorted(ctr, key=ctr.get, reverse=True)
    mixed = simulate_exposures(
        w,
        interleaved(pair[champion], pair[challenger], SEED + 12),
        settings.pool_sessions,
        SEED + 12,
        shopper=shopper,
    )
    credits = credits_of(mixed)
    control = pools[champion]
    unit_variance = float(np.var(seq.linearize(control["clicked"], control["exposures"]), ddof=1))
    tau2 = seq.tuned_mixture(2 * unit_variance / stats.N_STAR, ALPHA)
    rng = np.random.default_rng(SEED)
    ab, il = [], []
    for _ in range(settings.runs):
        ab.append(_ab_needed(pools[challenger], control, tau2, settings, rng))
        il.append(_interleaving_needed(credits, settings, rng))
    ab_a, il_a = np.minimum(ab, settings.cap), np.minimum(il, settings.cap)
    return {
        "pair": {"champion": pair[champion].algorithm, "challenger": pair[challenger].algorithm},
        "pair_true_ctr": {"champion": ctr[champion], "challenger": ctr[challenger]},
        "pair_relative_difference": ctr[challenger] / ctr[champion] - 1,
        "interleaving_pool_win_rate": interleaving_result(credits).win_rate,
        "runs": settings.runs,
        "look_every": LOOK,
        "cap_sessions": settings.cap,
        "ab_sessions_median": float(np.median(ab_a)),
        "interleaving_sessions_median": float(np.median(il_a)),
        "ab_undecided_runs": int(np.isinf(ab).sum()),
        "interleaving_undecided_runs": int(np.isinf(il).sum()),
        "ratio": float(np.median(ab_a / il_a)),
        "seconds": round(time.perf_counter() - began, 1),
    }


def replay_accuracy(w, train, models: dict, settings: Settings, shopper, share: float) -> dict:
    """Replay only: the champion logging `settings.logged_sessions` sessions while exploring
    `share` of its requests; each estimator's largest relative error over the candidates."""
    exploration = Exploration(share)
    sessions = settings.logged_sessions
    log, click_model = log_of(
        w, models["sknn"], "sknn", sessions, SEED, exploration, shopper, train
    )
    errors = dict.fromkeys(ESTIMATORS, 0.0)
    for model in models.values():
        found = replayed(w, model, log, click_model, shopper)
        truth = found.true_ctr_logged
        for e, estimate in found.estimates.items():
            errors[e] = max(errors[e], abs(estimate.value - truth) / truth)
    logged, unexplored = logged_rates(log)
    return {
        "relative_error": errors,
        "logged_sessions": int(log["session_id"].nunique()),
        "logged_exposures": len(log),
        "logged_ctr": logged,
        "unexplored_ctr": unexplored,
    }


def run(settings: Settings) -> dict:
    began = time.perf_counter()
    shopper = ShopperModel()
    w = world(GeneratorConfig(seed=SEED, n_products=settings.n_products))
    train = browsing_sessions(w, settings.train_visits, SEED)
    test = browsing_sessions(w, settings.test_visits, SEED + 1)
    models = candidates(train, settings)
    trained = time.perf_counter() - began
    offline = offline_metrics(models, train, test)
    table = offline_online(
        w,
        models,
        offline,
        "sknn",
        transitions_sessions=train,
        logged_sessions=settings.logged_sessions,
        online_sessions=settings.online_sessions,
        seed=SEED,
        exploration=Exploration(),
        shopper=shopper,
    )
    rows = {r["model"]: r for r in table.rows}
    errors = {
        e: max(abs(r[e] - r["true_ctr_logged"]) / r["true_ctr_logged"] for r in rows.values())
        for e in ESTIMATORS
    }
    more = replay_accuracy(w, train, models, settings, shopper, OPE_EXPLORATION)
    by_share = {
        str(Exploration().share): {
            "relative_error": errors,
            "logged_sessions": table.logged_sessions,
            "logged_exposures": table.logged_exposures,
            "logged_ctr": table.logged_ctr,
            "unexplored_ctr": table.unexplored_ctr,
        },
        str(OPE_EXPLORATION): more,
    }
    best = min(("snips", "dr"), key=more["relative_error"].get)
    ratio = sensitivity(w, train, models, settings, shopper)
    return {
        "settings": settings.__dict__,
        "champion": "sknn",
        "training_sessions": len(train),
        "test_sessions": len(test),
        "train_seconds": round(trained, 1),
        "candidates": {
            name: {
                "kind": r["kind"],
                "offline_hr20": r["hr_at_20"],
                "offline_mrr20": r["mrr_at_20"],
                **{f"{e}_ctr": r[e] for e in ESTIMATORS},
                **{f"{e}_interval": [r[f"{e}_low"], r[f"{e}_high"]] for e in ESTIMATORS},
                "ess": r["ess"],
                "matched": r["matched"],
                "true_ctr_logged": r["true_ctr_logged"],
                "true_ctr": r["true_ctr"],
                "interleaving_win_rate": r["interleaving_win_rate"],
                "ab_lift": r["ab_lift"],
            }
            for name, r in rows.items()
        },
        "logging_policy": table.exploration,
        "logged_sessions": table.logged_sessions,
        "logged_exposures": table.logged_exposures,
        "logged_explored": table.logged_explored,
        "click_model": table.click_model,
        "ope_relative_error": errors,
        "ope_by_exploration": by_share,
        "ope_max_relative_error": {
            "value": more["relative_error"][best],
            "estimator": best,
            "exploration": OPE_EXPLORATION,
            "logged_sessions": more["logged_sessions"],
            "logged_exposures": more["logged_exposures"],
            "at_default_exploration": min(errors["snips"], errors["dr"]),
        },
        "interleaving_sessions_ratio": ratio["ratio"],
        "sensitivity": ratio,
        "rank_correlations": table.correlations,
        "wanted": WANTED,
        "offline_online_seconds": table.seconds,
        "table": table.markdown(),
        "seconds": round(time.perf_counter() - began, 1),
    }


def _plain(value):
    """JSON-able: numpy numbers as Python's, NaN and infinity as null."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _print(result: dict) -> None:
    print(result["table"])
    print()
    for key in ("logged_sessions", "logged_exposures", "logged_explored", "click_model"):
        print(f"{key:34} {result[key]}")
    for e, value in result["ope_relative_error"].items():
        print(f"{'ope_relative_error ' + e:34} {value:.3f}")
    found = result["ope_max_relative_error"]
    wanted = WANTED["ope_max_relative_error"]
    print(
        f"{'ope_max_relative_error':34} {found['value']:.3f} ({found['estimator']}, "
        f"{found['exploration']:.0%} explored, {found['logged_exposures']:,} exposures of "
        f"{found['logged_sessions']:,} sessions)  want <= {wanted}; at the default 5%: "
        f"{found['at_default_exploration']:.3f}"
    )
    for share, found in result["ope_by_exploration"].items():
        print(
            f"{'exploration ' + format(float(share), '.0%'):34} clicks per exposure "
            f"{found['logged_ctr']:.4f} logged, {found['unexplored_ctr']:.4f} unexplored"
        )
    s = result["sensitivity"]
    print(
        f"{'interleaving_sessions_ratio':34} {s['ratio']:.1f}  want >= "
        f"{WANTED['interleaving_sessions_ratio']:g}  ({s['pair']['challenger']} vs "
        f"{s['pair']['champion']}, true CTR {s['pair_true_ctr']['challenger']:.4f} vs "
        f"{s['pair_true_ctr']['champion']:.4f}; median A/B {s['ab_sessions_median']:,.0f}, "
        f"interleaving {s['interleaving_sessions_median']:,.0f} sessions over {s['runs']} runs; "
        f"undecided at {s['cap_sessions']:,}: A/B {s['ab_undecided_runs']}, "
        f"interleaving {s['interleaving_undecided_runs']})"
    )
    print(f"{'seconds':34} {result['seconds']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a smaller run, about a minute")
    args = parser.parse_args()
    result = run(QUICK if args.quick else FULL)
    if args.json:
        print(json.dumps(_plain({k: v for k, v in result.items() if k != "table"})))
    else:
        _print(result)


if __name__ == "__main__":
    main()
