"""The replay table on a real DuckDB warehouse: days combined as one estimate over their
exposures (by hand, and unbiased over many simulated days where inverse-variance weights are
not), the gate's reading of the challenger beside the champion's logged CTR of the same days,
and an empty table before any replay ran."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from orchestration.dbt.project import build_dbt_project
from orchestration.experiments import replay
from orchestration.resources import build_resources

Z = 1.959963984540054


def _row(day: int, target: str, estimator: str, value: float, half: float, n: int) -> dict:
    return {
        "log_day": dt.date(2026, 2, day),
        "logging_version": "v1",
        "target_version": target,
        "target_role": "logging" if estimator == "logged" else "challenger",
        "estimator": estimator,
        "value": value,
        "low": value - half,
        "high": value + half,
        "ess": float(n),
        "exposures": n,
        "sessions": n // 5,
        "matched": n,
    }


def test_read_replay_combines_days_by_inverse_variance(settings):
    warehouse = build_resources(settings, build_dbt_project(settings))["warehouse"]
    assert replay.read_replay(warehouse, "v1", "v2") is None  # the table is made, empty
    rows = [
        _row(1, "v2", "dr", 0.10, 0.02, 1000),
        _row(2, "v2", "dr", 0.16, 0.04, 400),
        _row(1, "v2", "ips", 0.5, 0.1, 1000),  # another estimator: not read
        _row(1, "v9", "dr", 0.9, 0.01, 1000),  # another target: not read
        _row(1, "v1", "logged", 0.20, 0.01, 900),
        _row(2, "v1", "logged", 0.22, 0.01, 300),
        _row(3, "v1", "logged", 0.90, 0.01, 5000),  # a day the challenger was not replayed on
    ]
    frame = pd.DataFrame(rows, columns=list(replay.COLUMNS))
    days = sorted({r["log_day"] for r in rows})
    warehouse.replace_days(
        replay.TABLE, "log_day", days, frame, columns=replay.COLUMNS, schema="main"
    )
    found = replay.read_replay(warehouse, "v1", "v2")
    # by hand: weights 1000 : 400; half width sqrt(1000^2 0.02^2 + 400^2 0.04^2) / 1400
    value = (0.10 * 1000 + 0.16 * 400) / 1400
    half = math.sqrt(1000**2 * 0.02**2 + 400**2 * 0.04**2) / 1400
    assert found.estimate == pytest.approx(value)
    assert (found.low, found.high) == (pytest.approx(value - half), pytest.approx(value + half))
    assert found.champion_ctr == pytest.approx((0.20 * 900 + 0.22 * 300) / 1200)  # days 1, 2
    assert (found.exposures, found.days) == (1400, "2026-02-01 .. 2026-02-02")
    assert (found.challenger, found.champion, found.estimator) == ("v2", "v1", "dr")
    assert replay.read_replay(warehouse, "v1", "v2", "snips") is None
    assert replay.read_replay(warehouse, "v0", "v2") is None  # logged by another champion


def test_combine_days_keeps_every_day_with_a_value():
    """A day whose interval is undefined (one session) or empty (nothing matched: value 0, no
    width) still counts its exposures; only a day without a value is left out."""
    frame = pd.DataFrame(
        [
            _row(1, "v2", "dr", 0.1, 0.02, 10),
            {**_row(2, "v2", "dr", 0.4, 0, 5), "low": math.nan},
            _row(3, "v2", "dr", 0.0, 0.0, 5),
            {**_row(4, "v2", "dr", 0.0, 0.0, 50), "value": math.nan},
        ]
    )
    value, low, high, exposures = replay.combine_days(frame)
    assert (value, exposures) == (pytest.approx((0.1 * 10 + 0.4 * 5) / 20), 20)
    assert high - low == pytest.approx(2 * 10 * 0.02 / 20)
    assert math.isnan(replay.combine_days(frame.iloc[3:])[0])


def test_combining_heavy_tailed_days_is_unbiased():
    """Days of IPS-like values (a click weighs 400 with chance 1/400, clicked 30% of the time:
    mean 0.3): the combination over 10 days averages 0.3 over 400 repetitions; weighting days
    by their inverse variance, which grows with the value, would average about 0.26."""
    rng = np.random.default_rng(3)
    combined = []
    for _ in range(400):
        rows = []
        for day in range(10):
            y = 400.0 * (rng.random(3000) < 1 / 400) * (rng.random(3000) < 0.3)
            half = Z * y.std(ddof=1) / math.sqrt(len(y))
            rows.append(_row(day + 1, "v2", "ips", y.mean(), half, len(y)))
        combined.append(replay.combine_days(pd.DataFrame(rows))[0])
    se = np.std(combined, ddof=1) / math.sqrt(len(combined))
    assert abs(np.mean(combined) - 0.3) < 3 * se
