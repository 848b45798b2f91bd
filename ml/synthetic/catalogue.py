"""The world, fixed per seed: the category tree, popularity per regime, prices, the next-view
tables T_r, URLs and the `products.csv` each regime publishes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ml.contract import PRODUCT_COLUMNS
from ml.synthetic.config import REGIMES, GeneratorConfig, rng_for
from ml.synthetic.sampling import (
    cdf,
    draw,
    expand,
    group_heads,
    grouped_cdf,
    grouped_draw,
    hex_strings,
    within_cdf,
)

N_TOP = 12
_PRODUCTS_PER_LEAF = 60
_ZIPF_A = 1.0
_NEW_PRODUCT_SHARE = 0.10
_N_BOOSTED = 3
_BOOST = 3.0
_CATEGORY_KNOWN = 0.70
_PRICE_KNOWN_GIVEN_CATEGORY = 0.92
_CATEGORY_SD = 0.35
# Next-view process
_NEIGHBOURS = 10
_NEIGHBOUR_SCOPE = (0.75, 0.92)  # cumulative: same leaf, same top, anywhere
_REPEAT = 0.05
_JUMP = 0.30
_JUMP_LEAF = 0.7
_HEAD = 30
_POP_POWER = 0.6  # neighbours and jumps follow popularity**power: flatter than views


@dataclass(frozen=True)
class Transitions:
    """A sparse row-stochastic matrix over product indices, sampled with one searchsorted."""

    src: np.ndarray
    dst: np.ndarray
    prob: np.ndarray
    keys: np.ndarray

    def sample(self, current: np.ndarray, u: np.ndarray) -> np.ndarray:
        return self.dst[np.searchsorted(self.keys, current + u, side="right")]


@dataclass(frozen=True)
class Catalogue:
    n_base: int
    n_total: int
    sku: pa.StringArray
    urls: pa.StringArray  # product pages [0, n_total), then plain pages, then checkout pages
    n_pages: int
    n_checkout: int
    page_cdf: np.ndarray
    top: np.ndarray
    leaf: np.ndarray
    price: np.ndarray
    category_effect: np.ndarray  # per top category, on the conversion logit
    popularity: dict[str, np.ndarray]
    entry_cdf: dict[str, np.ndarray]
    transitions: dict[str, Transitions]
    products: dict[str, pa.Table]


@dataclass(frozen=True)
class _Tree:
    leaf_top: np.ndarray  # per leaf
    boosted: np.ndarray  # top categories a drift boosts
    leaf: np.ndarray  # per product
    top: np.ndarray  # per product


def build_catalogue(config: GeneratorConfig) -> Catalogue:
    # The draws happen in this order; moving one changes every byte that follows.
    rng = rng_for(config.seed, 0)
    n_base = max(int(config.n_products), 50)
    n_new = max(round(_NEW_PRODUCT_SHARE * n_base), 5)
    n_total = n_base + n_new
    n_leaf = int(np.clip(n_base // _PRODUCTS_PER_LEAF, N_TOP, 2000))
    tree = _tree(rng, n_base, n_new, n_leaf)
    weight, popularity = _popularity(rng, n_base, n_new, tree)
    price = _prices(rng, tree.leaf, n_leaf, n_base)
    edges = _neighbours(rng, weight, tree)
    transitions = {
        r: _transitions(popularity[r], edges, tree.leaf, tree.top, n_leaf, n_total) for r in REGIMES
    }
    sku = hex_strings(rng, n_total)
    n_pages = max(200, n_base // 5)
    n_checkout = 3
    urls = hex_strings(rng, n_total + n_pages + n_checkout)
    full = _products_table(rng, sku, tree, price, n_leaf)
    return Catalogue(
        n_base=n_base,
        n_total=n_total,
        sku=sku,
        urls=urls,
        n_pages=n_pages,
        n_checkout=n_checkout,
        page_cdf=cdf(1.0 / (1.0 + np.arange(n_pages)) ** 1.1),
        top=tree.top,
        leaf=tree.leaf,
        price=price,
        category_effect=rng.normal(0.0, _CATEGORY_SD, N_TOP),
        popularity=popularity,
        entry_cdf={r: cdf(p) for r, p in popularity.items()},
        transitions=transitions,
        products={"pre": full.slice(0, n_base), "post": full},
    )


def _tree(rng: np.random.Generator, n_base: int, n_new: int, n_leaf: int) -> _Tree:
    """Leaves under top categories; new products land mostly in the boosted tops."""
    leaf_top = np.concatenate([np.arange(N_TOP), rng.integers(0, N_TOP, n_leaf - N_TOP)]).astype(
        np.int64
    )
    boosted = rng.choice(N_TOP, _N_BOOSTED, replace=False)
    leaf_weight = rng.dirichlet(np.full(n_leaf, 2.0))
    leaf = np.empty(n_base + n_new, dtype=np.int64)
    leaf[:n_base] = draw(cdf(leaf_weight), rng.random(n_base))
    in_boosted = np.isin(leaf_top, boosted)
    new_weight = leaf_weight * np.where(in_boosted, 7.0, 1.0)
    leaf[n_base:] = draw(cdf(new_weight), rng.random(n_new))
    return _Tree(leaf_top=leaf_top, boosted=boosted, leaf=leaf, top=leaf_top[leaf])


def _popularity(
    rng: np.random.Generator, n_base: int, n_new: int, tree: _Tree
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Zipf weights of every product, and each regime's popularity (0: not in the regime)."""
    base_pop = 1.0 / (1.0 + rng.permutation(n_base)) ** _ZIPF_A
    new_pop = 1.0 / rng.uniform(1.0, n_base / 5, n_new) ** _ZIPF_A  # launches start near the head
    weight = np.concatenate([base_pop, new_pop])
    boost = np.where(np.isin(np.arange(N_TOP), tree.boosted), _BOOST, 1.0)
    popularity = {
        "pre": np.concatenate([base_pop, np.zeros(n_new)]),
        "post": weight * boost[tree.top],
    }
    return weight, popularity


