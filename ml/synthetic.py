"""Synthetic Coveo-shaped browsing days whose generating process is known exactly.

Why: the platform needs data that looks like the public Coveo SIGIR eCom 2021 sessions (so what
works on the demo works on real traffic) *and* a ground truth, so benchmarks can say how good the
best possible model would be and drift monitors have something real to find.

Layout written by `generate` (one folder per UTC day, the raw-data contract of `ml.contract`)::

    <out>/2026-01-05/browsing_events.csv   rows shuffled, some duplicated, some malformed
    <out>/2026-01-05/products.csv          the catalogue known that day
    <out>/_truth/2026-01-05/sessions.parquet
    <out>/_truth/transitions_pre.parquet   (and transitions_post.parquet after a drift)

`_truth/` is the answer key. It sits outside the day folders so ingestion never sees it; training,
feature and model code must never read it — only benchmarks and tests that grade models may.

The process, per day (each day has its own RNG from SeedSequence(seed, spawn_key=(1, day_index)),
so days are independent and a day's bytes do not depend on which other days are generated):

Catalogue (fixed per seed). Products sit in a two-level category tree (`<top>/<leaf>`), have a
true price decile and a Zipf popularity. About 30% of products lack category and price in
`products.csv`, like the public data; the process still uses their true values. A drift adds new
products (mostly in a few "boosted" top categories) that exist only from `drift_from` on.

Regimes. Days before `drift_from` are regime "pre", days from it on "post". Post multiplies the
popularity of the boosted top categories, brings the new products in, and lowers the conversion
intercept, so the category mix, the catalogue and the conversion rate all move.

Sessions. About a third of sessions look at products; the rest are pageview-only visits whose
length is a discretised log-normal (long tail). A product session views V products (long-tailed)
as a first-order Markov chain: the entry product is drawn from the regime's popularity; each next
view is drawn from

    T_r(j | i) = s 1[j = i]
                 + (1 - s) [(1 - lam) M_r(i, j) + lam (a H_leaf(i)(j) + (1 - a) H_top(i)(j))]

with s the repeat (reload / back) probability, M a sparse item-to-item table (neighbours mostly
in the same leaf, some in the same top category, a few anywhere, chosen by popularity; edges to
products that do not exist in the regime removed) and H the regime popularity over the heads of
the current product's leaf and top category. `transitions_<regime>.parquet` stores T_r itself,
the exact distribution each next view was drawn from, so the best achievable HR@20 given the
current item is the mean top-20 mass of T_r along the observed transitions.

Each product view is a `detail` product event plus a `pageview` twin with the same URL and
timestamp. Some views are preceded by a `click`. A share of product sessions add 1+ viewed
products to the cart (each right after viewing it); some remove one later. Plain pageviews are
interleaved. Gaps between steps are log-normal around a per-session dwell and clipped below 30
minutes; the session start follows a diurnal curve and is moved so that the whole session stays
inside its UTC day.

Conversion. A session with a non-empty cart purchases with probability

    sigmoid(b0 + b_add log(adds) + b_remove removes + b_dwell log(mean gap / 30 s)
            + category effect of the cart + b_price (mean cart price decile - 5.5) + drift)

(0 without a cart). Purchases are `purchase` rows for each carted sku, after the last step. The
probability and outcome are in `_truth/<day>/sessions.parquet`.

Dirt. `duplicate_share` of the true rows are written twice (exact copies) and `malformed_share`
extra rows are corrupted copies, one kind of `ml.contract.REJECT_REASONS` each (kinds spread
evenly), so `validate_events` rejects exactly those rows and accepts every other row.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ml.contract import (
    EVENT_COLUMNS,
    EVENTS_FILE,
    MS_PER_DAY,
    PRODUCT_COLUMNS,
    PRODUCTS_FILE,
    REJECT_REASONS,
    day_bounds_ms,
)

TRUTH_DIR = "_truth"
REGIMES = ("pre", "post")
HASH_HEX = 32  # Coveo uses sha256 (64); half the width halves the CSV bytes

# Catalogue
_N_TOP = 12
_PRODUCTS_PER_LEAF = 60
_ZIPF_A = 1.0
_NEW_PRODUCT_SHARE = 0.10
_N_BOOSTED = 3
_BOOST = 3.0
_CATEGORY_KNOWN = 0.70
_PRICE_KNOWN_GIVEN_CATEGORY = 0.92
# Next-view process
_NEIGHBOURS = 10
_NEIGHBOUR_SCOPE = (0.75, 0.92)  # cumulative: same leaf, same top, anywhere
_REPEAT = 0.05
_JUMP = 0.30
_JUMP_LEAF = 0.7
_HEAD = 30
_POP_POWER = 0.6  # neighbours and jumps follow popularity**power: flatter than views
# Session shape (pageview-only share ~2/3, ~7 events per session, ~70% pageviews)
_P_PRODUCT_SESSION = 0.34
_BROWSE_PAGES = (0.68, 1.05)  # 1 + floor(lognormal(mu, sigma))
_PRODUCT_PAGES = (0.30, 0.9)  # floor(lognormal(mu, sigma))
_VIEWS = (1.00, 1.0)  # 1 + floor(lognormal(mu, sigma))
_MAX_PAGES = 300
_MAX_VIEWS = 150
_P_CLICK = 0.08
_P_ADD_SESSION = 0.36
_ADD_GEOMETRIC_P = 0.65
_P_REMOVE = 0.15
# Time
_DWELL_MEDIAN_S = 30.0
_DWELL_SIGMA = 0.6
_GAP_SIGMA = 0.9
_MIN_GAP_MS = 1_000
_MAX_GAP_MS = 29 * 60_000 + 30_000  # never a 30-minute inactivity gap inside a session
_MAX_SESSION_MS = 4 * 3_600_000
_HOURLY = 1.0 + 0.6 * np.cos(2 * np.pi * (np.arange(24) - 20) / 24)  # peak 20:00 UTC
# Conversion
_B0 = -1.65
_B_ADD = 0.8
_B_REMOVE = -0.6
_B_DWELL = 0.4
_B_PRICE = -0.08
_CATEGORY_SD = 0.35
_DRIFT_LOGIT = -0.7

_ETYPES = ("pageview", "event_product", "page_view", "event", "product")
_ACTIONS = ("", "detail", "add", "remove", "purchase", "click", "view", "checkout", "cart_add")
_BAD_TIMESTAMPS = ("", "NaN", "1.7e12", "-1", "2026-01-05T10:00:00Z", "n/a")
_PAGEVIEW, _PRODUCT_EVENT = 0, 1
_NO_ACTION, _DETAIL, _ADD, _REMOVE, _PURCHASE, _CLICK = range(6)
_STEP_PAGE, _STEP_VIEW, _STEP_ADD, _STEP_REMOVE, _STEP_CLICK = range(5)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. Defaults give a small demo shaped like the Coveo data.

    Catalogues smaller than 50 products are raised to 50; a drift adds 10% new products.
    """

    days: int = 21
    sessions_per_day: int = 2000
    seed: int = 7
    start: dt.date = dt.date(2026, 1, 5)
    drift_from: dt.date | None = None
    n_products: int = 5000  # catalogue size (Coveo has ~60k; keep default small for the demo)
    malformed_share: float = 0.005  # share of event rows written malformed
    duplicate_share: float = 0.005  # share of event rows written twice (exact duplicates)
    write_truth: bool = True


