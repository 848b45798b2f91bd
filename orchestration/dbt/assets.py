"""The dbt project as Dagster assets: staging -> intermediate -> marts, tests as asset checks.

Two assets. `skiff_dbt_models`: the browsing data's models, daily-partitioned like the raw
tables. `experiment_dbt_models`: the serving log's models (dbt tag `experiments`),
unpartitioned tables rebuilt from the whole raw log, run by the hourly rollout loop apart from
the nightly run; the daily asset excludes them.

The daily models are partitioned by day. A run passes its day range to dbt in the environment
(SKIFF_DBT_START_DAY, SKIFF_DBT_END_DAY; read only when models execute, see
macros/partitions.sql), not as `--vars`: a change of vars makes dbt parse the whole project
again, every run. The incremental models rebuild those days, so the nightly run costs one day
and a backfill of many days is one dbt invocation. Session-grain models
(session_day, the day a visit starts) also rebuild the visits of the day before the range that
the range's first day can continue (its sessions active in its last 30 minutes), which it
completes: the step records that day as materialized again, now final.
"""

import datetime as dt
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetRecordsFilter,
    AssetsDefinition,
    BackfillPolicy,
    MetadataValue,
    TimeWindowPartitionsDefinition,
)
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    DbtProject,
    dbt_assets,
)

from orchestration.dbt.inprocess import dbt_in_process
from orchestration.dbt.project import dbt_invocation, ensure_manifest, keep_partial_parse
from orchestration.partitions import partition_days
from orchestration.policy import RETRIES, WAREHOUSE_POOL
from skiff.settings import load_settings

# The run's day range, as dbt's partition macros read it (macros/partitions.sql).
START_DAY_VARIABLE = "SKIFF_DBT_START_DAY"
END_DAY_VARIABLE = "SKIFF_DBT_END_DAY"
# Partitioned by session_day: a run rewrites the day before its range too.
SESSION_GROUPS = ("intermediate", "marts")
EXPERIMENT_MODELS = "tag:experiments"


class SkiffDbtTranslator(DagsterDbtTranslator):
    """Sources keep the asset keys of the Python assets that write them: the `dagster:
    asset_key` of the source's meta when it has one (one asset writes several tables), else the
    table's name. Groups follow the dbt folders."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            meta = dbt_resource_props.get("source_meta", {}).get("dagster", {})
            return AssetKey(meta.get("asset_key") or dbt_resource_props["name"])
        return super().get_asset_key(dbt_resource_props)

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        fqn = dbt_resource_props.get("fqn", [])
        # fqn = [project, folder, ..., model]: the folder is the layer
        return fqn[1] if len(fqn) > 2 else "dbt"


# The serving log's tables are all written by one asset, so their sources share its key.
TRANSLATOR = SkiffDbtTranslator(
    settings=DagsterDbtTranslatorSettings(enable_duplicate_source_asset_keys=True)
)


def build_dbt_assets(
    project: DbtProject, partitions_def: TimeWindowPartitionsDefinition
) -> AssetsDefinition:
    manifest = ensure_manifest(project)

    @dbt_assets(
        manifest=manifest,
        project=project,
        dagster_dbt_translator=TRANSLATOR,
        exclude=EXPERIMENT_MODELS,
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        pool=WAREHOUSE_POOL,
        retry_policy=RETRIES,
        name="skiff_dbt_models",
    )
    def skiff_dbt_models(context: AssetExecutionContext, dbt: DbtCliResource) -> Iterator:
        days = partition_days(context)
        env = {START_DAY_VARIABLE: days[0].isoformat(), END_DAY_VARIABLE: days[-1].isoformat()}
        context.log.info(f"dbt build for {days[0]} .. {days[-1]}")
        # Unit tests check SQL logic, not data: they run in CI (tests/test_dbt_project.py), not
        # in every partition run.
        args = ["build", "--exclude-resource-type", "unit_test"]
        label = f"{days[0]} .. {days[-1]}" if len(days) > 1 else str(days[0])
        for event in _build(dbt, context, args, env):
            yield _dated(event, label) if isinstance(event, AssetCheckResult) else event
        yield from completed_days(context, partitions_def, days[0] - dt.timedelta(days=1))

    return skiff_dbt_models


def build_experiment_dbt_assets(project: DbtProject) -> AssetsDefinition:
    """experiment_exposures and experiment_sessions (and their staging views), downstream of
    the `serving_log` asset; unpartitioned: each run rebuilds them from every log day loaded."""

    @dbt_assets(
        manifest=ensure_manifest(project),
        project=project,
        dagster_dbt_translator=TRANSLATOR,
        select=EXPERIMENT_MODELS,
        pool=WAREHOUSE_POOL,
        retry_policy=RETRIES,
        name="experiment_dbt_models",
    )
    def experiment_dbt_models(context: AssetExecutionContext, dbt: DbtCliResource) -> Iterator:
        yield from _build(dbt, context, ["build", "--exclude-resource-type", "unit_test"], {})

    return experiment_dbt_models


def _dated(result: AssetCheckResult, days: str) -> AssetCheckResult:
    """A dbt test's result saying which days it judged (in its description and its `days`
    metadata): a run may cover a range, so the result cannot be one partition's."""
    said = f"{days}: {result.description}" if result.description else f"{days}: dbt test"
    return AssetCheckResult(
        passed=result.passed,
        asset_key=result.asset_key,
        check_name=result.check_name,
        metadata={**result.metadata, "days": MetadataValue.text(days)},
        severity=result.severity,
        description=said,
    )


def _build(
    dbt: DbtCliResource, context: AssetExecutionContext, args: list[str], env: dict[str, str]
) -> Iterator:
    target, environment = dbt_invocation(dbt.project_dir, env)
    settings = load_settings()  # the environment's, as every step's
    yield from dbt_in_process(
        dbt,
        # no manifest.json and run_results.json (about 0.1 s of a nightly build): the step has the
        # manifest, the results arrive as events, and a failure's story is in dbt.log
        [*args, "--no-write-json"],
        context=context,
        target_path=target,
        env=environment,
        translator=TRANSLATOR,
        warehouse=settings.warehouse_path if settings.dbt_target == "duckdb" else None,
    )
    # Each invocation writes its own target folder; once it succeeded, its events are in
    # Dagster, its parse state is kept for the next run, and the folder is only disk (kept on
    # failure, for debugging).
    keep_partial_parse(target)
    shutil.rmtree(target, ignore_errors=True)


def completed_days(
    context: AssetExecutionContext, partitions_def: TimeWindowPartitionsDefinition, day: dt.date
) -> Iterator[AssetMaterialization]:
    """The session day before the run's range, its late visits rewritten by this run and final
    now that its next day is in: a materialization of each session-grain model for it that had
    one before (none before the first partition). A day never built holds those late visits
    only, so it stays missing until its own run builds it whole."""
    if day < partitions_def.start.date():
        return
    for spec in context.assets_def.specs:
        if spec.group_name not in SESSION_GROUPS or spec.key not in context.selected_asset_keys:
            continue
        built = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=spec.key, asset_partitions=[day.isoformat()]), limit=1
        ).records
        if built:
            yield AssetMaterialization(
                asset_key=spec.key,
                partition=day.isoformat(),
                description=f"Session day {day}: its late visits rebuilt with its next day's "
                "events: final.",
                metadata={"session_day": day.isoformat(), "final": True},
            )
