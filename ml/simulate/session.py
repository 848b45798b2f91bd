"""One simulated session, step by step (the process of `ml.simulate`), and many of them in
process: `simulate_sessions` (a row per session) and `simulate_exposures` (a row per widget,
the replay log of `ml.offpolicy` plus what the truth knows).

In process, sessions run in lockstep, `BATCH` at a time: every session's next request waits
until all of them have one, and the recommender answers them together (a model's
`recommend_batch` is many times faster per list than one call per list). Each session draws
from its own generator, so a deterministic recommender gives the same sessions in any batch;
a recommender that draws (exploration, a team draft's coin) draws in request order, which the
batching fixes, so the same seed still gives the same sessions."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ml.simulate.world import DEFAULT_SHOPPER, ShopperModel, World, base_probability, next_view
from ml.synthetic import shoppers
from ml.synthetic.sampling import draw

# The generator's own behaviour parameters, so the simulator and the data are one world.
from ml.synthetic.shoppers import (
    _ADD_GEOMETRIC_P,
    _DWELL_MEDIAN_S,
    _DWELL_SIGMA,
    _GAP_SIGMA,
    _MAX_GAP_MS,
    _MIN_GAP_MS,
    _P_ADD_SESSION,
    _P_REMOVE,
)

MAX_REQUEST_EVENTS = 300  # ~50 kB of events: under the server's default 64 kB body limit
RECOMMENDER, CONVERSION = "recommender", "conversion"
BATCH = 256  # sessions in lockstep in process


@dataclass(frozen=True)
class Answer:
    """What the shop's model answered (items, or a probability) and who answered it, and
    what a replay needs beside the items (`extra`: "propensities" aligned with the items,
    "explored", "logging_policy", or an interleaved answer's "teams")."""

    value: Any
    variant: str | None = None
    experiment: str | None = None
    model_version: str | None = None
    exposure_id: str | None = None
    extra: Mapping[str, Any] | None = None


class Shop(Protocol):
    """Where a session's requests go: the callables in process, or the server over HTTP.
    None from `recommend`/`score`: the call failed, nothing was shown."""

    scores: bool

    def recommend(self, session_id: str, items: list[str], k: int) -> Answer | None: ...
    def score(self, session_id: str, events: list[dict]) -> Answer | None: ...
    def feedback(self, answer: Answer, action: str, item: str | None) -> None: ...


@dataclass
class Exposure:
    problem: str
    answer: Answer
    expected_click: float = 0.0  # exact chance of a click (0 when the shopper left)
    clicked: bool = False
    context: list[str] = field(default_factory=list)  # the request's skus, oldest first
    shown: list[str] = field(default_factory=list)  # the answer's first `shown` skus
    clicked_item: str | None = None
    followed: bool = False  # a view came after it (False: the session ended there)


@dataclass
class Session:
    """One simulated session: its exposures and what the truth says about it."""

    session_id: str
    exposures: list[Exposure] = field(default_factory=list)
    history_events: int = 0  # browsing events before the session's first exposure
    history_adds: int = 0
    nudged: bool = False
    purchased: bool = False
    base_probability: float = 0.0  # un-nudged true purchase probability
    purchase_probability: float = 0.0  # after the nudge, if any


_PAGE, _VIEW, _ADD, _REMOVE, _CLICK = (
    shoppers.STEP_PAGE,
    shoppers.STEP_VIEW,
    shoppers.STEP_ADD,
    shoppers.STEP_REMOVE,
    shoppers.STEP_CLICK,
)
_ACTION = {_VIEW: "detail", _ADD: "add", _REMOVE: "remove", _CLICK: "click"}


class _Visit:
    """One shopper's session, step by step (the module docstring's process)."""

    def __init__(self, w: World, shop: Shop, model: ShopperModel, seed: int, index: int):
        self.w, self.shop, self.model = w, shop, model
        self.rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
        self.out = Session(self.rng.bytes(16).hex())
        self.kinds: list[int] = []
        self.refs: list[int] = []
        self.elapsed: list[int] = []
        self.events: list[dict] = []
        self.cart: set[int] = set()
        self.latest: dict[str, Answer] = {}
        self.dwell_ms = 1000 * math.exp(self.rng.normal(math.log(_DWELL_MEDIAN_S), _DWELL_SIGMA))

    def steps(self) -> Generator[list[str], Answer | None, Session]:
        """The session; it yields each recommendation request's skus and is sent the answer
        (None: nothing shown)."""
        rng, model = self.rng, self.model
        shape = shoppers.session_shape(rng, 1)
        while not shape.product[0]:
            shape = shoppers.session_shape(rng, 1)
        n_views, n_pages = int(shape.n_views[0]), int(shape.n_pages[0])
        adding = rng.random() < _P_ADD_SESSION
        wanted = min(int(rng.geometric(_ADD_GEOMETRIC_P)), n_views)
        add_at = set(rng.choice(n_views, wanted, replace=False).tolist()) if adding else set()
        removed_from = remove_after = -1
        if add_at and rng.random() < _P_REMOVE:
            removed_from = int(rng.choice(sorted(add_at)))
            remove_after = int(rng.integers(removed_from, n_views))
        pages_before = np.bincount(rng.integers(0, n_views + 1, n_pages), minlength=n_views + 1)
        views: list[int] = []
        widget: Exposure | None = None
        shown: list[int] = []
        for t in range(n_views):
            self._pages(int(pages_before[t]))
            if t == 0:
                item = int(draw(self.w.catalogue.entry_cdf[self.w.regime], rng.random()))
            else:
                item, chance = next_view(self.w, views[-1], shown, model, rng)
                if widget is not None:
                    widget.expected_click, widget.followed = chance, True
                    widget.clicked = item in shown
                    if widget.clicked:
                        widget.clicked_item = self.w.skus[item]
                        self.shop.feedback(widget.answer, "click", self.w.skus[item])
                        self._step(_CLICK, item)
            views.append(item)
            self._step(_VIEW, item)
            if t in add_at:
                self.cart.add(item)
                for answer in self.latest.values():
                    self.shop.feedback(answer, "add", self.w.skus[item])
                self._step(_ADD, item)
            if t == remove_after:
                self.cart.discard(views[removed_from])
                self._step(_REMOVE, views[removed_from])
            widget, shown = None, []
            if t + 1 >= model.warmup_steps:
                items = [self.w.skus[i] for i in views[-MAX_REQUEST_EVENTS:]]
                answer = yield items
                if answer is not None:
                    widget = self._record(RECOMMENDER, answer)
                    widget.context = items
                    widget.shown = [str(s) for s in list(answer.value)[: model.shown]]
                    shown = [self.w.index.get(s, -1) for s in widget.shown]
        self._pages(int(pages_before[n_views]))
        self._finish()
        return self.out

    def _pages(self, n: int) -> None:
        for _ in range(n):
            self._step(_PAGE, -1)

    def _step(self, kind: int, item: int) -> None:
        """Append a step (its time, its events); then, with a cart, the shop scores."""
        at = 0
        if self.elapsed:
            gap = self.dwell_ms * math.exp(self.rng.normal(0.0, _GAP_SIGMA))
            at = self.elapsed[-1] + round(min(max(gap, _MIN_GAP_MS), _MAX_GAP_MS))
        self.elapsed.append(at)
        self.kinds.append(kind)
        self.refs.append(item)
        at += self.w.start_ms
        if kind in (_PAGE, _VIEW):
            self.events.append({"event_type": "pageview", "event_at": at})
        if kind != _PAGE:
            event = {
                "event_type": "event_product",
                "product_action": _ACTION[kind],
                "product_sku": self.w.skus[item],
                "event_at": at,
            }
            if (category := self.w.category[item]) is not None:
                event["category"] = category
            if (price := self.w.price_bucket[item]) is not None:
                event["price_bucket"] = price
            self.events.append(event)
        if self.cart and self.shop.scores and not self.out.nudged:
            answer = self.shop.score(self.out.session_id, self.events[-MAX_REQUEST_EVENTS:])
            if answer is not None:
                self._record(CONVERSION, answer)
                self.out.nudged = answer.value >= self.model.nudge_threshold

    def _record(self, problem: str, answer: Answer) -> Exposure:
        if not self.out.exposures:  # the pre-exposure history: what the first request knew
            self.out.history_events = len(self.events)
            self.out.history_adds = sum(e.get("product_action") == "add" for e in self.events)
        exposure = Exposure(problem, answer)
        self.out.exposures.append(exposure)
        self.latest[problem] = answer
        return exposure

    def _finish(self) -> None:
        out, model = self.out, self.model
        p0 = base_probability(self.w, self.kinds, self.refs, self.elapsed, self.cart)
        p = p0
        if out.nudged and 0 < p0 < 1:
            shift = model.nudge_effect if p0 >= model.persuadable_from else -model.nudge_effect
            p = 1 / (1 + math.exp(-(math.log(p0 / (1 - p0)) + shift)))
        out.base_probability, out.purchase_probability = p0, p
        out.purchased = bool(self.rng.random() < p)
        if out.purchased:
            for answer in self.latest.values():
                self.shop.feedback(answer, "purchase", None)


Recommend = Callable[[list[str], int], Any]
Score = Callable[[list[dict]], "float | tuple[float, str]"]


class Policy(ABC):
    """An in-process recommender that answers many sessions' requests at once and knows the
    sessions (so it can split them, as an experiment does)."""

    @abstractmethod
    def answers(
        self, session_ids: Sequence[str], contexts: Sequence[list[str]], k: int
    ) -> list[Any]:
        """One answer per request (anything `simulate_sessions` accepts from a callable)."""


class _One(Policy):
    def __init__(self, recommend: Recommend) -> None:
        self.recommend = recommend

    def answers(self, session_ids, contexts, k):
        return [self.recommend(items, k) for items in contexts]


class _Model(Policy):
    def __init__(self, model: Any) -> None:
        self.model = model

    def answers(self, session_ids, contexts, k):
        return self.model.recommend_batch(contexts, k)


def as_policy(recommend: Policy | Recommend | Any) -> Policy:
    """A `Policy` as it is; a model (anything with `recommend_batch(sessions, k)`) answering
    in batches; a callable `recommend(items, k)` answering one request at a time."""
    if isinstance(recommend, Policy):
        return recommend
    if hasattr(recommend, "recommend_batch"):
        return _Model(recommend)
    if callable(recommend):
        return _One(recommend)
    raise TypeError(
        f"a recommender must be a Policy, a model with recommend_batch or a callable "
        f"recommend(items, k), got {type(recommend).__name__}"
    )


@dataclass
class _InProcess:
    """The shop in process: the recommender as a policy, the scorer a callable answering
    alone or with its variant name; feedback goes nowhere (the sessions keep it)."""

    policy: Policy
    scorer: Score | None

    @property
    def scores(self) -> bool:
        return self.scorer is not None

    def recommend(self, session_id: str, items: list[str], k: int) -> Answer:
        return _answer(self.policy.answers([session_id], [items], k)[0])

    def score(self, session_id: str, events: list[dict]) -> Answer:
        assert self.scorer is not None
        return _answer(self.scorer(events))

    def feedback(self, answer: Answer, action: str, item: str | None) -> None:
        pass


def run_session(w: World, shop: Shop, shopper: ShopperModel, seed: int, index: int) -> Session:
    """Session `index` of the run seeded `seed` (its id and every draw come from them)."""
    visit = _Visit(w, shop, shopper, seed, index)
    steps = visit.steps()
    try:
        items = next(steps)
        while True:
            items = steps.send(shop.recommend(visit.out.session_id, items, shopper.shown))
    except StopIteration as done:
        return done.value


def _answer(out: Any) -> Answer:
    """What a recommender callable may return: an `Answer`; a tuple of its fields (e.g.
    `(skus, variant)`); an `ml.offpolicy.Shown` (items with propensities, logged as extras);
    or the value alone (skus, a probability)."""
    if isinstance(out, Answer):
        return out
    if isinstance(out, tuple):
        return Answer(*out)
    if hasattr(out, "propensities") and hasattr(out, "explored"):
        extra = {"propensities": list(out.propensities), "explored": bool(out.explored)}
        return Answer(list(out.items), extra=extra)
    return Answer(out)


def _advance(steps: Generator[list[str], Answer | None, Session], answer: Answer | None):
    """Send a session its answer (None first): its next request, None once it has ended."""
    try:
        return steps.send(answer)
    except StopIteration:
        return None


def _run(
    w: World,
    recommend: Policy | Recommend | Any,
    n: int,
    seed: int,
    score: Score | None,
    shopper: ShopperModel,
) -> list[Session]:
    """Sessions 0..n-1 of the run seeded `seed`, `BATCH` at a time in lockstep."""
    policy = as_policy(recommend)
    shop = _InProcess(policy, score)
    out: list[Session] = []
    for start in range(0, n, BATCH):
        visits = [_Visit(w, shop, shopper, seed, i) for i in range(start, min(n, start + BATCH))]
        running = {i: v.steps() for i, v in enumerate(visits)}
        first = {i: _advance(steps, None) for i, steps in running.items()}
        pending = {i: request for i, request in first.items() if request is not None}
        while pending:
            order = list(pending)
            ids = [visits[i].out.session_id for i in order]
            answers = policy.answers(ids, [pending[i] for i in order], shopper.shown)
            if len(answers) != len(order):
                raise ValueError(f"the recommender gave {len(answers)} answers to {len(order)}")
            pending = {}
            for i, answer in zip(order, answers, strict=True):
                request = _advance(running[i], None if answer is None else _answer(answer))
                if request is not None:
                    pending[i] = request
        out.extend(v.out for v in visits)
    return out


SESSION_COLUMNS = (
    "session_id",
    "variant",
    "conversion_variant",
    "exposures",
    "clicked",
    "expected_clicks",
    "history_events",
    "history_adds",
    "scores",
    "nudged",
    "purchased",
    "base_probability",
    "purchase_probability",
)


def simulate_sessions(
    world: World,
    recommend: Recommend,
    n: int,
    seed: int,
    *,
    score: Score | None = None,
    shopper: ShopperModel = DEFAULT_SHOPPER,
) -> pd.DataFrame:
    """n sessions against `recommend(items, k) -> skus` (or `(skus, variant)`, an `Answer`, a
    `Shown`; or a model with `recommend_batch`, or a `Policy`) and, if given,
    `score(events) -> probability` (or `(probability, variant)`), in process, no HTTP.

    One row per session: the variant of its first widget (`variant`) and of its first score
    (`conversion_variant`), widgets shown (`exposures`), widgets clicked and their summed
    exact click chances (`expected_clicks`), the browsing events and adds before its first
    request of either kind, scores asked, nudged, purchased, and the exact purchase
    probability before (`base_probability`) and after the nudge."""
    rows = [_row(s) for s in _run(world, recommend, n, seed, score, shopper)]
    return pd.DataFrame(rows, columns=list(SESSION_COLUMNS))


EXPOSURE_COLUMNS = (
    "exposure_id",
    "session_id",
    "variant",
    "context",
    "items",
    "propensities",
    "clicks",
    "explored",
    "logging_policy",
    "teams",
    "expected_click",
    "clicked_item",
    "final",
)


def simulate_exposures(
    world: World,
    recommend: Policy | Recommend | Any,
    n: int,
    seed: int,
    *,
    score: Score | None = None,
    shopper: ShopperModel = DEFAULT_SHOPPER,
) -> pd.DataFrame:
    """The same n sessions as `simulate_sessions` (same arguments), one row per recommender
    exposure, in session order: the replay log of `ml.offpolicy` (exposure_id, session_id,
    context, items, propensities, clicks, explored) and the answer's variant, logging_policy
    and teams, then the truth: `expected_click` (the exact chance of a click,
    `click_chance` of the last context item and the items), the sku clicked (or None) and
    `final` (the session's last view: the shopper left, no click was possible).

    `items` are the skus on screen (the answer's first `shopper.shown`); `clicks` is 1 at the
    clicked sku's first position. Without extras an answer is a deterministic list: every
    propensity 1.0, not explored. An interleaved answer (teams) has no propensities (None),
    as in the server's log; `exposure_id` is the answer's or `<session_id>:<n>`."""
    rows = []
    for s in _run(world, recommend, n, seed, score, shopper):
        widgets = [e for e in s.exposures if e.problem == RECOMMENDER]
        rows.extend(_exposure_row(s.session_id, j, e) for j, e in enumerate(widgets))
    return pd.DataFrame(rows, columns=list(EXPOSURE_COLUMNS))


def _exposure_row(session_id: str, j: int, e: Exposure) -> dict:
    extra = e.answer.extra or {}
    n = len(e.shown)
    teams = extra.get("teams")
    propensities = extra.get("propensities")
    if propensities is None and teams is None:
        propensities = [1.0] * n
    clicks = [0] * n
    if e.clicked_item is not None:
        clicks[e.shown.index(e.clicked_item)] = 1
    return {
        "exposure_id": e.answer.exposure_id or f"{session_id}:{j}",
        "session_id": session_id,
        "variant": e.answer.variant,
        "context": e.context,
        "items": e.shown,
        "propensities": None if propensities is None else [float(p) for p in propensities][:n],
        "clicks": clicks,
        "explored": bool(extra.get("explored", False)),
        "logging_policy": extra.get("logging_policy"),
        "teams": None if teams is None else list(teams)[:n],
        "expected_click": e.expected_click,
        "clicked_item": e.clicked_item,
        "final": not e.followed,
    }


def _row(s: Session) -> dict:
    widgets = [e for e in s.exposures if e.problem == RECOMMENDER]
    scored = [e for e in s.exposures if e.problem == CONVERSION]
    return {
        "session_id": s.session_id,
        "variant": widgets[0].answer.variant if widgets else None,
        "conversion_variant": scored[0].answer.variant if scored else None,
        "exposures": len(widgets),
        "clicked": sum(e.clicked for e in widgets),
        "expected_clicks": sum(e.expected_click for e in widgets),
        "history_events": s.history_events,
        "history_adds": s.history_adds,
        "scores": len(scored),
        "nudged": s.nudged,
        "purchased": s.purchased,
        "base_probability": s.base_probability,
        "purchase_probability": s.purchase_probability,
    }
