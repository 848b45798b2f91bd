"""Offline numbers against online truth: does what we measure before traffic rank recommenders
the way shoppers would?

For each candidate model, in one simulated world (`ml.simulate`), side by side:
- offline: HR@20 and MRR@20 on held-out sessions (given, from `ml.recommend.evaluate`);
- replay: IPS, SNIPS, DM and DR (`ml.offpolicy.replay`) of the model's lists on the
  champion's exploring log, and the exact click-through those lists would have had on the
  logged contexts (`ml.simulate.true_ctr_on`), which is what the replay estimates;
- online: an A/B test against the champion (50/50 by session, `ml.simulate.split`; the
  observed click-through's relative lift) and team-draft interleaving against it
  (`ml.simulate.interleaved`; the challenger's win rate, `ml.interleaving`), `online_sessions`
  sessions each; and the truth, the model's own online click-through: its expected clicks per
  exposure when it alone serves `online_sessions` sessions (its lists move the contexts, so
  this differs from the logged-context number).
Then each method's Spearman rank correlation with the true online click-through over the models.

Decisions:
- One log for every candidate: `logged_sessions` sessions of the champion exploring, as the
  server logs them; the click model's item part (`TransitionModel`) is fitted on the training
  sessions and the log's own view transitions, its position part (`AttractionModel`) on that
  log (`ml.offpolicy.fit_click_model`).
- The replay reads every logged exposure, as the `recommender_replay` asset does. A session's
  last widget is never clicked (the shopper left): the attraction model's `leave` is fitted
  for it (without it, alpha and eta ran to where they absorbed the leavers: in a 200-product
  world with the true alpha = eta = 1 the fit gave alpha 0.3 and eta 10, its bound, and DM
  was 25% high). That assumes leaving does not depend on the list, which holds here (a
  session's length is drawn before it starts).
- Every model's own online run uses the same session seed (common random numbers: the same
  shoppers meet each model, so their differences are less noisy); the A/B tests share one
  seed and the interleaving runs another. The champion is compared with itself too: its A/B
  lift and win rate are what an A/A test gives (near 0 and 0.5), not definitions.
- `TailFirst` is the candidate built to look good offline: the base model's top `window`
  shown weakest first has the base's HR@20 exactly (the same 20 items) and fewer clicks
  online under position bias. A metric that cannot tell it from its base ranks by recall only.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from ml.interleaving import interleaving_result, session_credits
from ml.offpolicy import (
    ESTIMATORS,
    AttractionModel,
    Estimate,
    Exploration,
    TransitionModel,
    fit_click_model,
    logged_ctr,
    replay,
    target_lists,
)
from ml.simulate import (
    ShopperModel,
    World,
    exploring,
    interleaved,
    simulate_exposures,
    split,
    true_ctr_on,
)

# What is rank-correlated with the true online click-through (row keys).
METHODS = (
    "hr_at_20",
    "mrr_at_20",
    "ips",
    "snips",
    "dm",
    "dr",
    "true_ctr_logged",
    "interleaving_win_rate",
    "ab_lift",
)


class TailFirst:
    """The base model's top `window` shown in reverse (weakest first), the rest after it: the
    same items in the top `window`, so HR@window is the base's; worse where position matters."""

    def __init__(self, base: Any, window: int = 20):
        if window < 2:
            raise ValueError(f"window must be >= 2 to reverse anything, got {window}")
        self.base, self.window = base, window

    @property
    def algorithm(self) -> str:
        return f"tail-first({getattr(self.base, 'algorithm', type(self.base).__name__)})"

    def recommend_batch(self, sessions: Sequence[Sequence[str]], k: int = 20) -> list[list[str]]:
        lists = self.base.recommend_batch(sessions, max(k, self.window))
        return [(lst[: self.window][::-1] + lst[self.window :])[:k] for lst in map(list, lists)]

    def recommend(self, session_items: Sequence[str], k: int = 20) -> list[str]:
        return self.recommend_batch([session_items], k)[0]


