"""Shopper behaviour for one day: session shape, product views as a Markov chain, carts, plain
pages, the steps' order and times, and who purchases."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from ml.contract import MS_PER_DAY, day_bounds_ms
from ml.synthetic.catalogue import Catalogue
from ml.synthetic.sampling import cdf, count, draw

# Session shape (pageview-only share ~2/3, ~7 events per session, ~70% pageviews)
_P_PRODUCT_SESSION = 0.34
_BROWSE_PAGES = (0.68, 1.05)  # 1 + floor(lognormal(mu, sigma))
_PRODUCT_PAGES = (0.30, 0.9)  # floor(lognormal(mu, sigma))
_VIEWS = (1.00, 1.0)  # 1 + floor(lognormal(mu, sigma))
_MAX_PAGES = 300
MAX_VIEWS = 150
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
_DRIFT_LOGIT = -0.7

STEP_PAGE, STEP_VIEW, STEP_ADD, STEP_REMOVE, STEP_CLICK = range(5)


@dataclass(frozen=True)
class Shape:
    """Per session: does it look at products, how many plain pages and product views."""

    product: np.ndarray
    n_pages: np.ndarray
    n_views: np.ndarray


@dataclass(frozen=True)
class Views:
    """One row per product view: its session, position in the session, product, a click."""

    sess: np.ndarray
    pos: np.ndarray
    items: np.ndarray
    clicked: np.ndarray


@dataclass(frozen=True)
class Cart:
    """Adds and removes (session, sku, order key), and what is left in the cart."""

    add_sess: np.ndarray
    add_sku: np.ndarray
    add_key: np.ndarray
    remove_sess: np.ndarray
    remove_sku: np.ndarray
    remove_key: np.ndarray
    sess: np.ndarray
    sku: np.ndarray


@dataclass(frozen=True)
class Steps:
    """Every step of every session, in session order, with its timestamp."""

    sess: np.ndarray
    kind: np.ndarray
    ref: np.ndarray  # a URL index for pages, a product index otherwise
    start: np.ndarray  # per session: first step
    count: np.ndarray  # per session: number of steps
    elapsed: np.ndarray  # ms since the session's first step
    ts: np.ndarray  # epoch ms
    checkout_gap: np.ndarray  # per session: last step to checkout, ms

    @property
    def last(self) -> np.ndarray:
        return self.start + self.count - 1


@dataclass(frozen=True)
class Conversion:
    probability: np.ndarray
    purchased: np.ndarray
    adds: np.ndarray
    removes: np.ndarray
    cart_size: np.ndarray
    buy_sess: np.ndarray  # one row per purchased sku
    buy_sku: np.ndarray
    buy_url: np.ndarray


def session_shape(rng: np.random.Generator, n: int) -> Shape:
    product = rng.random(n) < _P_PRODUCT_SESSION
    browse_pages = 1 + count(rng, _BROWSE_PAGES, n, _MAX_PAGES - 1)
    product_pages = count(rng, _PRODUCT_PAGES, n, _MAX_PAGES)
    n_pages = np.where(product, product_pages, browse_pages)
    n_views = np.where(product, 1 + count(rng, _VIEWS, n, MAX_VIEWS - 1), 0)
    return Shape(product=product, n_pages=n_pages, n_views=n_views)


def product_views(
    rng: np.random.Generator, cat: Catalogue, regime: str, n_views: np.ndarray
) -> Views:
    """A Markov chain per session, advanced one step for all sessions at once."""
    table = cat.transitions[regime]
    view_start = np.cumsum(n_views) - n_views
    v_sess = np.repeat(np.arange(len(n_views)), n_views)
    v_pos = np.arange(len(v_sess)) - view_start[v_sess]
    items = np.empty(len(v_sess), dtype=np.int64)
    by_length = np.argsort(-n_views, kind="stable")
    neg_length = -n_views[by_length]
    active = np.searchsorted(neg_length, 0, side="left")
    first = view_start[by_length[:active]]
    items[first] = draw(cat.entry_cdf[regime], rng.random(active))
    for t in range(1, int(n_views.max(initial=0))):
        active = np.searchsorted(neg_length, -t, side="left")
        at = view_start[by_length[:active]] + t
        items[at] = table.sample(items[at - 1], rng.random(active))
    clicked = rng.random(len(items)) < _P_CLICK
    return Views(sess=v_sess, pos=v_pos, items=items, clicked=clicked)


def carts(rng: np.random.Generator, cat: Catalogue, shape: Shape, views: Views) -> Cart:
    """Some product sessions add a few distinct viewed positions, some remove one again."""
    n, n_views, v_sess = len(shape.product), shape.n_views, views.sess
    view_start = np.cumsum(n_views) - n_views
    adder = shape.product & (rng.random(n) < _P_ADD_SESSION)
    wanted = rng.geometric(_ADD_GEOMETRIC_P, n)
    order = np.lexsort((rng.random(len(views.items)), v_sess))
    rank = np.empty(len(views.items), dtype=np.int64)
    rank[order] = np.arange(len(views.items)) - view_start[v_sess[order]]
    added = adder[v_sess] & (rank < wanted[v_sess])
    a_sess, a_sku, a_key = v_sess[added], views.items[added], views.pos[added] + 0.5
    remover = rng.random(n) < _P_REMOVE
    removed = (rank[added] == 0) & remover[a_sess]
    r_sess, r_sku = a_sess[removed], a_sku[removed]
    r_key = a_key[removed] + 0.1
    r_key += rng.random(len(r_sess)) * (n_views[r_sess] + 0.2 - r_key)
    cart = np.setdiff1d(
        np.unique(a_sess * cat.n_total + a_sku), r_sess * cat.n_total + r_sku, assume_unique=False
    )
    return Cart(
        add_sess=a_sess,
        add_sku=a_sku,
        add_key=a_key,
        remove_sess=r_sess,
        remove_sku=r_sku,
        remove_key=r_key,
        sess=cart // cat.n_total,
        sku=cart % cat.n_total,
    )


def steps(
    rng: np.random.Generator, cat: Catalogue, shape: Shape, views: Views, cart: Cart, day: dt.date
) -> Steps:
    """Plain pages interleaved with the views, the cart steps and clicks; then their times."""
    n = len(shape.product)
    p_sess = np.repeat(np.arange(n), shape.n_pages)
    u = rng.random(len(p_sess))
    p_key = np.where(shape.product[p_sess], u * (shape.n_views[p_sess] + 1) - 1, u)
    p_url = cat.n_total + draw(cat.page_cdf, rng.random(len(p_sess)))

    clicked = views.clicked
    st_sess = np.concatenate(
        [p_sess, views.sess, cart.add_sess, cart.remove_sess, views.sess[clicked]]
    )
    st_key = np.concatenate(
        [p_key, views.pos, cart.add_key, cart.remove_key, views.pos[clicked] - 0.3]
    )
    st_kind = np.concatenate(
        [
            np.full(len(p_sess), STEP_PAGE),
            np.full(len(views.sess), STEP_VIEW),
            np.full(len(cart.add_sess), STEP_ADD),
            np.full(len(cart.remove_sess), STEP_REMOVE),
            np.full(int(clicked.sum()), STEP_CLICK),
        ]
    ).astype(np.int8)
    st_ref = np.concatenate(
        [p_url, views.items, cart.add_sku, cart.remove_sku, views.items[clicked]]
    )
    order = np.argsort(st_sess * float(MAX_VIEWS + 4) + (st_key + 1.0), kind="stable")
    st_sess, st_kind, st_ref = st_sess[order], st_kind[order], st_ref[order]
    n_steps = np.bincount(st_sess, minlength=n)
    step_start = np.cumsum(n_steps) - n_steps
    elapsed, ts, checkout_gap = _times(rng, st_sess, step_start, n_steps, day)
    return Steps(
        sess=st_sess,
        kind=st_kind,
        ref=st_ref,
        start=step_start,
        count=n_steps,
        elapsed=elapsed,
        ts=ts,
        checkout_gap=checkout_gap,
    )


def _times(
    rng: np.random.Generator,
    st_sess: np.ndarray,
    step_start: np.ndarray,
    n_steps: np.ndarray,
    day: dt.date,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log-normal gaps around a per-session dwell, kept under 30 minutes and inside the day.

    Returns elapsed ms per step, epoch ms per step and the checkout gap per session.
    """
    n = len(n_steps)
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
    hour = draw(cdf(_HOURLY), rng.random(n))
    offset = hour * 3_600_000 + rng.integers(0, 3_600_000, n)
    offset = np.minimum(offset, MS_PER_DAY - 1 - duration)
    ts = day_bounds_ms(day)[0] + offset[st_sess] + elapsed
    return elapsed, ts, checkout_gap


