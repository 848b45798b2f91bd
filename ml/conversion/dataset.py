"""Training sets from `conversion_examples`: a time split, and which prefixes become examples.

The split is by `session_day`, never random: a training window of days, then a validation day
(thresholds are chosen there), then a test day (what models are compared on). A visit lives on
one day, so all prefixes of a session fall on the same side of every boundary.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml.conversion.features import ordered_events


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    train_days: list[dt.date]
    validation_day: dt.date
    test_day: dt.date

    @property
    def window(self) -> dict[str, str]:
        """The training window as the registry records it."""
        return {
            "train_start": self.train_days[0].isoformat(),
            "train_end": self.train_days[-1].isoformat(),
            "validation_day": self.validation_day.isoformat(),
            "test_day": self.test_day.isoformat(),
        }


def session_days(frame: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(frame["session_day"]).dt.date


def latest_complete_day(frame: pd.DataFrame) -> dt.date:
    """The latest day with both buying and non-buying sessions: the default test day."""
    days = session_days(frame)
    labels = frame.groupby(days)["will_purchase"].agg(["min", "max"])
    usable = labels[(labels["min"] == 0) & (labels["max"] == 1)].index
    if not len(usable):
        raise ValueError("no day in conversion_examples has both buying and non-buying sessions")
    return max(usable)


def time_split(frame: pd.DataFrame, train_days: int, test_day: dt.date | None = None) -> Split:
    """Train on `train_days` days ending two days before `test_day`; validate on the day before.

    Raises ValueError when a part of the split has no rows.
    """
    if train_days < 1:
        raise ValueError("train_days must be at least 1")
    test_day = test_day or latest_complete_day(frame)
    validation_day = test_day - dt.timedelta(days=1)
    window = [validation_day - dt.timedelta(days=i) for i in range(train_days, 0, -1)]
    days = session_days(frame)
    parts = {
        "train": days.isin(window),
        "validation": days == validation_day,
        "test": days == test_day,
    }
    for name, mask in parts.items():
        if not mask.any():
            raise ValueError(
                f"the {name} part of the split is empty (train {window[0]}..{window[-1]}, "
                f"validation {validation_day}, test {test_day}); days present: "
                f"{sorted(set(days))[:1]}..{sorted(set(days))[-1:]}"
            )
    return Split(
        train=ordered_events(frame[parts["train"]]),
        validation=ordered_events(frame[parts["validation"]]),
        test=ordered_events(frame[parts["test"]]),
        train_days=window,
        validation_day=validation_day,
        test_day=test_day,
    )


def select_prefixes(frame: pd.DataFrame, max_per_session: int | None, seed: int) -> np.ndarray:
    """Which prefixes of an ordered frame become examples: all, or up to `max_per_session`.

    Capping keeps long sessions from dominating training; the choice is a seeded hash of
    (session, prefix length), so it is the same on every run and independent of row order.
    """
    if max_per_session is None:
        return np.ones(len(frame), dtype=bool)
    key = pd.DataFrame(
        {"s": frame["session_key"].astype(str), "k": frame["prefix_length"].astype("int64")}
    )
    hashed = pd.util.hash_pandas_object(key, index=False, hash_key=f"skiff{seed:011d}"[:16])
    rank = (
        pd.Series(hashed.to_numpy()).groupby(frame["session_key"].to_numpy()).rank(method="first")
    )
    return (rank <= max_per_session).to_numpy()


def labels(frame: pd.DataFrame) -> np.ndarray:
    return frame["will_purchase"].astype(bool).to_numpy(dtype=np.int64)
