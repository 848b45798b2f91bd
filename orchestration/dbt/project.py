"""The dbt project and the dbt command line Dagster runs it with; its manifest, parsed once.

A dbt run's fixed cost is kept small here: the installed dbt-core's version is read from the
package metadata (dagster-dbt would run `dbt --version`, which asks the package index for the
latest releases: seconds, or a timeout where the index is out of reach), the partitions' runs
call dbt in the step's own process (`orchestration/dbt/inprocess.py`), and every invocation
starts from the last run's partial-parse state (`dbt_invocation`), so it re-parses only what
changed instead of the whole project.
"""

import fcntl
import importlib.metadata
import os
import sys
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject
from packaging import version

from skiff.settings import DBT_PROJECT_DIR, Settings

PARTIAL_PARSE_FILE = "partial_parse.msgpack"


def build_dbt_project(settings: Settings) -> DbtProject:
    return DbtProject(
        project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR, target=settings.dbt_target
    )


class SkiffDbtCliResource(DbtCliResource):
    """dagster-dbt's resource, with the dbt version read from the installed package (the
    executable is this venv's own dbt, `dbt_cli`, so the two cannot differ) and without the
    dbt adapter dagster-dbt loads in the step's own process before each invocation (about
    1.5 s of CPU: dbt's config and every macro), which serves only `fetch_row_counts()` and
    `fetch_column_metadata()`; no asset here asks for them, and they fail if one does."""

    @cached_property
    def _cli_version(self) -> version.Version:
        return version.parse(importlib.metadata.version("dbt-core"))

    def _initialize_dbt_core_adapter(self, args: Sequence[str]) -> None:
        return None


def dbt_cli(project: DbtProject) -> DbtCliResource:
    """The venv's own dbt, so nothing depends on the venv being activated (PATH)."""
    return SkiffDbtCliResource(
        project_dir=project,
        target=project.target,
        dbt_executable=str(Path(sys.executable).parent / "dbt"),
    )


def dbt_invocation(project_dir: str | Path, env: Mapping[str, str]) -> tuple[Path, dict]:
    """One dbt invocation's own target folder, and `env` plus the partial-parse state to start
    from, for the environment dbt runs in.

    Each invocation gets a fresh target folder (its logs and run results), where dbt would find
    no saved parse state and parse the whole project (seconds); DBT_PARTIAL_PARSE_FILE_PATH
    points it at the shared one (`<project>/target/partial_parse.msgpack`), and
    `keep_partial_parse` puts the state this invocation saved back there. The steps' profile
    is the same for every SKIFF_HOME (the DuckDB file named relative to its folder, see
    `inprocess.invoke_dbt`), so the state serves them all; one saved with another profile (a
    dbt command line's, Snowflake's) only costs a full parse, which then saves its own.
    """
    target = Path(project_dir) / "target"
    shared = target / PARTIAL_PARSE_FILE
    run_target = target / f"run-{os.getpid()}-{os.urandom(4).hex()}"
    extra = {**env, "DBT_PARTIAL_PARSE_FILE_PATH": str(shared)} if shared.exists() else dict(env)
    return run_target, extra


def keep_partial_parse(run_target: Path) -> None:
    """Move an invocation's saved parse state to the shared place (atomically: a concurrent
    dbt reads the old state or the new one, never half a file)."""
    saved = run_target / PARTIAL_PARSE_FILE
    if saved.exists():
        os.replace(saved, run_target.parent / PARTIAL_PARSE_FILE)


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
