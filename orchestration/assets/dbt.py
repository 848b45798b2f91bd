"""The dbt project as Dagster assets: staging -> intermediate -> marts, tests as asset checks.

The dbt models are daily-partitioned like the raw tables. A run passes its day range to dbt as
`--vars {"start_day", "end_day"}`; the incremental models rebuild exactly those days, so the
nightly run costs one day and a backfill of many days is one dbt invocation.
"""

import fcntl
import json
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    PartitionsDefinition,
)
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from orchestration.assets.ingestion import partition_days
from skiff.settings import DBT_PROJECT_DIR, Settings

# Raw tables keep the asset keys of the ingestion assets that write them.
RAW_SOURCE = "skiff_raw"


def build_dbt_project(settings: Settings) -> DbtProject:
    return DbtProject(
        project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR, target=settings.dbt_target
    )


def dbt_cli(project: DbtProject) -> DbtCliResource:
    """The venv's own dbt, so nothing depends on the venv being activated (PATH)."""
    return DbtCliResource(
        project_dir=project,
        target=project.target,
        dbt_executable=str(Path(sys.executable).parent / "dbt"),
    )


def _dbt_sources_newer_than(manifest: Path) -> bool:
    newest = max(
        (
            p.stat().st_mtime
            for p in DBT_PROJECT_DIR.rglob("*")
            if p.suffix in {".sql", ".yml"} and "target" not in p.relative_to(DBT_PROJECT_DIR).parts
        ),
        default=0.0,
    )
    return newest > manifest.stat().st_mtime


def ensure_manifest(project: DbtProject) -> Path:
    """Parse the dbt project when its manifest is missing or older than a model or yml file.

    Cheaper than `prepare_if_dev()`, which re-parses in every process `dg`/`dagster dev`
    starts (each run worker too). A file lock keeps concurrent processes from parsing at once.
    """
    manifest = project.manifest_path
    if manifest.exists() and not _dbt_sources_newer_than(manifest):
        return manifest
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest.parent / ".skiff-parse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not manifest.exists() or _dbt_sources_newer_than(manifest):
            dbt_cli(project).cli(["--quiet", "parse"], target_path=project.target_path).wait()
    return manifest


class SkiffDbtTranslator(DagsterDbtTranslator):
    """Sources map onto the ingestion assets; groups follow the dbt folders."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return AssetKey(dbt_resource_props["name"])
        return super().get_asset_key(dbt_resource_props)

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        fqn = dbt_resource_props.get("fqn", [])
        # fqn = [project, folder, ..., model]: the folder is the layer
        return fqn[1] if len(fqn) > 2 else "dbt"


def build_dbt_assets(project: DbtProject, partitions_def: PartitionsDefinition) -> AssetsDefinition:
    manifest = ensure_manifest(project)

    @dbt_assets(
        manifest=manifest,
        project=project,
        dagster_dbt_translator=SkiffDbtTranslator(),
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        pool="warehouse",
        name="skiff_dbt_models",
    )
    def skiff_dbt_models(context: AssetExecutionContext, dbt: DbtCliResource) -> Iterator:
        days = partition_days(context)
        dbt_vars = {"start_day": days[0].isoformat(), "end_day": days[-1].isoformat()}
        context.log.info(f"dbt build for {dbt_vars['start_day']} .. {dbt_vars['end_day']}")
        # Unit tests check SQL logic, not data: they run in CI (tests/test_dbt_project.py), not
        # in every partition run.
        args = ["build", "--vars", json.dumps(dbt_vars), "--exclude-resource-type", "unit_test"]
        invocation = dbt.cli(args, context=context)
        yield from invocation.stream()
        # Each invocation writes its own target folder; once it succeeded, its events are in
        # Dagster and the folder is only disk (kept on failure, for debugging).
        if invocation.is_successful():
            shutil.rmtree(invocation.target_path, ignore_errors=True)

    return skiff_dbt_models
