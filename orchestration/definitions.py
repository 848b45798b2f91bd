"""The Skiff code location: `dagster dev` (via workspace.yaml) loads `defs` from here.

`build_definitions` assembles the domains (one package each), applies the policy of
`orchestration/policy.py`, and defines the jobs that cut across them. Settings are read once
from the environment, so tests can build the same graph on a temporary SKIFF_HOME.
"""

from __future__ import annotations

from dagster import (
    AssetSelection,
    Definitions,
    define_asset_job,
    definitions,
    in_process_executor,
    multiprocess_executor,
)

from orchestration import policy
from orchestration.automation import build_failure_sensor, build_nightly_schedule
from orchestration.conversion.assets import build_conversion_assets
from orchestration.dbt.assets import build_dbt_assets, build_experiment_dbt_assets
from orchestration.dbt.checks import build_dbt_summary_checks
from orchestration.dbt.project import build_dbt_project
from orchestration.experiments.assets import build_experiment_assets
from orchestration.experiments.log import build_serving_log_asset, serving_log_partitions
from orchestration.experiments.sensors import build_release_schedule
from orchestration.handoff import HandoffIOManager
from orchestration.ingestion.assets import build_ingestion_assets
from orchestration.ingestion.sensors import build_landing_sensor
from orchestration.monitoring.assets import build_monitoring_assets
from orchestration.monitoring.sensors import RETRAIN_JOBS, build_drift_sensor
from orchestration.partitions import daily_partitions
from orchestration.read_copy import read_copy_sensors
from orchestration.recommendation.assets import build_recommendation_assets
from orchestration.recommendation.offline_online import GROUP as OFFLINE_ONLINE_GROUP
from orchestration.recommendation.offline_online import build_offline_online_asset
from orchestration.resources import build_resources
from skiff.settings import Settings, ensure_home, load_settings

DAILY_REFRESH = "daily_refresh"
TRAIN_MODELS = "train_models"
SCORE_DAYS = "score_days"
NIGHTLY = "nightly_refresh"
MONITOR_DAYS = "monitor_days"
RELEASE_LOOP = "release_loop"
OFFLINE_VS_ONLINE = "offline_vs_online"
DATA_GROUPS = ("ingestion", "staging", "intermediate", "marts")
EXECUTORS = {"in_process": in_process_executor, "multiprocess": multiprocess_executor}


def build_definitions(settings: Settings) -> Definitions:
    partitions = daily_partitions(settings)
    project = build_dbt_project(settings)
    dbt_models = build_dbt_assets(project, partitions)
    assets = policy.apply(
        [
            *build_ingestion_assets(partitions, settings.landing),
            dbt_models,
            *build_conversion_assets(settings, partitions),
            *build_recommendation_assets(settings),
            *build_monitoring_assets(settings, partitions),
            build_serving_log_asset(settings),
            build_experiment_dbt_assets(project),
            *build_experiment_assets(settings),
            build_offline_online_asset(settings),
        ],
        settings.env,
    )
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
    retrain = [
        define_asset_job(
            RETRAIN_JOBS[problem],
            selection=AssetSelection.groups(group) - scored,
            description=f"Retrain, evaluate and gate the {problem} candidates (what the drift "
            "sensor requests); the champion changes only through the gates.",
        )
        for problem, group in (("conversion", "conversion"), ("recommender", "recommendation"))
    ]
    score_days = define_asset_job(
        SCORE_DAYS,
        selection=scored,
        partitions_def=partitions,
        description="The champions' daily predictions for a day (or a range, in one run).",
    )
    monitor_days = define_asset_job(
        MONITOR_DAYS,
        selection=AssetSelection.groups("monitoring"),
        partitions_def=partitions,
        description="Monitoring of one day against the champions (a range: one run per day).",
    )
    nightly = define_asset_job(
        NIGHTLY,
        selection=data | scored | AssetSelection.groups("monitoring"),
        partitions_def=partitions,
        description="One day end to end, as the nightly schedule and the landing sensor run "
        "it: ingestion, dbt marts, the champion's predictions, monitoring.",
    )
    release_loop = define_asset_job(
        RELEASE_LOOP,
        selection=AssetSelection.groups("experiments"),
        partitions_def=serving_log_partitions(settings),
        description="One look of the rollout controllers: the server's log of a day -> raw "
        "tables -> experiment marts -> experiment_results -> each problem's rollout step.",
    )
    offline_vs_online = define_asset_job(
        OFFLINE_VS_ONLINE,
        selection=AssetSelection.groups(OFFLINE_ONLINE_GROUP),
        description="The offline-vs-online table of the latest recommender candidates on the "
        "synthetic data's world: offline metrics, replay, interleaving, A/B and the truth.",
    )
    resources = build_resources(settings, project)
    return Definitions(
        assets=assets,
        asset_checks=[build_dbt_summary_checks(dbt_models, "dbt_worst_recent_day")],
        jobs=[
            daily_refresh,
            train_models,
            score_days,
            monitor_days,
            nightly,
            release_loop,
            offline_vs_online,
            *retrain,
        ],
        schedules=[
            build_nightly_schedule(settings, nightly),
            build_release_schedule(settings, release_loop),
        ],
        sensors=[
            build_landing_sensor(settings, nightly),
            build_drift_sensor(settings, retrain),
            build_failure_sensor(settings),
            *read_copy_sensors(resources["warehouse"]),
        ],
        resources={
            **resources,
            # what a step hands to another goes through storage, keyed by run: steps in other
            # processes or pods read it, concurrent runs never collide (orchestration/handoff.py)
            "io_manager": HandoffIOManager(root=str(settings.handoff_root)),
        },
        # SKIFF_EXECUTOR; local default in_process: one process, steps in order (DuckDB has a
        # single writer, and no step pays for re-importing the definitions).
        executor=EXECUTORS[settings.executor],
    )


def _partitioned_keys(assets: list) -> list:
    return [key for a in assets if a.partitions_def is not None for key in a.keys]


@definitions
def defs() -> Definitions:
    """Built when Dagster loads the code location, not when this module is imported."""
    return build_definitions(ensure_home(load_settings()))
