"""Resources, chosen by one switch: SKIFF_ENV=local (DuckDB file) or prod (Snowflake).

Python assets talk to the warehouse only through `Warehouse`: replace the rows of some days in
a raw table, and run a query. dbt reaches the same warehouse through its own profile, whose
target follows the same switch (see skiff/settings.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pandas as pd
from dagster import ConfigurableResource
from dagster_dbt import DbtProject

from orchestration.assets.dbt import dbt_cli
from skiff.settings import Settings

# Raw tables written by the ingestion assets. Types are portable (DuckDB and Snowflake).
RAW_TABLES: dict[str, dict[str, str]] = {
    "raw_browsing_events": {
        "session_id_hash": "varchar",
        "event_type": "varchar",
        "product_action": "varchar",
        "product_sku_hash": "varchar",
        "server_timestamp_epoch_ms": "bigint",
        "hashed_url": "varchar",
        "event_day": "date",
    },
    "raw_browsing_events_rejected": {
        "row_number": "bigint",
        "session_id_hash": "varchar",
        "event_type": "varchar",
        "product_action": "varchar",
        "product_sku_hash": "varchar",
        "server_timestamp_epoch_ms": "varchar",
        "hashed_url": "varchar",
        "reason": "varchar",
        "event_day": "date",
    },
    "raw_products": {
        "product_sku_hash": "varchar",
        "category_hash": "varchar",
        "price_bucket": "integer",
        "description_vector": "varchar",
        "image_vector": "varchar",
        "snapshot_day": "date",
    },
    "raw_products_rejected": {
        "row_number": "bigint",
        "product_sku_hash": "varchar",
        "category_hash": "varchar",
        "price_bucket": "varchar",
        "description_vector": "varchar",
        "image_vector": "varchar",
        "reason": "varchar",
        "snapshot_day": "date",
    },
}


def _ddl(schema: str, table: str, columns: dict[str, str]) -> str:
    spec = ", ".join(f"{name} {kind}" for name, kind in columns.items())
    return f"create table if not exists {schema}.{table} ({spec})"


def _days_sql(days: Sequence[dt.date]) -> str:
    """A SQL list of date literals; dates are typed, so nothing can be injected."""
    return ", ".join(f"cast('{day.isoformat()}' as date)" for day in days) or "null"


class Warehouse(ConfigurableResource):
    """What Python assets need from a warehouse. Implementations below."""

    schema_name: str = "raw"
    # where dbt builds its models (and where Python assets write their own tables)
    models_schema: str = "main"

    def replace_days(
        self,
        table: str,
        day_column: str,
        days: Sequence[dt.date],
        frame: pd.DataFrame,
        *,
        columns: dict[str, str] | None = None,
        schema: str | None = None,
    ) -> None:
        """Atomically delete the rows of `days` from `schema.table` and insert `frame` instead.

        The table is created when missing, with `columns` ({name: portable SQL type}; default
        the raw table's, see RAW_TABLES). `schema` defaults to the raw schema.
        """
        raise NotImplementedError

    def query(self, sql: str) -> pd.DataFrame:
        """Run portable SQL (no bind parameters: their syntax differs between warehouses)."""
        raise NotImplementedError

    @property
    def kind(self) -> str:
        raise NotImplementedError


class DuckDBWarehouse(Warehouse):
    """The embedded default: one DuckDB file under SKIFF_HOME.

    A connection lives only as long as one call, because DuckDB locks the file per process:
    a connection held between steps would block dbt and every other run.
    """

    path: str

    @property
    def kind(self) -> str:
        return "duckdb"

    def _connect(self):
        import duckdb

        return duckdb.connect(self.path)

    def replace_days(
        self,
        table: str,
        day_column: str,
        days: Sequence[dt.date],
        frame: pd.DataFrame,
        *,
        columns: dict[str, str] | None = None,
        schema: str | None = None,
    ) -> None:
        columns = columns or RAW_TABLES[table]
        schema = schema or self.schema_name
        names = ", ".join(columns)
        with self._connect() as con:
            con.execute(f"create schema if not exists {schema}")
            con.execute(_ddl(schema, table, columns))
            con.execute("begin transaction")
            con.execute(f"delete from {schema}.{table} where {day_column} in ({_days_sql(days)})")
            if len(frame):
                con.register("incoming", frame[list(columns)])
                con.execute(f"insert into {schema}.{table} ({names}) select {names} from incoming")
                con.unregister("incoming")
            con.execute("commit")

    def query(self, sql: str) -> pd.DataFrame:
        with self._connect() as con:
            return con.execute(sql).fetchdf()


class SnowflakeWarehouse(Warehouse):
    """Production: Snowflake through dagster-snowflake's connection settings.

    Credentials come only from the environment (see .env.example). Not exercised by the tests
    yet: the Snowflake stand-in test belongs to the production-path work.
    """

    account: str
    user: str
    password: str
    role: str
    warehouse: str
    database: str

    @property
    def kind(self) -> str:
        return "snowflake"

    def _resource(self):
        from dagster_snowflake import SnowflakeResource

        return SnowflakeResource(
            account=self.account,
            user=self.user,
            password=self.password,
            role=self.role,
            warehouse=self.warehouse,
            database=self.database,
            schema=self.schema_name,
        )

    def replace_days(
        self,
        table: str,
        day_column: str,
        days: Sequence[dt.date],
        frame: pd.DataFrame,
        *,
        columns: dict[str, str] | None = None,
        schema: str | None = None,
    ) -> None:
        from snowflake.connector.pandas_tools import write_pandas

        columns = columns or RAW_TABLES[table]
        schema = schema or self.schema_name
        with self._resource().get_connection() as con:
            cur = con.cursor()
            cur.execute(f"create schema if not exists {schema}")
            cur.execute(_ddl(schema, table, columns))
            cur.execute("begin")
            cur.execute(f"delete from {schema}.{table} where {day_column} in ({_days_sql(days)})")
            if len(frame):
                upper = frame[list(columns)].rename(columns=str.upper)
                write_pandas(con, upper, table.upper(), schema=schema.upper())
            cur.execute("commit")

    def query(self, sql: str) -> pd.DataFrame:
        with self._resource().get_connection() as con:
            frame = con.cursor().execute(sql).fetch_pandas_all()
        return frame.rename(columns=str.lower)


def build_warehouse(settings: Settings) -> Warehouse:
    if settings.env == "local":
        return DuckDBWarehouse(
            path=str(settings.warehouse_path),
            schema_name=settings.raw_schema,
            models_schema=settings.models_schema,
        )
    import os

    return SnowflakeWarehouse(
        account=os.environ["SNOWFLAKE_ACCOUNT"],
        user=os.environ["SNOWFLAKE_USER"],
        password=os.environ["SNOWFLAKE_PASSWORD"],
        role=os.environ["SNOWFLAKE_ROLE"],
        warehouse=os.environ["SNOWFLAKE_WAREHOUSE"],
        database=os.environ["SNOWFLAKE_DATABASE"],
        schema_name=settings.raw_schema,
        models_schema=settings.models_schema,
    )


def build_resources(settings: Settings, dbt_project: DbtProject) -> dict[str, Any]:
    return {
        "warehouse": build_warehouse(settings),
        "dbt": dbt_cli(dbt_project),
    }