@dataclass(frozen=True)
class GenerateResult:
    """What was written; `events` counts every row, duplicates and malformed included."""

    days: list[dt.date]
    events: int
    sessions: int
    malformed: int
    duplicates: int
    seconds: float
    out_dir: Path

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def regime_of(day: dt.date, config: GeneratorConfig) -> str:
    """'post' from `drift_from` on, else 'pre'."""
    return "post" if config.drift_from is not None and day >= config.drift_from else "pre"


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _hex_strings(rng: np.random.Generator, n: int, width: int = HASH_HEX) -> pa.StringArray:
    """n random lowercase hex strings, built straight into Arrow buffers."""
    raw = np.frombuffer(rng.bytes(n * width // 2), dtype=np.uint8).reshape(n, width // 2)
    text = np.empty((n, width), dtype=np.uint8)
    text[:, 0::2] = _HEX[raw >> 4]
    text[:, 1::2] = _HEX[raw & 15]
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))


def _count(rng: np.random.Generator, mu_sigma: tuple[float, float], n: int, cap: int) -> np.ndarray:
    """floor(lognormal): a count with a long right tail."""
    draw = np.floor(np.exp(rng.normal(mu_sigma[0], mu_sigma[1], n)))
    return np.minimum(draw, cap).astype(np.int64)


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights, dtype=np.float64)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def _grouped_cdf(group: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order and keys `group + within-group CDF`, so one searchsorted samples every group."""
    order = np.argsort(group, kind="stable")
    g = group[order]
    w = weight[order].astype(np.float64)
    keys = _within_cdf(g, w)
    return order, keys


def _within_cdf(g: np.ndarray, w: np.ndarray) -> np.ndarray:
    """`g + cumulative share within g` for rows sorted by g; each group ends exactly at g + 1."""
    n_groups = int(g.max()) + 1 if len(g) else 0
    total = np.bincount(g, weights=w, minlength=n_groups)
    before = np.concatenate([[0.0], np.cumsum(total)])[:-1]
    within = (np.cumsum(w) - before[g]) / np.where(total > 0, total, 1.0)[g]
    last = np.flatnonzero(np.diff(np.append(g, -1)) != 0)
    within[last] = 1.0
    return g + within


def _grouped_draw(order: np.ndarray, keys: np.ndarray, groups: np.ndarray, u: np.ndarray):
    return order[np.searchsorted(keys, groups + u, side="right")]


def _group_heads(
    group: np.ndarray, pop: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR of each group's `_HEAD` most popular living products, with normalised popularity."""
    order = np.lexsort((-pop, group))
    g = group[order]
    first = np.searchsorted(g, np.arange(n_groups))
    rank = np.arange(len(g)) - first[g]
    keep = (rank < _HEAD) & (pop[order] > 0)
    members, g = order[keep], g[keep]
    ptr = np.zeros(n_groups + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(g, minlength=n_groups))
    total = np.bincount(g, weights=pop[members], minlength=n_groups)
    return ptr, members, pop[members] / total[g]


def _expand(groups: np.ndarray, ptr: np.ndarray, members: np.ndarray, share: np.ndarray):
    """For each source (by its group), one row per member of its group's CSR list."""
    lengths = ptr[groups + 1] - ptr[groups]
    source = np.repeat(np.arange(len(groups)), lengths)
    ends = np.cumsum(lengths)
    at = np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - lengths, lengths)
    at += np.repeat(ptr[groups], lengths)
    return source, members[at], share[at]