def conversion(
    rng: np.random.Generator, cat: Catalogue, regime: str, st: Steps, cart: Cart
) -> Conversion:
    """A session with a non-empty cart purchases with the package docstring's probability."""
    n = len(st.count)
    adds = np.bincount(cart.add_sess, minlength=n)
    removes = np.bincount(cart.remove_sess, minlength=n)
    cart_size = np.bincount(cart.sess, minlength=n)
    mean_gap_s = st.elapsed[st.last] / np.maximum(st.count - 1, 1) / 1000
    dwell = np.where(st.count > 1, np.log(np.maximum(mean_gap_s, 1.0) / _DWELL_MEDIAN_S), 0.0)
    safe = np.maximum(cart_size, 1)
    category = np.bincount(cart.sess, cat.category_effect[cat.top[cart.sku]], n) / safe
    price = np.bincount(cart.sess, cat.price[cart.sku].astype(np.float64), n) / safe
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
    buy = purchased[cart.sess]
    checkout_url = cat.n_total + cat.n_pages + rng.integers(0, cat.n_checkout, n)
    b_sess = cart.sess[buy]
    return Conversion(
        probability=probability,
        purchased=purchased,
        adds=adds,
        removes=removes,
        cart_size=cart_size,
        buy_sess=b_sess,
        buy_sku=cart.sku[buy],
        buy_url=checkout_url[b_sess],
    )
