"""The dbt project and the dbt command line Dagster runs it with; its manifest, parsed once."""

import fcntl
import sys
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject

from skiff.settings import DBT_PROJECT_DIR, Settings


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


# dbt's own output: runs write and remove folders there while other processes look for sources
_NOT_SOURCES = {"target", "logs", "dbt_packages"}


def _dbt_sources_newer_than(manifest: Path) -> bool:
    tops = [p for p in DBT_PROJECT_DIR.iterdir() if p.name not in _NOT_SOURCES]
    files = [f for top in tops for f in ([top] if top.is_file() else top.rglob("*"))]
    newest = max((f.stat().st_mtime for f in files if f.suffix in {".sql", ".yml"}), default=0.0)
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
