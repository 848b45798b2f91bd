"""What a replay of simulated logs needs: in-process recommenders that log what the server logs
(`exploring`: propensities; `interleaved`: teams; `split`: an A/B test by session), and the
replay's estimand (`true_ctr_on`).

Decisions:
- The wrappers are `Policy`s: they answer a batch of requests at once (one `recommend_batch`
  call per batch and model) and draw from one generator seeded by `seed`, in request order,
  so a run repeats exactly.
- `exploring` asks the model for `Exploration.size(k)` items, as the server does, and goes
  through `ml.offpolicy.explore`: the simulator and the server share one logging policy.
- `interleaved` goes through `ml.interleaving.team_draft` on both models' top k. Unlike the
  server, which interleaves only the sessions of the challenger's variant, every session is
  interleaved: in process there is no other variant to keep.
- `split` assigns a session as the server does (`ml.experiments.assign`, the experiment's
  hash), equal weights, the variant's name on every answer.
- `true_ctr_on` is what off-policy estimates estimate: the mean over the logged exposures of
  the exact click chance the target's list would have had in that exposure's context, 0 where
  the logged shopper left (`final`: no view followed, so no list could have been clicked).
  It holds the contexts fixed; a policy's own online click-through also moves the contexts
  (a click changes the next view), which is why both are reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ml.experiments import assign
from ml.interleaving import team_draft
from ml.offpolicy import Exploration, explore
from ml.simulate.session import Answer, Policy
from ml.simulate.world import DEFAULT_SHOPPER, ShopperModel, World, click_chance


def _batch(model: Any):
    """A model's `recommend_batch`, or the batch callable itself."""
    batch = getattr(model, "recommend_batch", model)
    if not callable(batch):
        raise TypeError(
            f"expected a model with recommend_batch(sessions, k) or such a callable, got "
            f"{type(model).__name__}"
        )
    return batch


class _Exploring(Policy):
    def __init__(self, model: Any, exploration: Exploration, seed: int, variant: str | None):
        self.batch, self.exploration, self.variant = _batch(model), exploration, variant
        self.rng = np.random.default_rng(seed)

    def answers(self, session_ids, contexts, k):
        ranked = self.batch(list(contexts), self.exploration.size(k))
        out = []
        for top in ranked:
            shown = explore(top, k, self.exploration, self.rng)
            extra = {
                "propensities": shown.propensities,
                "explored": shown.explored,
                "logging_policy": self.exploration.name,
            }
            out.append(Answer(shown.items, variant=self.variant, extra=extra))
        return out


def exploring(
    model: Any, exploration: Exploration, seed: int, *, variant: str | None = None
) -> Policy:
    """`model` (or its `recommend_batch`) answering through `ml.offpolicy.explore`: asked for
    `exploration.size(k)` items, showing k with their propensities, `explored` and the
    `logging_policy` as the answer's extras."""
    return _Exploring(model, exploration, seed, variant)


class _Interleaved(Policy):
    def __init__(self, champion: Any, challenger: Any, seed: int):
        self.champion, self.challenger = _batch(champion), _batch(challenger)
        self.rng = np.random.default_rng(seed)

    def answers(self, session_ids, contexts, k):
        contexts = list(contexts)
        pairs = zip(self.champion(contexts, k), self.challenger(contexts, k), strict=True)
        out = []
        for champion, challenger in pairs:
            lists = {"champion": champion, "challenger": challenger}
            items, teams = team_draft(lists, k, self.rng)
            out.append(Answer(items, variant="interleaving", extra={"teams": teams}))
        return out


def interleaved(champion: Any, challenger: Any, seed: int) -> Policy:
    """Every request answered by the team draft of the two models' top k (`teams` logged as
    the answer's extra, each "champion" or "challenger"); variant "interleaving"."""
    return _Interleaved(champion, challenger, seed)


class _Split(Policy):
    def __init__(self, variants: Mapping[str, Any], experiment: str):
        if len(variants) < 2:
            raise ValueError(f"a split needs two variants or more, got {list(variants)}")
        self.models = {name: _batch(model) for name, model in variants.items()}
        self.weights = [(name, 1.0) for name in variants]
        self.experiment = experiment

    def answers(self, session_ids, contexts, k):
        names = [assign(self.experiment, s, self.weights) for s in session_ids]
        out: list[Any] = [None] * len(names)
        for name, batch in self.models.items():
            mine = [i for i, n in enumerate(names) if n == name]
            if mine:
                for i, items in zip(mine, batch([contexts[i] for i in mine], k), strict=True):
                    out[i] = Answer(list(items), variant=name, experiment=self.experiment)
        return out


def split(variants: Mapping[str, Any], experiment: str = "simulated-ab") -> Policy:
    """An A/B test in process: each session sees one variant's model, equal weights, assigned
    by the server's hash of (experiment, session id); the answer names the variant."""
    return _Split(variants, experiment)


def true_ctr_on(
    world: World,
    log: pd.DataFrame,
    targets: Sequence[Sequence[str]],
    shopper: ShopperModel = DEFAULT_SHOPPER,
) -> float:
    """The exact click-through `targets` (one list per logged exposure) would have had on the
    log's contexts: mean over exposures of `click_chance(last context item, target list)`,
    0 for a `final` exposure (`simulate_exposures` rows)."""
    missing = {"context", "final"} - set(log.columns)
    if missing:
        raise ValueError(f"true_ctr_on needs simulate_exposures rows; the log lacks {missing}")
    if len(targets) != len(log):
        raise ValueError(f"{len(targets)} target lists for {len(log)} logged exposures")
    if len(log) == 0:
        return float("nan")
    index = world.index
    total = 0.0
    for context, final, target in zip(log["context"], log["final"], targets, strict=True):
        if final:
            continue
        current = index[context[-1]]
        shown = [index.get(s, -1) for s in list(target)[: shopper.shown]]
        total += click_chance(world, current, shown, shopper)
    return total / len(log)
