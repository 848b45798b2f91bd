"""What to generate, and the seeding that makes every day's bytes independent of the others."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

REGIMES = ("pre", "post")


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


def regime_of(day: dt.date, config: GeneratorConfig) -> str:
    """'post' from `drift_from` on, else 'pre'."""
    return "post" if config.drift_from is not None and day >= config.drift_from else "pre"


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """The catalogue draws from key (0,), day i from (1, i)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
