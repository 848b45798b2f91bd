"""The warehouse interface Python assets use, and the raw tables they write.

`Warehouse` replaces the rows of some days in a table (from a frame, or from a relation on
its staging connection, where ingestion checks rows) and runs a query; its implementations
are `DuckDBWarehouse` (orchestration/warehouse_duckdb.py, the local default) and
`SnowflakeWarehouse` (orchestration/warehouse_snowflake.py, production).
`orchestration/resources.py` picks one by SKIFF_ENV.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Sequence

import duckdb
import pandas as pd
import pyarrow as pa
from dagster import ConfigurableResource

from orchestration.sql import days_sql, text_sql

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


def _ddl(schema: str, table: str, columns: dict[str, str], *, kind: str = "table") -> str:
    spec = ", ".join(f"{name} {type_}" for name, type_ in columns.items())
    return f"create {kind} if not exists {schema}.{table} ({spec})"


def _setup(schema: str, table: str, columns: dict[str, str]) -> list[str]:
    """The statements that make `schema.table` where it is missing."""
    return [f"create schema if not exists {schema}", _ddl(schema, table, columns)]


def _delete(schema: str, table: str, day_column: str, days: Sequence[dt.date]) -> str:
    return f"delete from {schema}.{table} where {day_column} in ({days_sql(days)})"


class Warehouse(ConfigurableResource):
    """What Python assets need from a warehouse. Implementations: `DuckDBWarehouse`,
    `SnowflakeWarehouse`."""

    schema_name: str = "raw"
    # where dbt builds its models (and where Python assets write their own tables)
    models_schema: str = "main"

    def replace_days(
        self,
        table: str,
        day_column: str,
        days: Sequence[dt.date],
        frame: pd.DataFrame | pa.Table,
        *,
        columns: dict[str, str] | None = None,
        schema: str | None = None,
    ) -> None:
        """Atomically delete the rows of `days` from `schema.table` and insert `frame` instead
        (a pandas frame, or an Arrow table, which DuckDB loads without a conversion).

        The table is created when missing, with `columns` ({name: portable SQL type}; default
        the raw table's, see RAW_TABLES). `schema` defaults to the raw schema.
        """
        columns = columns or RAW_TABLES[table]
        schema = schema or self.schema_name
        setup, delete = _setup(schema, table, columns), _delete(schema, table, day_column, days)
        names = list(columns)
        frame = frame.select(names) if isinstance(frame, pa.Table) else frame[names]
        self._replace(setup, delete, schema, table, frame, columns)

    @contextlib.contextmanager
    def staging(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection to check rows on before `replace_days_from` loads them: here an
        in-memory database, whose relations reach the warehouse as Arrow; `DuckDBWarehouse`
        gives its own file's connection, so rows go from a file to the table inside DuckDB."""
        con = duckdb.connect()
        try:
            yield con
        finally:
            con.close()

    def replace_days_from(
        self,
        con: duckdb.DuckDBPyConnection,
        table: str,
        day_column: str,
        days: Sequence[dt.date],
        relation: str,
        *,
        columns: dict[str, str] | None = None,
        schema: str | None = None,
    ) -> None:
        """`replace_days` with the rows of `relation` (a table, view or parenthesized query on
        `con`, a `staging` connection of this warehouse), in the order it gives them."""
        columns = columns or RAW_TABLES[table]
        schema = schema or self.schema_name
        setup, delete = _setup(schema, table, columns), _delete(schema, table, day_column, days)
        self._replace_from(con, setup, delete, schema, table, relation, columns)

    def _replace_from(
        self,
        con: duckdb.DuckDBPyConnection,
        setup: list[str],
        delete: str,
        schema: str,
        table: str,
        relation: str,
        columns: dict[str, str],
    ) -> None:
        """`_replace` with the rows of `relation` on the staging connection `con`: here
        fetched in Arrow."""
        rows = con.sql(f"select {', '.join(columns)} from {relation}").to_arrow_table()
        self._replace(setup, delete, schema, table, rows, columns)

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
        frame: pd.DataFrame | pa.Table,
        columns: dict[str, str],
    ) -> None:
        """Run `setup`; then, in one transaction, `delete` and append `frame` (its columns, in
        this order, are `columns`' names, with their portable SQL types)."""
        raise NotImplementedError

    def query(self, sql: str) -> pd.DataFrame:
        """Run portable SQL (no bind parameters: their syntax differs between warehouses)."""
        raise NotImplementedError

    @property
    def kind(self) -> str:
        raise NotImplementedError
