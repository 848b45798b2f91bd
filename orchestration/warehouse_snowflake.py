"""The production warehouse: `SnowflakeWarehouse`, through dagster-snowflake.

Holds the staging-table day replacement, the secrets kept as `EnvVar` names until a connection
opens (`SNOWFLAKE_SECRETS`), the conversion of values the connector binds (`_bindable`), and
of the frames it returns into DuckDB's (`_like_duckdb`).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
from dagster import EnvVar
from pydantic import Field

from orchestration.warehouse import Warehouse, _ddl
from skiff.settings import ConfigError

# Environment variables holding Snowflake secrets: the resource keeps their names (EnvVar),
# resolved only when a connection opens, so the Dagster UI shows the name, never the value.
SNOWFLAKE_SECRETS = ("SNOWFLAKE_PASSWORD", "SNOWFLAKE_PRIVATE_KEY_PATH")
_SECRET = {"dagster__is_secret": True}


class SnowflakeWarehouse(Warehouse):
    """Production: Snowflake through dagster-snowflake's `SnowflakeResource`.

    Credentials come only from the environment (see .env.example) and are never logged: a
    password or a key pair (`SNOWFLAKE_PRIVATE_KEY_PATH`). `build_warehouse` sets the
    configured one as a Dagster `EnvVar`, so the UI's resource view shows the variable's name;
    its value is read when a connection opens (`_secret`), in a run or outside one.
    `host`/`port`/`protocol` are for a stand-in on this machine (fakesnow in the tests).

    Day replacement is atomic: the frame is loaded first into a transient staging table
    (`<table>__load_<8 hex>`, one per call, with the target's column types), with
    `write_pandas` (stage + COPY, the fast path) or, with `load_method="insert"`, batched
    INSERTs (slower, no stage). Only then, in one transaction, the days' rows are deleted and
    the staging rows inserted: the stage and file-format DDL that `write_pandas` issues (and
    that would commit an open transaction) all run before it, so a failed load leaves the
    previous rows in place. The staging table is dropped after, whether the load worked or not.
    """

    account: str
    user: str
    # also marked secret, so a plain value given by hand is masked in the UI too
    password: str | None = Field(default=None, json_schema_extra=_SECRET)
    private_key_path: str | None = Field(default=None, json_schema_extra=_SECRET)
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
            password=_secret(self.password),
            private_key_path=_secret(self.private_key_path),
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
        frame: pd.DataFrame | pa.Table,
        columns: dict[str, str],
    ) -> None:
        if isinstance(frame, pa.Table):  # the connector loads pandas frames; nulls stay nulls
            nullable = {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}
            frame = frame.to_pandas(types_mapper=nullable.get)
        staging = f"{table}__load_{uuid.uuid4().hex[:8]}"
        names = ", ".join(frame.columns)
        with self._resource().get_connection() as con:
            cur = con.cursor()
            for sql in setup:
                cur.execute(sql)
            if len(frame):
                kinds = {name: columns[name] for name in frame.columns}
                cur.execute(_ddl(schema, staging, kinds, kind="transient table"))
            try:
                if len(frame):
                    self._load(con, schema, staging, frame, columns)
                cur.execute("begin")
                cur.execute(delete)
                if len(frame):
                    cur.execute(
                        f"insert into {schema}.{table} ({names})"
                        f" select {names} from {schema}.{staging}"
                    )
                cur.execute("commit")
            except BaseException:
                # before the drop below, which (DDL) would commit the delete; a no-op when the
                # load failed before `begin`. Its own error must not hide the load's.
                with contextlib.suppress(Exception):
                    cur.execute("rollback")
                if len(frame):
                    with contextlib.suppress(Exception):
                        cur.execute(f"drop table if exists {schema}.{staging}")
                raise
            if len(frame):
                cur.execute(f"drop table if exists {schema}.{staging}")

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


def _secret(value: str | None) -> str | None:
    """A secret field's value: an `EnvVar` read from the environment now (Dagster resolves it
    only when it initializes the resource for a run; `build_warehouse(...)` used directly, as
    the command line does, holds the `EnvVar` itself), else the value as given."""
    if isinstance(value, EnvVar):
        resolved = value.get_value()
        if not resolved:
            raise ConfigError(f"{value.env_var_name} is not set")
        return resolved
    return value


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