@dataclass(frozen=True)
class _Transitions:
    """A sparse row-stochastic matrix over product indices, sampled with one searchsorted."""

    src: np.ndarray
    dst: np.ndarray
    prob: np.ndarray
    keys: np.ndarray

    def sample(self, current: np.ndarray, u: np.ndarray) -> np.ndarray:
        return self.dst[np.searchsorted(self.keys, current + u, side="right")]


@dataclass(frozen=True)
class _Catalogue:
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
    transitions: dict[str, _Transitions]
    products: dict[str, pa.Table]


def _build_catalogue(config: GeneratorConfig) -> _Catalogue:
    rng = _rng(config.seed, 0)
    n_base = max(int(config.n_products), 50)
    n_new = max(round(_NEW_PRODUCT_SHARE * n_base), 5)
    n_total = n_base + n_new
    n_leaf = int(np.clip(n_base // _PRODUCTS_PER_LEAF, _N_TOP, 2000))

    leaf_top = np.concatenate([np.arange(_N_TOP), rng.integers(0, _N_TOP, n_leaf - _N_TOP)]).astype(
        np.int64
    )
    boosted = rng.choice(_N_TOP, _N_BOOSTED, replace=False)
    leaf_weight = rng.dirichlet(np.full(n_leaf, 2.0))
    leaf = np.empty(n_total, dtype=np.int64)
    leaf[:n_base] = _draw(_cdf(leaf_weight), rng.random(n_base))
    in_boosted = np.isin(leaf_top, boosted)
    new_weight = leaf_weight * np.where(in_boosted, 7.0, 1.0)
    leaf[n_base:] = _draw(_cdf(new_weight), rng.random(n_new))
    top = leaf_top[leaf]

    base_pop = 1.0 / (1.0 + rng.permutation(n_base)) ** _ZIPF_A
    new_pop = 1.0 / rng.uniform(1.0, n_base / 5, n_new) ** _ZIPF_A  # launches start near the head
    weight = np.concatenate([base_pop, new_pop])
    boost = np.where(np.isin(np.arange(_N_TOP), boosted), _BOOST, 1.0)
    popularity = {
        "pre": np.concatenate([base_pop, np.zeros(n_new)]),
        "post": weight * boost[top],
    }

    level = rng.normal(0.0, 1.0, n_leaf)[leaf] + rng.normal(0.0, 0.6, n_total)
    deciles = np.quantile(level[:n_base], np.linspace(0.1, 0.9, 9))
    price = 1 + np.searchsorted(deciles, level)

    # Markov neighbours over every product; each regime drops edges to products it lacks.
    src = np.repeat(np.arange(n_total), _NEIGHBOURS)
    scope = rng.random(len(src))
    u = rng.random(len(src))
    attract = weight**_POP_POWER
    dst = _draw(_cdf(attract), u)
    for group, mask in (
        (leaf, scope < _NEIGHBOUR_SCOPE[0]),
        (top, (scope >= _NEIGHBOUR_SCOPE[0]) & (scope < _NEIGHBOUR_SCOPE[1])),
    ):
        order, keys = _grouped_cdf(group, attract)
        dst[mask] = _grouped_draw(order, keys, group[src[mask]], u[mask])
    edge_weight = rng.gamma(0.6, 1.0, len(src))
    keep = dst != src
    edges = (src[keep], dst[keep], edge_weight[keep])

    transitions = {
        r: _transitions(popularity[r], edges, leaf, top, n_leaf, n_total) for r in REGIMES
    }

    sku = _hex_strings(rng, n_total)
    n_pages = max(200, n_base // 5)
    n_checkout = 3
    urls = _hex_strings(rng, n_total + n_pages + n_checkout)
    page_cdf = _cdf(1.0 / (1.0 + np.arange(n_pages)) ** 1.1)

    top_names = [f"{x:06x}" for x in rng.integers(0, 16**6, _N_TOP)]
    leaf_names = [
        f"{top_names[t]}/{x:08x}"
        for t, x in zip(leaf_top, rng.integers(0, 16**8, n_leaf), strict=True)
    ]
    category_known = rng.random(n_total) < _CATEGORY_KNOWN
    price_known = category_known & (rng.random(n_total) < _PRICE_KNOWN_GIVEN_CATEGORY)
    category_text = pa.DictionaryArray.from_arrays(
        pa.array(np.where(category_known, leaf, n_leaf).astype(np.int32)),
        pa.array([*leaf_names, ""]),
    )
    price_text = pa.DictionaryArray.from_arrays(
        pa.array(np.where(price_known, price, 0).astype(np.int32)),
        pa.array(["", *(str(b) for b in range(1, 11))]),
    )
    empty = pa.array([""] * n_total)
    full = pa.table(
        dict(zip(PRODUCT_COLUMNS, (sku, category_text, price_text, empty, empty), strict=True))
    )
    products = {"pre": full.slice(0, n_base), "post": full}

    return _Catalogue(
        n_base=n_base,
        n_total=n_total,
        sku=sku,
        urls=urls,
        n_pages=n_pages,
        n_checkout=n_checkout,
        page_cdf=page_cdf,
        top=top,
        leaf=leaf,
        price=price,
        category_effect=rng.normal(0.0, _CATEGORY_SD, _N_TOP),
        popularity=popularity,
        entry_cdf={r: _cdf(p) for r, p in popularity.items()},
        transitions=transitions,
        products=products,
    )


def _transitions(
    pop: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray, np.ndarray],
    leaf: np.ndarray,
    top: np.ndarray,
    n_leaf: int,
    n_total: int,
) -> _Transitions:
    """The exact next-view distribution T_r of the module docstring, as a sparse table."""
    alive = pop > 0
    living = np.flatnonzero(alive)
    src, dst, w = edges
    ok = alive[src] & alive[dst]
    src, dst, w = src[ok], dst[ok], w[ok]
    row = np.bincount(src, weights=w, minlength=n_total)
    jump = np.where(row > 0, _JUMP, 1.0)  # no living neighbour: always jump

    parts = [(living, living, np.full(len(living), _REPEAT))]
    parts.append((src, dst, (1 - _REPEAT) * (1 - jump[src]) * w / row[src]))
    for group, n_groups, share in ((leaf, n_leaf, _JUMP_LEAF), (top, _N_TOP, 1 - _JUMP_LEAF)):
        ptr, members, member_share = _group_heads(group, pop**_POP_POWER, n_groups)
        i, j, p = _expand(group[living], ptr, members, member_share)
        i = living[i]
        parts.append((i, j, (1 - _REPEAT) * jump[i] * share * p))

    key = np.concatenate([a.astype(np.int64) * n_total + b for a, b, _ in parts])
    prob = np.concatenate([p for _, _, p in parts])
    unique, inverse = np.unique(key, return_inverse=True)
    prob = np.bincount(inverse, weights=prob)
    nonzero = prob > 0
    unique, prob = unique[nonzero], prob[nonzero]
    src, dst = unique // n_total, unique % n_total
    return _Transitions(src=src, dst=dst, prob=prob, keys=_within_cdf(src, prob))


@dataclass(frozen=True)
class _Day:
    events: pa.Table
    truth: pa.Table
    sessions: int
    malformed: int
    duplicates: int


def _simulate_day(cat: _Catalogue, config: GeneratorConfig, index: int, day: dt.date) -> _Day:
    rng = _rng(config.seed, 1, index)
    regime = regime_of(day, config)
    table = cat.transitions[regime]
    n = int(config.sessions_per_day)
    session_ids = _hex_strings(rng, n)

    product = rng.random(n) < _P_PRODUCT_SESSION
    browse_pages = 1 + _count(rng, _BROWSE_PAGES, n, _MAX_PAGES - 1)
    product_pages = _count(rng, _PRODUCT_PAGES, n, _MAX_PAGES)
    n_pages = np.where(product, product_pages, browse_pages)
    n_views = np.where(product, 1 + _count(rng, _VIEWS, n, _MAX_VIEWS - 1), 0)

    # product views: a Markov chain per session, advanced one step for all sessions at once
    view_start = np.cumsum(n_views) - n_views
    v_sess = np.repeat(np.arange(n), n_views)
    v_pos = np.arange(len(v_sess)) - view_start[v_sess]
    items = np.empty(len(v_sess), dtype=np.int64)
    by_length = np.argsort(-n_views, kind="stable")
    neg_length = -n_views[by_length]
    active = np.searchsorted(neg_length, 0, side="left")
    first = view_start[by_length[:active]]
    items[first] = _draw(cat.entry_cdf[regime], rng.random(active))
    for t in range(1, int(n_views.max(initial=0))):
        active = np.searchsorted(neg_length, -t, side="left")
        at = view_start[by_length[:active]] + t
        items[at] = table.sample(items[at - 1], rng.random(active))

    clicked = rng.random(len(items)) < _P_CLICK

    # carts: some product sessions add a few distinct viewed positions, some remove one again
    adder = product & (rng.random(n) < _P_ADD_SESSION)
    wanted = rng.geometric(_ADD_GEOMETRIC_P, n)
    order = np.lexsort((rng.random(len(items)), v_sess))
    rank = np.empty(len(items), dtype=np.int64)
    rank[order] = np.arange(len(items)) - view_start[v_sess[order]]
    added = adder[v_sess] & (rank < wanted[v_sess])
    a_sess, a_sku, a_key = v_sess[added], items[added], v_pos[added] + 0.5
    remover = rng.random(n) < _P_REMOVE
    removed = (rank[added] == 0) & remover[a_sess]
    r_sess, r_sku = a_sess[removed], a_sku[removed]
    r_key = a_key[removed] + 0.1
    r_key += rng.random(len(r_sess)) * (n_views[r_sess] + 0.2 - r_key)
    cart = np.setdiff1d(
        np.unique(a_sess * cat.n_total + a_sku), r_sess * cat.n_total + r_sku, assume_unique=False
    )
    c_sess, c_sku = cart // cat.n_total, cart % cat.n_total

    p_sess = np.repeat(np.arange(n), n_pages)
    u = rng.random(len(p_sess))
    p_key = np.where(product[p_sess], u * (n_views[p_sess] + 1) - 1, u)
    p_url = cat.n_total + _draw(cat.page_cdf, rng.random(len(p_sess)))

    # steps (one timestamp each), ordered within the session by key
    st_sess = np.concatenate([p_sess, v_sess, a_sess, r_sess, v_sess[clicked]])
    st_key = np.concatenate([p_key, v_pos, a_key, r_key, v_pos[clicked] - 0.3])
    st_kind = np.concatenate(
        [
            np.full(len(p_sess), _STEP_PAGE),
            np.full(len(v_sess), _STEP_VIEW),
            np.full(len(a_sess), _STEP_ADD),
            np.full(len(r_sess), _STEP_REMOVE),
            np.full(int(clicked.sum()), _STEP_CLICK),
        ]
    ).astype(np.int8)
    st_ref = np.concatenate([p_url, items, a_sku, r_sku, items[clicked]])
    order = np.argsort(st_sess * float(_MAX_VIEWS + 4) + (st_key + 1.0), kind="stable")
    st_sess, st_kind, st_ref = st_sess[order], st_kind[order], st_ref[order]
    n_steps = np.bincount(st_sess, minlength=n)
    step_start = np.cumsum(n_steps) - n_steps

    # time: log-normal gaps around a per-session dwell, kept under 30 minutes and inside the day
    dwell_ms = 1000 * np.exp(rng.normal(np.log(_DWELL_MEDIAN_S), _DWELL_SIGMA, n))
    gaps = dwell_ms[st_sess] * np.exp(rng.normal(0.0, _GAP_SIGMA, len(st_sess)))
    gaps = np.clip(gaps, _MIN_GAP_MS, _MAX_GAP_MS)
    checkout_gap = np.clip(
        dwell_ms * np.exp(rng.normal(0.0, _GAP_SIGMA, n)), _MIN_GAP_MS, _MAX_GAP_MS
    )
    gaps[step_start[n_steps > 0]] = 0.0
    squeeze = np.minimum(1.0, _MAX_SESSION_MS / (np.bincount(st_sess, gaps, n) + checkout_gap))
    gaps = np.rint(gaps * squeeze[st_sess]).astype(np.int64)
    gaps[gaps > 0] = np.maximum(gaps[gaps > 0], _MIN_GAP_MS)
    checkout_gap = np.maximum(np.rint(checkout_gap * squeeze), _MIN_GAP_MS).astype(np.int64)
    elapsed = np.cumsum(gaps)
    elapsed -= elapsed[step_start][st_sess]
    last = step_start + n_steps - 1
    duration = elapsed[last] + checkout_gap
    hour = _draw(_cdf(_HOURLY), rng.random(n))
    offset = hour * 3_600_000 + rng.integers(0, 3_600_000, n)
    offset = np.minimum(offset, MS_PER_DAY - 1 - duration)
    day_start = day_bounds_ms(day)[0]
    st_ts = day_start + offset[st_sess] + elapsed

    # conversion
    adds = np.bincount(a_sess, minlength=n)
    removes = np.bincount(r_sess, minlength=n)
    cart_size = np.bincount(c_sess, minlength=n)
    mean_gap_s = elapsed[last] / np.maximum(n_steps - 1, 1) / 1000
    dwell = np.where(n_steps > 1, np.log(np.maximum(mean_gap_s, 1.0) / _DWELL_MEDIAN_S), 0.0)
    safe = np.maximum(cart_size, 1)
    category = np.bincount(c_sess, cat.category_effect[cat.top[c_sku]], n) / safe
    price = np.bincount(c_sess, cat.price[c_sku].astype(np.float64), n) / safe
    logit = (
        _B0
        + _B_ADD * np.log(np.maximum(adds, 1))
        + _B_REMOVE * removes
        + _B_DWELL * dwell
        + category
        + _B_PRICE * (price - 5.5)
        + (_DRIFT_LOGIT if regime == "post" else 0.0)
    )
    probability = np.where(cart_size > 0, 1.0 / (1.0 + np.exp(-logit)), 0.0)
    purchased = rng.random(n) < probability
    buy = purchased[c_sess]
    b_sess, b_sku = c_sess[buy], c_sku[buy]
    checkout_url = cat.n_total + cat.n_pages + rng.integers(0, cat.n_checkout, n)

    # rows: every step, a pageview twin per view, the purchases
    view = st_kind == _STEP_VIEW
    step_action = np.array([_NO_ACTION, _DETAIL, _ADD, _REMOVE, _CLICK], dtype=np.int8)[st_kind]
    is_page = st_kind == _STEP_PAGE
    sess = np.concatenate([st_sess, st_sess[view], b_sess])
    etype = np.concatenate(
        [
            np.where(is_page, _PAGEVIEW, _PRODUCT_EVENT),
            np.full(int(view.sum()), _PAGEVIEW),
            np.full(len(b_sess), _PRODUCT_EVENT),
        ]
    ).astype(np.int8)
    action = np.concatenate(
        [step_action, np.full(int(view.sum()), _NO_ACTION), np.full(len(b_sess), _PURCHASE)]
    ).astype(np.int8)
    no_sku = cat.n_total
    sku = np.concatenate(
        [np.where(is_page, no_sku, st_ref), np.full(int(view.sum()), no_sku), b_sku]
    )
    ts = np.concatenate([st_ts, st_ts[view], st_ts[last[b_sess]] + checkout_gap[b_sess]])
    url = np.concatenate([st_ref, st_ref[view], checkout_url[b_sess]])

    events = len(sess)
    n_dup = round(config.duplicate_share * events)
    n_bad = round(config.malformed_share * events)
    copy = np.concatenate(
        [rng.choice(events, n_dup, replace=False), rng.integers(0, events, n_bad)]
    )
    sess, etype, action, sku, ts, url = (
        a[np.r_[np.arange(events), copy]] for a in (sess, etype, action, sku, ts, url)
    )
    ts_text = None
    if n_bad:
        ts_text = _corrupt(rng, events + n_dup, n_bad, n, no_sku, sess, etype, action, sku, ts)
    perm = rng.permutation(len(sess))

    ts_col = pc.cast(pa.array(ts[perm]), pa.string())
    if ts_text is not None:
        bad_mask, bad_values = ts_text
        mask = bad_mask[perm]
        ts_col = pc.replace_with_mask(ts_col, pa.array(mask), _ordered(bad_mask, bad_values, perm))
    columns = (
        _coded(sess[perm], pa.concat_arrays([session_ids, pa.array(["", "   "])])),
        _coded(etype[perm], pa.array(_ETYPES)),
        _coded(action[perm], pa.array(_ACTIONS)),
        _coded(sku[perm], pa.concat_arrays([cat.sku, pa.array([""])])),
        ts_col,
        _coded(url[perm], cat.urls),
    )
    truth = pa.table(
        {
            "session_id_hash": session_ids,
            "regime": pa.array([regime] * n),
            "purchase_probability": probability,
            "purchased": purchased,
            "product_views": n_views,
            "adds": adds,
            "removes": removes,
            "cart_size": cart_size,
            "events": np.bincount(sess[:events], minlength=n),
        }
    )
    return _Day(
        events=pa.table(dict(zip(EVENT_COLUMNS, columns, strict=True))),
        truth=truth,
        sessions=n,
        malformed=n_bad,
        duplicates=n_dup,
    )


def _ordered(bad_mask: np.ndarray, bad_values: pa.Array, perm: np.ndarray) -> pa.Array:
    """Replacement values in the order their rows appear after the shuffle."""
    rows = np.flatnonzero(bad_mask)  # bad_values[k] belongs to row rows[k]
    position = np.empty(len(bad_mask), dtype=np.int64)
    position[perm] = np.arange(len(perm))
    return bad_values.take(pa.array(np.argsort(position[rows], kind="stable")))


def _coded(codes: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), dictionary)


def _corrupt(
    rng: np.random.Generator,
    first: int,
    n_bad: int,
    n_sessions: int,
    no_sku: int,
    sess: np.ndarray,
    etype: np.ndarray,
    action: np.ndarray,
    sku: np.ndarray,
    ts: np.ndarray,
) -> tuple[np.ndarray, pa.Array]:
    """Break rows [first, first + n_bad) in place, one reject kind each, spread evenly.

    Returns the rows whose timestamp becomes non-numeric text and that text.
    """
    rows = first + np.arange(n_bad)
    kind = rng.permutation(np.arange(n_bad) % len(REJECT_REASONS))
    reason = np.array(REJECT_REASONS)[kind]
    pick = rng.integers(0, 1 << 30, n_bad)

    r = rows[reason == "missing_session_id"]
    sess[r] = n_sessions + pick[: len(r)] % 2
    r = rows[reason == "bad_event_type"]
    etype[r] = 2 + pick[: len(r)] % 3
    r = rows[reason == "timestamp_outside_day"]
    ts[r] += np.where(pick[: len(r)] % 2 == 0, -MS_PER_DAY, MS_PER_DAY)
    r = rows[reason == "bad_product_action"]
    etype[r] = _PRODUCT_EVENT
    action[r] = np.array([_NO_ACTION, 6, 7, 8])[pick[: len(r)] % 4]
    r = rows[reason == "missing_product_sku"]
    etype[r] = _PRODUCT_EVENT
    action[r] = _DETAIL
    sku[r] = no_sku
    text_rows = rows[reason == "bad_timestamp"]
    bad_mask = np.zeros(len(sess), dtype=bool)
    bad_mask[text_rows] = True
    values = pa.array(_BAD_TIMESTAMPS).take(pa.array(pick[: len(text_rows)] % len(_BAD_TIMESTAMPS)))
    return bad_mask, values


def _write_csv(table: pa.Table, path: Path) -> None:
    """Write then rename, so a rewritten day never shows a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    pacsv.write_csv(table, tmp, pacsv.WriteOptions(quoting_style="none", quoting_header="none"))
    os.replace(tmp, path)


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def transitions_table(config: GeneratorConfig, regime: str) -> pa.Table:
    """The exact next-view distribution of a regime: from_sku, to_sku, probability."""
    cat = _build_catalogue(config)
    return _transitions_table(cat, regime)


def _transitions_table(cat: _Catalogue, regime: str) -> pa.Table:
    t = cat.transitions[regime]
    return pa.table(
        {
            "from_sku": cat.sku.take(pa.array(t.src)),
            "to_sku": cat.sku.take(pa.array(t.dst)),
            "probability": t.prob,
        }
    )


_TRUTH_README = """\
Ground truth of the synthetic generator (ml/synthetic.py): the purchase probability each
session was drawn with and the exact next-view transition tables. For grading only: training,
features and models must never read this folder.
"""


def _write_day(
    out_dir: Path, day: dt.date, simulated: _Day, cat: _Catalogue, config: GeneratorConfig
) -> None:
    folder = out_dir / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(simulated.events, folder / EVENTS_FILE)
    _write_csv(cat.products[regime_of(day, config)], folder / PRODUCTS_FILE)
    if config.write_truth:
        truth = out_dir / TRUTH_DIR / day.isoformat()
        truth.mkdir(parents=True, exist_ok=True)
        _write_parquet(simulated.truth, truth / "sessions.parquet")


def generate(
    out_dir: Path,
    config: GeneratorConfig,
    progress: Callable[[str], None] | None = None,
) -> GenerateResult:
    """Write `config.days` landing days (and their truth) under `out_dir`; see the module doc."""
    began = time.perf_counter()
    out_dir = Path(out_dir)
    cat = _build_catalogue(config)
    days = [config.start + dt.timedelta(days=i) for i in range(config.days)]
    truth_dir = out_dir / TRUTH_DIR
    events = sessions = malformed = duplicates = 0
    # Writing (pyarrow, GIL released) overlaps with simulating the next day; one day in flight.
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: Future[None] | None = None
        for index, day in enumerate(days):
            simulated = _simulate_day(cat, config, index, day)
            if pending is not None:
                pending.result()
            pending = writer.submit(_write_day, out_dir, day, simulated, cat, config)
            n_rows = simulated.events.num_rows
            events += n_rows
            sessions += simulated.sessions
            malformed += simulated.malformed
            duplicates += simulated.duplicates
            if progress is not None:
                progress(f"{day.isoformat()}: {n_rows:,} events, {simulated.sessions:,} sessions")
        if pending is not None:
            pending.result()
    if config.write_truth and days:
        truth_dir.mkdir(parents=True, exist_ok=True)
        (truth_dir / "README.txt").write_text(_TRUTH_README)
        for regime in sorted({regime_of(day, config) for day in days}):
            path = truth_dir / f"transitions_{regime}.parquet"
            _write_parquet(_transitions_table(cat, regime), path)
    return GenerateResult(
        days=days,
        events=events,
        sessions=sessions,
        malformed=malformed,
        duplicates=duplicates,
        seconds=time.perf_counter() - began,
        out_dir=out_dir,
    )
