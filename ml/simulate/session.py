"""One simulated session, step by step (the process of `ml.simulate`), and `simulate_sessions`:
many of them against two callables, in process."""

from __future__ import annotations

import math
from collections.abc import Callable
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


@dataclass(frozen=True)
class Answer:
    """What the shop's model answered (items, or a probability) and who answered it."""

    value: Any
    variant: str | None = None
    experiment: str | None = None
    model_version: str | None = None
    exposure_id: str | None = None


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
    expected_click: float = 0.0
    clicked: bool = False


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

    def run(self) -> Session:
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
                    widget.expected_click = chance
                    widget.clicked = item in shown
                    if widget.clicked:
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
                widget = self._recommend(views)
                if widget is not None:
                    shown = [self.w.index.get(s, -1) for s in widget.answer.value[: model.shown]]
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

    def _recommend(self, views: list[int]) -> Exposure | None:
        items = [self.w.skus[i] for i in views[-MAX_REQUEST_EVENTS:]]
        answer = self.shop.recommend(self.out.session_id, items, self.model.shown)
        return None if answer is None else self._record(RECOMMENDER, answer)

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


Recommend = Callable[[list[str], int], "list[str] | tuple[list[str], str]"]
Score = Callable[[list[dict]], "float | tuple[float, str]"]


@dataclass
class _InProcess:
    """The shop as two callables, each answering alone or with its variant name."""

    recommender: Recommend
    scorer: Score | None

    @property
    def scores(self) -> bool:
        return self.scorer is not None

    def recommend(self, session_id: str, items: list[str], k: int) -> Answer:
        return _answer(self.recommender(items, k))

    def score(self, session_id: str, events: list[dict]) -> Answer:
        assert self.scorer is not None
        return _answer(self.scorer(events))

    def feedback(self, answer: Answer, action: str, item: str | None) -> None:
        pass


def run_session(w: World, shop: Shop, shopper: ShopperModel, seed: int, index: int) -> Session:
    """Session `index` of the run seeded `seed` (its id and every draw come from them)."""
    return _Visit(w, shop, shopper, seed, index).run()


def _answer(out: Any) -> Answer:
    return Answer(*out) if isinstance(out, tuple) else Answer(out)


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
    """n sessions against `recommend(items, k) -> skus` (or `(skus, variant)`) and, if given,
    `score(events) -> probability` (or `(probability, variant)`), in process, no HTTP.

    One row per session: the variant of its first widget (`variant`) and of its first score
    (`conversion_variant`), widgets shown (`exposures`), widgets clicked and their summed
    exact click chances (`expected_clicks`), the browsing events and adds before its first
    request of either kind, scores asked, nudged, purchased, and the exact purchase
    probability before (`base_probability`) and after the nudge."""
    shop = _InProcess(recommend, score)
    rows = [_row(run_session(world, shop, shopper, seed, i)) for i in range(n)]
    return pd.DataFrame(rows, columns=list(SESSION_COLUMNS))


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
