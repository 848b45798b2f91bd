"""The generator's world in one regime, the click model (`next_view`), the truth's own ranker
(`true_top_k`) and the true purchase probability (`base_probability`); see `ml.simulate`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ml.contract import day_bounds_ms
from ml.synthetic import shoppers
from ml.synthetic.catalogue import Catalogue, build_catalogue
from ml.synthetic.config import REGIMES, GeneratorConfig


@dataclass(frozen=True)
class ShopperModel:
    """The shop's widget and offer, and how shoppers answer them (module docstring)."""

    shown: int = 10
    attraction: float = 1.0
    eta: float = 1.0
    warmup_steps: int = 2
    nudge_threshold: float = 0.5
    nudge_effect: float = 0.7
    persuadable_from: float = 0.25


DEFAULT_SHOPPER = ShopperModel()


@dataclass(frozen=True)
class World:
    """The generator's world in one regime; products are indices into `skus`."""

    regime: str
    catalogue: Catalogue
    skus: tuple[str, ...]
    index: dict[str, int]
    category: tuple[str | None, ...]  # what products.csv says (None: not published)
    price_bucket: tuple[int | None, ...]
    row_start: np.ndarray  # row i of T is [row_start[i], row_start[i + 1]) of the table
    start_ms: int  # sessions start here (only differences of times matter to a model)

    def next_views(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """T(.|item): the products that can follow `item` (sorted) and their probabilities."""
        table = self.catalogue.transitions[self.regime]
        at = slice(self.row_start[item], self.row_start[item + 1])
        return table.dst[at], table.prob[at]


def world(config: GeneratorConfig, regime: str = "pre") -> World:
    """The world `ml.synthetic.generate(config)` draws its data from (same seed and product
    count: same catalogue, skus, transitions and purchase model)."""
    if regime not in REGIMES:
        raise ValueError(f"regime: {regime!r} is not one of {REGIMES}")
    cat = build_catalogue(config)
    skus = tuple(cat.sku.to_pylist())
    published = {row["product_sku_hash"]: row for row in cat.products[regime].to_pylist()}
    rows = [published.get(sku, {}) for sku in skus]
    table = cat.transitions[regime]
    return World(
        regime=regime,
        catalogue=cat,
        skus=skus,
        index={sku: i for i, sku in enumerate(skus)},
        category=tuple(r.get("category_hash") or None for r in rows),
        price_bucket=tuple(int(r["price_bucket"]) if r.get("price_bucket") else None for r in rows),
        row_start=np.searchsorted(table.src, np.arange(cat.n_total + 1)),
        start_ms=day_bounds_ms(config.start)[0] + 12 * 3_600_000,  # noon UTC, first day
    )


def _tilted(
    w: World, current: int, shown: Sequence[int], shopper: ShopperModel
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T(.|current)'s products, their click-model weights w_j with `shown` on screen, and
    which of them are on screen (a product counts at the first rank it is shown at)."""
    dst, prob = w.next_views(current)
    weight = prob.copy()
    on_screen = np.zeros(len(dst), dtype=bool)
    for rank, item in enumerate(shown, start=1):
        at = int(np.searchsorted(dst, item))
        if at < len(dst) and dst[at] == item and not on_screen[at]:
            weight[at] *= 1.0 + shopper.attraction / rank**shopper.eta
            on_screen[at] = True
    return dst, weight, on_screen


def _chance(weight: np.ndarray, on_screen: np.ndarray) -> float:
    return float(weight[on_screen].sum() / weight.sum())


def click_chance(w: World, current: int, shown: Sequence[int], shopper: ShopperModel) -> float:
    """The exact chance that the view after `current` is one of `shown` (indices, best first;
    -1 for a sku the world does not know): sum of the shown w / sum w (module docstring)."""
    _, weight, on_screen = _tilted(w, current, shown, shopper)
    return _chance(weight, on_screen)


def next_view(
    w: World, current: int, shown: Sequence[int], shopper: ShopperModel, rng: np.random.Generator
) -> tuple[int, float]:
    """The product viewed after `current` with `shown` on screen (indices, best first; -1 for
    a sku the world does not know), and its `click_chance` (the next view is a shown one)."""
    dst, weight, on_screen = _tilted(w, current, shown, shopper)
    total = weight.sum()
    chosen = min(
        int(np.searchsorted(np.cumsum(weight), rng.random() * total, "right")), len(dst) - 1
    )
    return int(dst[chosen]), _chance(weight, on_screen)


def browsing_sessions(w: World, n: int, seed: int) -> list[list[str]]:
    """The skus viewed in `n` of the generator's visits without a widget (its Markov chain,
    `shoppers.product_views`; visits without a product view left out, so fewer than n):
    training and test sessions drawn from the world in memory."""
    rng = np.random.default_rng(seed)
    shape = shoppers.session_shape(rng, n)
    views = shoppers.product_views(rng, w.catalogue, w.regime, shape.n_views)
    skus = np.asarray(w.skus, dtype=object)[views.items]
    bounds = np.cumsum(shape.n_views[shape.n_views > 0])[:-1]
    return [list(s) for s in np.split(skus, bounds)] if len(skus) else []


def true_top_k(w: World) -> Callable[[list[str], int], list[str]]:
    """The truth's own ranking: the k most likely next views after the latest product (the
    most popular products without one): the best possible recommender here."""
    popular = [w.skus[i] for i in np.argsort(-w.catalogue.popularity[w.regime], kind="stable")]

    def recommend(items: list[str], k: int) -> list[str]:
        last = w.index.get(items[-1]) if items else None
        if last is None:
            return popular[:k]
        dst, prob = w.next_views(last)
        return [w.skus[i] for i in dst[np.argsort(-prob, kind="stable")[:k]]]

    return recommend


def base_probability(
    w: World, kinds: Sequence[int], refs: Sequence[int], elapsed: Sequence[int], cart: set[int]
) -> float:
    """The generator's purchase probability (`shoppers.conversion`) of one session's steps
    (kind, product, ms since the first step) and final cart, before any nudge."""
    kinds_a, refs_a = np.asarray(kinds, dtype=np.int8), np.asarray(refs, dtype=np.int64)
    n = len(kinds_a)
    adds, removes = refs_a[kinds_a == shoppers.STEP_ADD], refs_a[kinds_a == shoppers.STEP_REMOVE]
    elapsed_a = np.asarray(elapsed, dtype=np.int64)
    steps = shoppers.Steps(
        sess=np.zeros(n, dtype=np.int64),
        kind=kinds_a,
        ref=refs_a,
        start=np.array([0]),
        count=np.array([n]),
        elapsed=elapsed_a,
        ts=w.start_ms + elapsed_a,
        checkout_gap=np.array([0]),  # not read
    )
    in_cart = np.array(sorted(cart), dtype=np.int64)
    carts = shoppers.Cart(
        add_sess=np.zeros(len(adds), dtype=np.int64),
        add_sku=adds,
        add_key=np.zeros(len(adds)),
        remove_sess=np.zeros(len(removes), dtype=np.int64),
        remove_sku=removes,
        remove_key=np.zeros(len(removes)),
        sess=np.zeros(len(in_cart), dtype=np.int64),
        sku=in_cart,
    )
    unused = np.random.default_rng(0)  # the function also draws the outcome; not used here
    return float(shoppers.conversion(unused, w.catalogue, w.regime, steps, carts).probability[0])
