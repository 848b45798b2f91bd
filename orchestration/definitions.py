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

from orchestration.assets.conversion import build_conversion_assets
from orchestration.assets.dbt import build_dbt_assets, build_dbt_project
from orchestration.assets.experiments import build_experiment_assets
from orchestration.assets.ingestion import build_ingestion_assets
from orchestration.assets.recommendation import build_recommendation_assets
from orchestration.resources import build_resources
from skiff.settings import Settings, ensure_home, load_settings

DAILY_REFRESH = "daily_refresh"
TRAIN_MODELS = "train_models"
SCORE_DAYS = "score_days"
DATA_GROUPS = ("ingestion", "staging", "intermediate", "marts")


def build_definitions(settings: Settings) -> Definitions:
    partitions = DailyPartitionsDefinition(
        start_date=settings.partitions_start.isoformat(), timezone="UTC"
    )
    project = build_dbt_project(settings)
    kind = "duckdb" if settings.env == "local" else "snowflake"
    assets = [
        *build_ingestion_assets(partitions, settings.landing, kind),
        build_dbt_assets(project, partitions),
        *build_conversion_assets(settings, partitions),
        *build_recommendation_assets(settings, partitions),
        *build_experiment_assets(settings),
    ]
    data = AssetSelection.groups(*DATA_GROUPS)
    models = AssetSelection.groups("conversion", "recommendation")
    daily_refresh = define_asset_job(
        DAILY_REFRESH,
        selection=data,
        partitions_def=partitions,
        description="One day (or a range, in a single run) end to end: landing files -> raw "
        "tables -> dbt staging, intermediate and marts, with all checks.",
    )
    # Partitioned model outputs (daily predictions) run per day once a champion exists.
    scored = models & AssetSelection.assets(*_partitioned_keys(assets))
    train_models = define_asset_job(
        TRAIN_MODELS,
        selection=models - scored,
        description="Train every candidate on a time split of the marts, evaluate, gate and "
        "promote the champions, publish them for the server.",
    )
    score_days = define_asset_job(
        SCORE_DAYS,
        selection=scored,
        partitions_def=partitions,
        description="The champions' daily predictions for a day (or a range, in one run).",
    )
    return Definitions(
        assets=assets,
        jobs=[daily_refresh, train_models, score_days],
        resources=build_resources(settings, project),
        # Local: one process, steps in order; DuckDB has a single writer, and the in-process
        # executor spares each step the cost of re-importing the definitions.
        executor=in_process_executor if settings.env == "local" else multiprocess_executor,
    )


def _partitioned_keys(assets: list) -> list:
    return [key for a in assets if a.partitions_def is not None for key in a.keys]


@definitions
def defs() -> Definitions:
    """Built when Dagster loads the code location, not when this module is imported."""
    return build_definitions(ensure_home(load_settings()))