@dataclass(frozen=True)
class OfflineOnline:
    champion: str
    exploration: str  # the logging policy's name
    logged_sessions: int
    logged_exposures: int
    logged_explored: int
    logged_ctr: float  # clicked exposures / exposures of the whole log
    unexplored_ctr: float  # ... of its unexplored exposures: what exploring costs is the gap
    click_model: dict[str, float]  # the fitted attraction model's alpha, eta and leave
    rows: list[dict[str, Any]]  # one per model, in the order given
    correlations: dict[str, float]  # METHODS -> Spearman with true_ctr (NaN: undefined)
    seconds: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=_jsonable)

    def markdown(self) -> str:
        """The table: offline metrics, replay estimates, online tests and the truth."""
        head = (
            "| model | kind | HR@20 | MRR@20 | IPS | SNIPS | DR | interleaving win rate | "
            "A/B lift | true CTR (logged contexts) | true CTR |"
        )
        lines = [head, "|---|---|" + "---:|" * 9]
        for r in self.rows:
            name = f"{r['model']} (champion)" if r["champion"] else r["model"]
            cells = [
                _num(r["hr_at_20"]),
                _num(r["mrr_at_20"]),
                *(
                    f"{_num(r[e])} [{_num(r[e + '_low'])}, {_num(r[e + '_high'])}]"
                    for e in (
                        "ips",
                        "snips",
                        "dr",
                    )
                ),
                _num(r["interleaving_win_rate"]),
                _num(r["ab_lift"], "+.1%"),
                _num(r["true_ctr_logged"]),
                _num(r["true_ctr"]),
            ]
            lines.append(f"| {name} | {r['kind']} | " + " | ".join(cells) + " |")
        rho = ", ".join(f"{m} {_num(v, '+.2f')}" for m, v in self.correlations.items())
        lines.append("")
        lines.append(
            f"Spearman with the true CTR over {len(self.rows)} models: {rho}. Replay on "
            f"{self.logged_exposures:,} exposures of {self.logged_sessions:,} sessions of "
            f"{self.champion} ({self.exploration}, {self.logged_explored:,} explored); "
            f"intervals 95%, session-clustered."
        )
        return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def _num(value: float | None, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec)


def _true_ctr(exposures: pd.DataFrame) -> float:
    return float(exposures["expected_click"].mean()) if len(exposures) else math.nan


def _ab_lift(exposures: pd.DataFrame, challenger: str, champion: str) -> float:
    """Observed click-through of the challenger's arm relative to the champion's, minus 1."""
    ctr = exposures.assign(clicked=exposures["clicked_item"].notna()).groupby("variant")["clicked"]
    means = ctr.mean()
    if challenger not in means or champion not in means or means[champion] == 0:
        return math.nan
    return float(means[challenger] / means[champion] - 1)


def credits_of(exposures: pd.DataFrame) -> pd.DataFrame:
    """Per session, each team's credits from simulated interleaved exposures."""
    clicked = exposures[exposures["clicked_item"].notna()]
    clicks = pd.DataFrame({"exposure_id": clicked["exposure_id"], "item": clicked["clicked_item"]})
    return session_credits(exposures, clicks)


def _interleaving(exposures: pd.DataFrame):
    return interleaving_result(credits_of(exposures))


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(x, y, strict=True) if a is not None and not math.isnan(a)]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return math.nan
    return float(spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)


@dataclass(frozen=True)
class Replayed:
    """One model's replay on a log: its estimates and the exact click-through its lists would
    have had on the logged contexts (what they estimate)."""

    estimates: Mapping[str, Estimate]
    true_ctr_logged: float


def log_of(
    world: World,
    champion: Any,
    name: str,
    sessions: int,
    seed: int,
    exploration: Exploration,
    shopper: ShopperModel,
    transitions_sessions: Sequence[Sequence[str]],
) -> tuple[pd.DataFrame, AttractionModel]:
    """The champion exploring for `sessions` simulated sessions (the replay log) and the click
    model fitted for it: next views from the training sessions, the attraction curve on the log."""
    logger = exploring(champion, exploration, seed, variant=name)
    log = simulate_exposures(world, logger, sessions, seed, shopper=shopper)
    return log, fit_click_model(TransitionModel.fit(transitions_sessions), log)


