"""The Skiff code location: `dagster dev` (via workspace.yaml) loads `defs` from here.

Everything is assembled in `build_definitions`, from settings read once from the environment,
so tests can build the same graph on a temporary SKIFF_HOME.
"""

from __future__ import annotations

from dagster import (
    AssetSelection,
    DailyPartitionsDefinition,
    Definitions,
    define_asset_job,
    definitions,
    in_process_executor,
    multiprocess_executor,
)

from orchestration.assets.dbt import build_dbt_assets, build_dbt_project
from orchestration.assets.ingestion import build_ingestion_assets
from orchestration.resources import build_resources
from skiff.settings import Settings, ensure_home, load_settings

DAILY_REFRESH = "daily_refresh"


def build_definitions(settings: Settings) -> Definitions:
    partitions = DailyPartitionsDefinition(
        start_date=settings.partitions_start.isoformat(), timezone="UTC"
    )
    project = build_dbt_project(settings)
    kind = "duckdb" if settings.env == "local" else "snowflake"
    assets = [
        *build_ingestion_assets(partitions, settings.landing, kind),
        build_dbt_assets(project, partitions),
    ]
    daily_refresh = define_asset_job(
        DAILY_REFRESH,
        selection=AssetSelection.all(),
        partitions_def=partitions,
        description="One day (or a range, in a single run) end to end: landing files -> raw "
        "tables -> dbt staging, intermediate and marts, with all checks.",
    )
    return Definitions(
        assets=assets,
        jobs=[daily_refresh],
        resources=build_resources(settings, project),
        # Local: one process, steps in order; DuckDB has a single writer, and the in-process
        # executor spares each step the cost of re-importing the definitions.
        executor=in_process_executor if settings.env == "local" else multiprocess_executor,
    )


@definitions
def defs() -> Definitions:
    """Built when Dagster loads the code location, not when this module is imported."""
    return build_definitions(ensure_home(load_settings()))
