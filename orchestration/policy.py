"""Policy that holds across domains, decided here once.

- Retries: every step retries twice, 1 then 2 minutes later (a warehouse that was briefly
  unreachable, a lock), whichever job or UI launch runs it. Failures known to be permanent (no
  landing folder, no champion, an empty mart) raise `Failure(allow_retries=False)` and stop.
- The `warehouse` pool: steps that read or write the warehouse queue in one pool, whose limit
  the instance sets (one at a time for DuckDB, which has a single writer).
- Kinds: Python assets stored as warehouse tables show the warehouse's kind, which follows
  SKIFF_ENV (dbt's models get theirs from dagster-dbt).
- Freshness: the marts and the daily predictions are expected every day. A nightly run of day
  D materializes the marts of D (provisional: visits after midnight not yet seen) and of D - 1
  (final, see orchestration/partitions.py), so a healthy pipeline materializes them every 24
  hours and the windows below hold; a day's final marts are at most one nightly run late.

Pool and retries belong to a step's op, fixed when it is decorated: domains use `asset`,
`warehouse_asset` and `WAREHOUSE_STEP` from here. Spec attributes are applied by `apply`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from functools import partial

from dagster import AssetSpec, Backoff, FreshnessPolicy, RetryPolicy, map_asset_specs
from dagster import asset as dagster_asset

RETRIES = RetryPolicy(max_retries=2, delay=60, backoff=Backoff.EXPONENTIAL)
WAREHOUSE_POOL = "warehouse"
STEP = {"retry_policy": RETRIES}
WAREHOUSE_STEP = {**STEP, "pool": WAREHOUSE_POOL, "required_resource_keys": {"warehouse"}}

asset = partial(dagster_asset, **STEP)
warehouse_asset = partial(dagster_asset, **WAREHOUSE_STEP)

WAREHOUSE_TABLES = (
    "raw_browsing_events",
    "raw_browsing_events_rejected",
    "raw_products",
    "raw_products_rejected",
    "conversion_predictions",
    "serving_log",
)
# The nightly run lands every 24 hours: an hour late is a warning, six hours an error.
DAILY_FRESHNESS = FreshnessPolicy.time_window(
    fail_window=dt.timedelta(hours=30), warn_window=dt.timedelta(hours=25)
)
FRESH_GROUPS = ("marts",)
FRESH_ASSETS = ("conversion_predictions",)


def warehouse_kind(env: str) -> str:
    return "duckdb" if env == "local" else "snowflake"


def apply(assets: Sequence, env: str) -> list:
    """The assets with the spec-level policy applied: warehouse kinds and freshness."""

    def policy(spec: AssetSpec) -> AssetSpec:
        name = spec.key.to_user_string()
        if name in WAREHOUSE_TABLES:
            spec = spec.merge_attributes(kinds={warehouse_kind(env)})
        if spec.group_name in FRESH_GROUPS or name in FRESH_ASSETS:
            spec = spec.replace_attributes(freshness_policy=DAILY_FRESHNESS)
        return spec

    return map_asset_specs(policy, assets)
