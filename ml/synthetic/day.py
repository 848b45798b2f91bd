"""One simulated day: the shoppers' behaviour, its rows, and the day's answer key."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ml.synthetic import shoppers
from ml.synthetic.catalogue import Catalogue
from ml.synthetic.config import GeneratorConfig, regime_of, rng_for
from ml.synthetic.rows import dirty_events, event_rows
from ml.synthetic.sampling import hex_strings


@dataclass(frozen=True)
class Day:
    events: pa.Table
    truth: pa.Table
    sessions: int
    malformed: int
    duplicates: int


def simulate_day(cat: Catalogue, config: GeneratorConfig, index: int, day: dt.date) -> Day:
    # One RNG per day, drawn from in this order; moving a step changes every byte after it.
    rng = rng_for(config.seed, 1, index)
    regime = regime_of(day, config)
    n = int(config.sessions_per_day)
    session_ids = hex_strings(rng, n)
    shape = shoppers.session_shape(rng, n)
    views = shoppers.product_views(rng, cat, regime, shape.n_views)
    cart = shoppers.carts(rng, cat, shape, views)
    steps = shoppers.steps(rng, cat, shape, views, cart, day)
    conversion = shoppers.conversion(rng, cat, regime, steps, cart)
    rows = event_rows(steps, conversion, cat.n_total)
    events, n_dup, n_bad = dirty_events(rng, rows, config, session_ids, cat)
    truth = pa.table(
        {
            "session_id_hash": session_ids,
            "regime": pa.array([regime] * n),
            "purchase_probability": conversion.probability,
            "purchased": conversion.purchased,
            "product_views": shape.n_views,
            "adds": conversion.adds,
            "removes": conversion.removes,
            "cart_size": conversion.cart_size,
            "events": np.bincount(rows.sess, minlength=n),
        }
    )
    return Day(events=events, truth=truth, sessions=n, malformed=n_bad, duplicates=n_dup)