def replayed(
    world: World,
    model: Any,
    log: pd.DataFrame,
    click_model: AttractionModel,
    shopper: ShopperModel,
) -> Replayed:
    targets = target_lists(model.recommend_batch, log)
    return Replayed(replay(log, targets, click_model), true_ctr_on(world, log, targets, shopper))


def logged_rates(log: pd.DataFrame) -> tuple[float, float]:
    """(clicks per exposure of the whole log, of its unexplored exposures): the gap is what
    exploring costs."""
    return float(log["clicks"].map(sum).mean()), logged_ctr(log).value


def offline_online(
    world: World,
    models: Mapping[str, Any],
    offline: Mapping[str, Mapping[str, float]],
    champion: str,
    *,
    transitions_sessions: Sequence[Sequence[str]],
    logged_sessions: int,
    online_sessions: int,
    seed: int,
    exploration: Exploration,
    shopper: ShopperModel,
) -> OfflineOnline:
    """The table of the module docstring for `models` (name -> anything with
    `recommend_batch(sessions, k)`), `offline` metrics by name (hr_at_20, mrr_at_20), the
    champion's name among the models."""
    if champion not in models:
        raise ValueError(f"the champion {champion!r} is not one of the models {list(models)}")
    if logged_sessions < 1 or online_sessions < 1:
        raise ValueError(
            f"logged_sessions ({logged_sessions}) and online_sessions ({online_sessions}) "
            "must be >= 1"
        )
    began = time.perf_counter()
    base = models[champion]
    log, click_model = log_of(
        world, base, champion, logged_sessions, seed, exploration, shopper, transitions_sessions
    )
    rows = []
    for name, model in models.items():
        found = replayed(world, model, log, click_model, shopper)
        estimates = found.estimates
        alone = simulate_exposures(world, model, online_sessions, seed + 1, shopper=shopper)
        ab = simulate_exposures(
            world,
            split({"champion": base, "challenger": model}),
            online_sessions,
            seed + 2,
            shopper=shopper,
        )
        mixed = simulate_exposures(
            world, interleaved(base, model, seed + 3), online_sessions, seed + 3, shopper=shopper
        )
        test = _interleaving(mixed)
        row: dict[str, Any] = {
            "model": name,
            "kind": getattr(model, "algorithm", type(model).__name__),
            "champion": name == champion,
            "hr_at_20": offline.get(name, {}).get("hr_at_20"),
            "mrr_at_20": offline.get(name, {}).get("mrr_at_20"),
        }
        for e in ESTIMATORS:
            row |= {e: estimates[e].value, f"{e}_low": estimates[e].low}
            row[f"{e}_high"] = estimates[e].high
        row |= {
            "ess": estimates["ips"].ess,
            "matched": estimates["ips"].matched,
            "true_ctr_logged": found.true_ctr_logged,
            "true_ctr": _true_ctr(alone),
            "online_exposures": len(alone),
            "ab_lift": _ab_lift(ab, "challenger", "champion"),
            "ab_exposures": len(ab),
            "interleaving_win_rate": test.win_rate,
            "interleaving_preference": test.preference,
            "interleaving_decision": test.decision,
            "interleaving_sessions": test.sessions,
        }
        rows.append(row)
    truth = [r["true_ctr"] for r in rows]
    correlations = {m: _spearman([r[m] for r in rows], truth) for m in METHODS}
    logged, unexplored = logged_rates(log)
    return OfflineOnline(
        champion=champion,
        exploration=exploration.name,
        logged_sessions=int(log["session_id"].nunique()),
        logged_exposures=len(log),
        logged_explored=int(log["explored"].sum()),
        logged_ctr=logged,
        unexplored_ctr=unexplored,
        click_model={
            "alpha": click_model.alpha,
            "eta": click_model.eta,
            "leave": click_model.leave,
        },
        rows=rows,
        correlations=correlations,
        seconds=round(time.perf_counter() - began, 1),
    )
