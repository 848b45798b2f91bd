"""The embedded warehouse's read copy, refreshed after every successful run.

DuckDB lets one process write its file or many read it, never both, so a notebook or BI tool
that keeps a connection to `warehouse.duckdb` open makes the next run wait and then fail.
`warehouse_read_copy` copies the warehouse to `warehouse.read.duckdb` after each successful
run of this code location (`DuckDBWarehouse.publish_read_copy`): point long-lived readers at the
copy, and runs never wait for them. It runs in the Dagster daemon (`skiff ui`, `dagster dev`,
or `dagster-daemon`), so the copy is as fresh as the last successful run seen by a daemon
tick; the local deployment only (Snowflake has no such lock).
"""

from __future__ import annotations

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunStatusSensorContext,
    SkipReason,
    run_status_sensor,
)

from orchestration.warehouse import Warehouse
from orchestration.warehouse_duckdb import DuckDBWarehouse


def read_copy_sensors(warehouse: Warehouse) -> list:
    """The read-copy sensor for a DuckDB warehouse; none for Snowflake."""
    return [build_read_copy_sensor(warehouse)] if isinstance(warehouse, DuckDBWarehouse) else []


def build_read_copy_sensor(warehouse: DuckDBWarehouse):
    @run_status_sensor(
        run_status=DagsterRunStatus.SUCCESS,
        name="warehouse_read_copy",
        default_status=DefaultSensorStatus.RUNNING,
        description="After each successful run: copy the DuckDB warehouse to "
        "warehouse.read.duckdb, which notebooks and BI tools may hold open without blocking a "
        "run (the warehouse itself allows one writing process or many readers, never both).",
    )
    def warehouse_read_copy(context: RunStatusSensorContext):
        copy = warehouse.publish_read_copy()
        if copy is None:
            return SkipReason(f"no warehouse at {warehouse.path} yet")
        context.log.info(f"read copy {copy} after run {context.dagster_run.run_id}")
        return None

    return warehouse_read_copy
