"""The production warehouse path against a Snowflake stand-in: fakesnow's server on 127.0.0.1
speaks the Snowflake protocol over DuckDB. The same landing days go through ingestion and the
dbt marts once on the local DuckDB and once with SKIFF_ENV=prod (the dbt `snowflake` target,
the Snowflake warehouse resource); every table must hold the same rows.

What this proves: the prod switch, the Snowflake connection settings, the Snowflake dispatch
macros and the SQL compile and run through the Snowflake connector and dbt-snowflake, with the
same results. What it does not: fakesnow is DuckDB underneath, so Snowflake's own SQL semantics,
performance, stages (write_pandas) and permissions are not tested here."""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from pathlib import Path

import pytest

from ml.synthetic import GeneratorConfig, generate
from orchestration.assets.dbt import build_dbt_project, dbt_cli
from orchestration.resources import build_warehouse
from skiff.cli import SUMMARY_TABLES, run_days
from skiff.settings import Settings, ensure_home, load_settings
from tests.servers import free_port, running, wait_for_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DAYS = [dt.date(2026, 1, 5), dt.date(2026, 1, 6)]


def _counts(settings: Settings) -> dict[str, int]:
    warehouse = build_warehouse(settings)
    counts = {}
    for layer, table in SUMMARY_TABLES:
        schema = settings.raw_schema if layer == "raw" else settings.models_schema
        frame = warehouse.query(f"select count(*) as n from {schema}.{table}")
        counts[table] = int(frame.iloc[0]["n"])
    return counts


@pytest.fixture
def fakesnow_port(tmp_path: Path):
    port = free_port()
    argv = [str(Path(sys.executable).parent / "fakesnow"), "-s", "-p", str(port)]
    with running(argv, tmp_path / "fakesnow.log"):
        wait_for_port(port)
        yield port


def test_same_rows_on_duckdb_and_on_the_snowflake_standin(
    settings, fakesnow_port, tmp_path, monkeypatch
):
    config = GeneratorConfig(
        days=len(DAYS), sessions_per_day=80, seed=9, start=DAYS[0], n_products=200
    )
    generate(settings.landing, config)
    assert run_days(settings, DAYS[0], DAYS[-1])
    local = _counts(settings)

    prod_home = tmp_path / "prod"
    for name, value in {
        "SKIFF_ENV": "prod",
        "SKIFF_HOME": str(prod_home),
        "SNOWFLAKE_ACCOUNT": "standin",
        "SNOWFLAKE_USER": "skiff",
        "SNOWFLAKE_PASSWORD": "not-a-secret",
        "SNOWFLAKE_ROLE": "transformer",
        "SNOWFLAKE_WAREHOUSE": "transforming",
        "SNOWFLAKE_DATABASE": "skiff",
        "SNOWFLAKE_SCHEMA": "analytics",
        "SNOWFLAKE_HOST": "127.0.0.1",
        "SNOWFLAKE_PORT": str(fakesnow_port),
        "SNOWFLAKE_PROTOCOL": "http",
        "SKIFF_SNOWFLAKE_LOAD": "insert",  # fakesnow has no stages for write_pandas
    }.items():
        monkeypatch.setenv(name, value)
    prod = ensure_home(load_settings())
    assert (prod.env, prod.dbt_target, prod.models_schema) == ("prod", "snowflake", "analytics")
    shutil.copytree(settings.landing, prod.landing, dirs_exist_ok=True)
    warehouse = build_warehouse(prod)
    with warehouse._resource().get_connection() as con:  # a real account has its database
        con.cursor().execute("create database if not exists skiff")

    assert run_days(prod, DAYS[0], DAYS[-1])
    assert _counts(prod) == local
    assert min(local.values()) > 0

    # every model, test and macro compiles for the Snowflake target
    compiled = dbt_cli(build_dbt_project(prod)).cli(["compile"], raise_on_error=False).wait()
    assert compiled.is_successful()
