"""The no-leakage gate's evidence: sampled sessions' features recomputed from the sessionized
events in the warehouse, cut strictly before the first purchase."""

from typing import Any

import pandas as pd


def sample_sessions(every: pd.DataFrame, n_sessions: int) -> list[str]:
    """`n_sessions` session keys, half of them buyers, chosen by a stable hash."""
    sessions = every.groupby("session_key")["will_purchase"].first().reset_index()
    sessions["h"] = pd.util.hash_pandas_object(sessions["session_key"], index=False).to_numpy()
    sessions = sessions.sort_values("h")
    half = max(n_sessions // 2, 1)
    return pd.concat(
        [
            sessions[sessions["will_purchase"]].head(half),
            sessions[~sessions["will_purchase"]].head(n_sessions - half),
        ]
    )["session_key"].tolist()


def sessionized_events_sql(schema: str, keys: list[str]) -> str:
    quoted = ", ".join("'" + key.replace("'", "''") + "'" for key in keys)
    return (
        "select session_key, event_index, event_type, product_action, product_sku, event_at,"
        f" category, price_bucket from {schema}.int_events_sessionized"
        f" where session_key in ({quoted}) order by session_key, event_index"
    )


def leakage(
    warehouse: Any, frames: dict[str, pd.DataFrame], n_sessions: int
) -> tuple[bool, str, int]:
    """Recompute sampled sessions' features from raw events cut before the purchase."""
    from ml.conversion import features, gates

    every = pd.concat(frames.values(), ignore_index=True)
    chosen = sample_sessions(every, n_sessions)
    raw = warehouse.query(sessionized_events_sql(warehouse.models_schema, chosen))
    rows, index = [], []
    for key, events in raw.groupby("session_key", sort=True):
        kept = features.before_first_purchase(events.to_dict("records"))
        for k in range(1, len(kept) + 1):
            rows.append(features.prefix_features(kept[:k]))
            index.append((key, k))
    recomputed = pd.DataFrame(
        rows, index=pd.MultiIndex.from_tuples(index, names=["session_key", "prefix_length"])
    )
    sample = features.ordered_events(every[every["session_key"].isin(chosen)])
    training = features.batch_features(sample)
    training.index = pd.MultiIndex.from_frame(sample[["session_key", "prefix_length"]])
    passed, reason = gates.no_leakage(training, recomputed)
    return passed, reason, len(chosen)
