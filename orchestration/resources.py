"""Resources, chosen by one switch: SKIFF_ENV=local (DuckDB file) or prod (Snowflake).

Python assets talk to the warehouse only through `Warehouse` (orchestration/warehouse.py):
replace the rows of some days in a raw table, and run a query. `build_warehouse` picks its
implementation, `DuckDBWarehouse` (orchestration/warehouse_duckdb.py) or `SnowflakeWarehouse`
(orchestration/warehouse_snowflake.py); their names are re-exported here. dbt reaches the same
warehouse through its own profile, whose target follows the same switch (see
skiff/settings.py).
"""

from __future__ import annotations

import os
from typing import Any

from dagster import EnvVar
from dagster_dbt import DbtProject

from orchestration.dbt.project import dbt_cli
from orchestration.warehouse import RAW_TABLES, Warehouse
from orchestration.warehouse_duckdb import (
    DEFAULT_LOCK_TIMEOUT_S,
    LOCK_TIMEOUT_VARIABLE,
    DuckDBWarehouse,
    WarehouseLockTimeout,
    lock_timeout_s,
)
from orchestration.warehouse_snowflake import SNOWFLAKE_SECRETS, SnowflakeWarehouse
from skiff.settings import Settings

__all__ = [
    "DEFAULT_LOCK_TIMEOUT_S",
    "LOCK_TIMEOUT_VARIABLE",
    "RAW_TABLES",
    "SNOWFLAKE_SECRETS",
    "DuckDBWarehouse",
    "SnowflakeWarehouse",
    "Warehouse",
    "WarehouseLockTimeout",
    "build_resources",
    "build_warehouse",
    "lock_timeout_s",
]


def build_warehouse(settings: Settings) -> Warehouse:
    if settings.env == "local":
        return DuckDBWarehouse(
            path=str(settings.warehouse_path),
            lock_timeout_s=lock_timeout_s(),
            schema_name=settings.raw_schema,
            models_schema=settings.models_schema,
        )
    env = os.environ
    # only the configured secrets: an EnvVar cannot stand for "not set" (None)
    secrets = {name: EnvVar(name) if env.get(name) else None for name in SNOWFLAKE_SECRETS}
    return SnowflakeWarehouse(
        account=env["SNOWFLAKE_ACCOUNT"],
        user=env["SNOWFLAKE_USER"],
        password=secrets["SNOWFLAKE_PASSWORD"],
        private_key_path=secrets["SNOWFLAKE_PRIVATE_KEY_PATH"],
        role=env["SNOWFLAKE_ROLE"],
        warehouse=env["SNOWFLAKE_WAREHOUSE"],
        database=env["SNOWFLAKE_DATABASE"],
        host=env.get("SNOWFLAKE_HOST") or None,
        port=int(env["SNOWFLAKE_PORT"]) if env.get("SNOWFLAKE_PORT") else None,
        protocol=env.get("SNOWFLAKE_PROTOCOL") or None,
        load_method=env.get("SKIFF_SNOWFLAKE_LOAD", "write_pandas"),
        schema_name=settings.raw_schema,
        models_schema=settings.models_schema,
    )


def build_resources(settings: Settings, dbt_project: DbtProject) -> dict[str, Any]:
    return {
        "warehouse": build_warehouse(settings),
        "dbt": dbt_cli(dbt_project),
    }
