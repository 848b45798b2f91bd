"""Resources, chosen by one switch: SKIFF_ENV=local (DuckDB file) or prod (Snowflake).

Python assets talk to the warehouse only through `Warehouse`: replace the rows of some days in
a raw table, and run a query. dbt reaches the same warehouse through its own profile, whose
target follows the same switch (see skiff/settings.py).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd
from dagster import ConfigurableResource
from dagster_dbt import DbtProject

from orchestration.dbt.project import dbt_cli
from orchestration.sql import days_sql, text_sql
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
        columns = columns or RAW_TABLES[table]
        schema = schema or self.schema_name
        setup = [f"create schema if not exists {schema}", _ddl(schema, table, columns)]
        delete = f"delete from {schema}.{table} where {day_column} in ({days_sql(days)})"
        self._replace(setup, delete, schema, table, frame[list(columns)], columns)

    def exists(self, table: str, *, schema: str | None = None) -> bool:
        """Whether `schema.table` exists (names compared in lower case, as Snowflake keeps
        them in upper case)."""
        found = self.query(
            "select count(*) as n from information_schema.tables"
            f" where lower(table_schema) = {text_sql((schema or self.schema_name).lower())}"
            f" and lower(table_name) = {text_sql(table.lower())}"
        )
        return int(found["n"].iloc[0]) > 0

    def add_missing_columns(
        self, table: str, columns: dict[str, str], *, schema: str | None = None
    ) -> list[str]:
        """Add the `columns` an existing table lacks (one written by an older version: the rows
        already there get nulls); the names added. A missing table is left to `replace_days`,
        which creates it whole. Snowflake keeps names in upper case, DuckDB as written: compared
        in lower case."""
        schema = schema or self.schema_name
        found = self.query(
            "select lower(column_name) as name from information_schema.columns"
            f" where lower(table_schema) = {text_sql(schema.lower())}"
            f" and lower(table_name) = {text_sql(table.lower())}"
        )
        missing = {n: k for n, k in columns.items() if len(found) and n not in set(found["name"])}
        if missing:
            alters = [
                f"alter table {schema}.{table} add column {n} {k}" for n, k in missing.items()
            ]
            # DDL as setup statements (plain executes): Snowflake's connector cannot fetch a
            # frame from a DDL statement, which `query` would ask for; no row is replaced
            empty = pd.DataFrame(columns=list(columns))
            self._replace(
                alters, f"delete from {schema}.{table} where 1 = 0", schema, table, empty, columns
            )
        return list(missing)

    def _replace(
        self,
        setup: list[str],
        delete: str,
        schema: str,
        table: str,
        frame: pd.DataFrame,
        columns: dict[str, str],
    ) -> None:
        """Run `setup`; then, in one transaction, `delete` and append `frame` (its columns'
        portable SQL types in `columns`)."""
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

    def _replace(
        self,
        setup: list[str],
        delete: str,
        schema: str,
        table: str,
        frame: pd.DataFrame,
        columns: dict[str, str],
    ) -> None:
        names = ", ".join(frame.columns)
        with self._connect() as con:
            for sql in setup:
                con.execute(sql)
            con.execute("begin transaction")
            con.execute(delete)
            if len(frame):
                con.register("incoming", frame)
                con.execute(f"insert into {schema}.{table} ({names}) select {names} from incoming")
                con.unregister("incoming")
            con.execute("commit")

    def query(self, sql: str) -> pd.DataFrame:
        with self._connect() as con:
            return con.execute(sql).fetchdf()


class SnowflakeWarehouse(Warehouse):
    """Production: Snowflake through dagster-snowflake's `SnowflakeResource`.

    Credentials come only from the environment (see .env.example) and are never logged:
    a password or a key pair (`SNOWFLAKE_PRIVATE_KEY_PATH`). `host`/`port`/`protocol` are for a
    stand-in on this machine (fakesnow in the tests). Loads use `write_pandas` (stage + COPY,
    the fast path) or, with `load_method="insert"`, batched INSERTs: slower, but they need no
    stage, which the stand-in lacks.
    """

    account: str
    user: str
    password: str | None = None
    private_key_path: str | None = None
    role: str
    warehouse: str
    database: str
    host: str | None = None
    port: int | None = None
    protocol: str | None = None
    load_method: str = "write_pandas"

    @property
    def kind(self) -> str:
        return "snowflake"

    def _resource(self):
        from dagster_snowflake import SnowflakeResource

        endpoint = {"host": self.host, "port": self.port, "protocol": self.protocol}
        return SnowflakeResource(
            account=self.account,
            user=self.user,
            password=self.password,
            private_key_path=self.private_key_path,
            role=self.role,
            warehouse=self.warehouse,
            database=self.database,
            schema=self.schema_name,
            additional_snowflake_connection_args={k: v for k, v in endpoint.items() if v},
        )

    def _replace(
        self,
        setup: list[str],
        delete: str,
        schema: str,
        table: str,
        frame: pd.DataFrame,
        columns: dict[str, str],
    ) -> None:
        with self._resource().get_connection() as con:
            cur = con.cursor()
            for sql in setup:
                cur.execute(sql)
            cur.execute("begin")
            cur.execute(delete)
            if len(frame):
                self._load(con, schema, table, frame, columns)
            cur.execute("commit")

    def _load(
        self, con, schema: str, table: str, frame: pd.DataFrame, columns: dict[str, str]
    ) -> None:
        if self.load_method == "write_pandas":
            from snowflake.connector.pandas_tools import write_pandas

            dates = [name for name, kind in columns.items() if kind == "date"]
            frame = frame.assign(**{name: _bindable(frame[name], "date") for name in dates})
            write_pandas(con, frame.rename(columns=str.upper), table.upper(), schema=schema.upper())
            return
        names = ", ".join(frame.columns)
        marks = ", ".join(["%s"] * len(frame.columns))
        rows = zip(*(_bindable(frame[name], columns[name]) for name in frame.columns), strict=True)
        batch: list[tuple] = []
        for row in rows:
            batch.append(row)
            if len(batch) == 10_000:
                con.cursor().executemany(
                    f"insert into {schema}.{table} ({names}) values ({marks})", batch
                )
                batch = []
        if batch:
            con.cursor().executemany(
                f"insert into {schema}.{table} ({names}) values ({marks})", batch
            )

    def query(self, sql: str) -> pd.DataFrame:
        with self._resource().get_connection() as con:
            cursor = con.cursor().execute(sql)
            return _like_duckdb(cursor.fetch_pandas_all(), cursor.description)


def _bindable(values: pd.Series, kind: str) -> list:
    """A column as the Python values the Snowflake connector binds: `datetime.date` for a date
    column (whether the frame holds dates, datetime64 or ISO text), `datetime.datetime` for a
    timestamp column (it cannot bind pandas' Timestamp), None for every kind of null."""
    if kind == "date":
        return [None if pd.isna(v) else v.date() for v in pd.to_datetime(values)]
    if kind.startswith("timestamp"):
        return [None if pd.isna(v) else v.to_pydatetime() for v in pd.to_datetime(values)]
    return [None if pd.isna(v) else v for v in values.astype(object)]


def _like_duckdb(frame: pd.DataFrame, description: Sequence[Any]) -> pd.DataFrame:
    """`fetch_pandas_all`'s frame with the names and dtypes DuckDB's `fetchdf` gives for the
    same columns, so Python assets see one kind of frame whatever the warehouse.

    The connector returns upper-case names, DATE as `datetime.date` objects, whole NUMBER
    columns with nulls as float64, NUMBER with a scale as `Decimal` objects and BOOLEAN with
    nulls as objects; DuckDB gives lower-case names, datetime64, nullable integers, float64 and
    nullable booleans.
    """
    from snowflake.connector.constants import FIELD_ID_TO_NAME

    columns = []
    for position, meta in enumerate(description):
        values = frame.iloc[:, position]
        kind = FIELD_ID_TO_NAME[meta.type_code]
        if kind == "DATE" or (kind.startswith("TIMESTAMP") and values.dtype == object):
            values = pd.to_datetime(values)
        elif kind == "FIXED" and meta.scale:
            values = values.astype("float64")
        elif kind == "FIXED" and not pd.api.types.is_integer_dtype(values.dtype):
            values = values.astype("Int64")
        elif kind == "BOOLEAN" and values.dtype == object:
            values = values.astype("boolean")
        columns.append(values.rename(meta.name.lower()))
    if not columns:
        return frame.rename(columns=str.lower)
    return pd.concat(columns, axis=1)


def build_warehouse(settings: Settings) -> Warehouse:
    if settings.env == "local":
        return DuckDBWarehouse(
            path=str(settings.warehouse_path),
            schema_name=settings.raw_schema,
            models_schema=settings.models_schema,
        )
    env = os.environ
    return SnowflakeWarehouse(
        account=env["SNOWFLAKE_ACCOUNT"],
        user=env["SNOWFLAKE_USER"],
        password=env.get("SNOWFLAKE_PASSWORD") or None,
        private_key_path=env.get("SNOWFLAKE_PRIVATE_KEY_PATH") or None,
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
