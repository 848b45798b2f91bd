"""What a recommendation request is shown: the model's top k, an exploration of its top M, or
the team draft of the champion's and the challenger's lists; and what its exposure logs for
the off-policy replay (`ml.offpolicy`) and the interleaving analysis (`ml.interleaving`).

Decisions:
- A/B mode: every answer goes through `ml.offpolicy.explore`, which draws whether this request
  explores (probability SKIFF_SERVE_EXPLORE) and, if so, shuffles the model's top
  M = max(SKIFF_SERVE_EXPLORE_POOL, k). With exploration on, the model path is asked for M
  items on every request, not only on the explored ones: `explore` draws the coin itself, and
  the propensities of a plain answer need M as well (fewer than M available: M is what the
  model returned). The first k of a longer list are the k-list (`predict.recommendation_lists`)
  and a micro-batch already asks for its largest k, so a plain answer is today's top k at
  nearly no cost. With exploration off the model is asked for k, as before, and every
  propensity is 1.0.
- The exposure logs `context` (the request's latest CONTEXT viewed products), `propensities`
  (the logging policy's chance of each shown item at its position), `explored` and
  `logging_policy` (`Exploration.name`). The shadow role is never explored.
- Interleaving mode: a session of the challenger-role variant gets
  `team_draft({"champion": the champion's top k, "challenger": the challenger's}, k)`, both calls
  run at once (`latency_ms` is the time of both); the record keeps the assigned variant, role
  and the challenger's model version and path, `teams` aligned with `items`, no propensities.
  Any other session sees the champion's top k. Nothing is explored in an interleaving
  experiment: the replay reads A/B exposures only.
- An interleaved answer with a failed model call is not interleaved and logs no `teams`, so
  neither side earns credit from it. A failed challenger: the session sees the champion's own
  answer, logged with `error` true under the challenger's role and version (its failure). A
  champion that failed while the challenger answered (its failure is counted under the
  champion's role by the model path): the session sees the challenger's own list, no error.
  If the champion's call raises (nothing could answer), the request fails as it does in A/B
  mode: a 500 and an exposure with `error` true (counted, like any exposure whose call raised,
  under the assigned role).
- The business rules (`serving.rules`) are applied by `top` (the model path), so exploration
  shuffles the allowed top M and logs their propensities; an interleaved list, merged from two
  allowed lists, is capped per category once more: drafted from both whole lists, then its
  first k allowed items kept with their teams.
- The context logged is the latest CONTEXT products; a model that reads a longer session saw
  more, so a replay of a session longer than 50 views sees a shorter one than the live model
  did.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from ml.interleaving import team_draft
from ml.offpolicy import Exploration, explore
from serving.metrics import Metrics
from serving.predict import Recommended
from serving.rules import NO_RULES, Rules
from serving.service import Assignment
from serving.store import Loaded

log = logging.getLogger("skiff.serving")

CONTEXT = 50  # the latest viewed products an exposure logs
Top = Callable[[Loaded, int], Awaitable[Recommended]]  # a model's top n for this request


async def shown(
    assignment: Assignment,
    top: Top,
    viewed: Sequence[str],
    k: int,
    exploration: Exploration,
    metrics: Metrics,
    rules: Rules = NO_RULES,
) -> Recommended:
    """The k products this request is shown, with what its exposure logs besides them."""
    context = list(viewed[-CONTEXT:])
    if assignment.experiment.mode == "interleaving":
        return await interleaved(assignment, top, k, context, metrics, rules)
    return await explored(assignment, top, k, context, exploration, metrics)


async def explored(
    assignment: Assignment,
    top: Top,
    k: int,
    context: list[str],
    exploration: Exploration,
    metrics: Metrics,
) -> Recommended:
    ranked = await top(assignment.served, exploration.size(k) if exploration.share > 0 else k)
    shown = explore(ranked.items, k, exploration, assignment.rng())
    if shown.explored:
        metrics.inc("skiff_explored_recommendations_total")
    logged = {
        "context": context,
        "propensities": shown.propensities,
        "explored": shown.explored,
        "logging_policy": exploration.name,
    }
    return replace(ranked, items=shown.items, logged=logged)


async def interleaved(
    assignment: Assignment,
    top: Top,
    k: int,
    context: list[str],
    metrics: Metrics,
    rules: Rules = NO_RULES,
) -> Recommended:
    if assignment.variant.role != "challenger":
        return replace(await top(assignment.served, k), logged={"context": context})
    challenger = assignment.served
    champion = assignment.snapshot.model(challenger.problem, "champion")
    ours, theirs = await asyncio.gather(
        top(champion, k), top(challenger, k), return_exceptions=True
    )
    if isinstance(ours, BaseException):
        raise ours
    if isinstance(theirs, BaseException):
        metrics.inc("skiff_model_errors_total", problem=challenger.problem, role=challenger.role)
        log.error("interleaving: challenger %s raised: %r", challenger.version, theirs)
    if isinstance(theirs, BaseException) or theirs.failed:
        return replace(ours, failed=True, logged={"context": context})
    if ours.failed:  # the champion alone failed (counted under its role): the challenger answers
        return replace(theirs, logged={"context": context})
    lists = {"champion": ours.items, "challenger": theirs.items}
    if not rules.max_per_category:
        items, teams = team_draft(lists, k, assignment.rng())
    else:  # two capped lists can break the cap together
        longest = len(ours.items) + len(theirs.items)
        drafted, drafted_teams = team_draft(lists, longest, assignment.rng())
        kept = rules.capped(drafted, k)
        items, teams = [drafted[i] for i in kept], [drafted_teams[i] for i in kept]
    return replace(theirs, items=items, logged={"context": context, "teams": teams})