def _prices(rng: np.random.Generator, leaf: np.ndarray, n_leaf: int, n_base: int) -> np.ndarray:
    """Price deciles 1..10 of a leaf level plus noise, cut on the base catalogue."""
    level = rng.normal(0.0, 1.0, n_leaf)[leaf] + rng.normal(0.0, 0.6, len(leaf))
    deciles = np.quantile(level[:n_base], np.linspace(0.1, 0.9, 9))
    return 1 + np.searchsorted(deciles, level)


def _neighbours(
    rng: np.random.Generator, weight: np.ndarray, tree: _Tree
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sparse item-to-item table M over every product: (src, dst, weight) edges.

    Each regime drops the edges to products it lacks (`_transitions`).
    """
    src = np.repeat(np.arange(len(weight)), _NEIGHBOURS)
    scope = rng.random(len(src))
    u = rng.random(len(src))
    attract = weight**_POP_POWER
    dst = draw(cdf(attract), u)
    for group, mask in (
        (tree.leaf, scope < _NEIGHBOUR_SCOPE[0]),
        (tree.top, (scope >= _NEIGHBOUR_SCOPE[0]) & (scope < _NEIGHBOUR_SCOPE[1])),
    ):
        order, keys = grouped_cdf(group, attract)
        dst[mask] = grouped_draw(order, keys, group[src[mask]], u[mask])
    edge_weight = rng.gamma(0.6, 1.0, len(src))
    keep = dst != src
    return src[keep], dst[keep], edge_weight[keep]


def _transitions(
    pop: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray, np.ndarray],
    leaf: np.ndarray,
    top: np.ndarray,
    n_leaf: int,
    n_total: int,
) -> Transitions:
    """The exact next-view distribution T_r of the package docstring, as a sparse table."""
    alive = pop > 0
    living = np.flatnonzero(alive)
    src, dst, w = edges
    ok = alive[src] & alive[dst]
    src, dst, w = src[ok], dst[ok], w[ok]
    row = np.bincount(src, weights=w, minlength=n_total)
    jump = np.where(row > 0, _JUMP, 1.0)  # no living neighbour: always jump

    parts = [(living, living, np.full(len(living), _REPEAT))]
    parts.append((src, dst, (1 - _REPEAT) * (1 - jump[src]) * w / row[src]))
    for group, n_groups, share in ((leaf, n_leaf, _JUMP_LEAF), (top, N_TOP, 1 - _JUMP_LEAF)):
        ptr, members, member_share = group_heads(group, pop**_POP_POWER, n_groups, _HEAD)
        i, j, p = expand(group[living], ptr, members, member_share)
        i = living[i]
        parts.append((i, j, (1 - _REPEAT) * jump[i] * share * p))

    key = np.concatenate([a.astype(np.int64) * n_total + b for a, b, _ in parts])
    prob = np.concatenate([p for _, _, p in parts])
    unique, inverse = np.unique(key, return_inverse=True)
    prob = np.bincount(inverse, weights=prob)
    nonzero = prob > 0
    unique, prob = unique[nonzero], prob[nonzero]
    src, dst = unique // n_total, unique % n_total
    return Transitions(src=src, dst=dst, prob=prob, keys=within_cdf(src, prob))


def _products_table(
    rng: np.random.Generator, sku: pa.StringArray, tree: _Tree, price: np.ndarray, n_leaf: int
) -> pa.Table:
    """`products.csv` of every product; about 30% lack category and price, like the public data."""
    n_total = len(sku)
    top_names = [f"{x:06x}" for x in rng.integers(0, 16**6, N_TOP)]
    leaf_names = [
        f"{top_names[t]}/{x:08x}"
        for t, x in zip(tree.leaf_top, rng.integers(0, 16**8, n_leaf), strict=True)
    ]
    category_known = rng.random(n_total) < _CATEGORY_KNOWN
    price_known = category_known & (rng.random(n_total) < _PRICE_KNOWN_GIVEN_CATEGORY)
    category_text = pa.DictionaryArray.from_arrays(
        pa.array(np.where(category_known, tree.leaf, n_leaf).astype(np.int32)),
        pa.array([*leaf_names, ""]),
    )
    price_text = pa.DictionaryArray.from_arrays(
        pa.array(np.where(price_known, price, 0).astype(np.int32)),
        pa.array(["", *(str(b) for b in range(1, 11))]),
    )
    empty = pa.array([""] * n_total)
    return pa.table(
        dict(zip(PRODUCT_COLUMNS, (sku, category_text, price_text, empty, empty), strict=True))
    )
