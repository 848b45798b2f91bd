"""Running the code location's jobs from this process on the persistent instance.

Used by the command line, the demo, the benchmarks and the tests alike. A run is created as the
UI creates one: with the origin of the `skiff` code location in workspace.yaml, so the UI lists
it under its job, on the Overview timeline and in the asset's history, and re-executes it
through the code location like any run launched there. It executes here, with the job's own
executor (SKIFF_EXECUTOR: in process by default, or one process per step), from a job rebuilt
by `job_for` from the environment's settings wherever a step runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field, replace

from dagster import (
    AssetCheckSeverity,
    DagsterInstance,
    JobDefinition,
    RunRequest,
    build_reconstructable_job,
)

# Dagster's private API, the one place (tests/test_architecture.py PRIVATE_DAGSTER): no public
# call executes a run of a code location from Python with the origin the UI needs.
from dagster._core.execution.api import execute_run
from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.workspace.load import location_origins_from_yaml_paths

from orchestration.definitions import DAILY_REFRESH, build_definitions
from orchestration.monitoring.sensors import RUN_KEY_TAG
from orchestration.partitions import partition_range_tags
from orchestration.resources import build_warehouse
from skiff.settings import REPO_ROOT, ConfigError, Settings, load_settings

# With the run key, the tag the sensor daemon puts on a run it launches: the sensor sees the run
# key as done on its next tick, and the UI lists the run under the sensor.
SENSOR_NAME_TAG = "dagster/sensor_name"
PARTITION_TAG = "dagster/partition"
WORKSPACE = REPO_ROOT / "workspace.yaml"
REPOSITORY = "__repository__"  # the name Dagster gives the one repository of a `Definitions`


def fingerprint(settings: Settings) -> str:
    """The settings the environment gives, without the first partition: that one follows the
    landing folder (an earlier day landed during a run moves it), and `job_for` takes the
    launcher's."""
    fixed = replace(settings, partitions_start=dt.date.min, partitions_start_source="")
    return hashlib.sha256(repr(fixed).encode()).hexdigest()[:16]


def job_for(job_name: str, settings_fingerprint: str, partitions_start: str) -> JobDefinition:
    """The code location's job built from the environment's settings: how a run's job is rebuilt
    in this process and in every step process of the multiprocess executor, with the
    launcher's first partition. The fingerprint keeps Dagster's cache of rebuilt jobs apart per
    settings and refuses a step process whose environment differs from the launcher's."""
    settings = load_settings()
    if fingerprint(settings) != settings_fingerprint:
        raise ConfigError(
            f"job {job_name}: this process's SKIFF_* settings differ from the ones the run was "
            "launched with; a run's steps must see the launcher's environment"
        )
    start = dt.date.fromisoformat(partitions_start)
    if start != settings.partitions_start:
        settings = replace(settings, partitions_start=start)
    return build_definitions(settings).resolve_job_def(job_name)


def job_origin(job_name: str) -> RemoteJobOrigin:
    """The job's origin in the workspace the UI loads (workspace.yaml's one code location)."""
    (location,) = location_origins_from_yaml_paths([str(WORKSPACE)])
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, REPOSITORY), job_name)


@dataclass
class RunReport:
    """What one in-process run did: its step failures, each landing day's counts, its checks."""

    steps_ok: bool
    failures: list[str] = field(default_factory=list)
    # (asset, day) -> {"loaded", "quarantined", "rows_in_files"}
    landing: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    # (asset, check, passed, severity) of every check evaluated
    checks: list[tuple[str, str, bool, str]] = field(default_factory=list)
    # (asset, partition or None) of every materialization, in order
    materialized: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def failed_errors(self) -> list[tuple[str, str]]:
        return [(a, c) for a, c, ok, sev in self.checks if not ok and sev == "ERROR"]

    @property
    def ok(self) -> bool:
        """No step failed and no ERROR-severity check failed (a failed WARN check is only told)."""
        return self.steps_ok and not self.failed_errors

    def lines(self) -> list[str]:
        out = [
            f"{asset} {day}: loaded {n['loaded']:,}, quarantined {n['quarantined']:,}"
            f" (rows in files {n['rows_in_files']:,})"
            for (asset, day), n in sorted(self.landing.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        ]
        out += [
            f"check {asset}:{check} {'warned' if severity == 'WARN' else 'FAILED'}"
            for asset, check, passed, severity in self.checks
            if not passed
        ]
        return out + self.failures


def run_job_report(
    settings: Settings,
    job_name: str,
    first: dt.date | None = None,
    last: dt.date | None = None,
    ops: dict | None = None,
    tags: dict[str, str] | None = None,
    partition: dt.date | None = None,
) -> RunReport:
    """Run one of the code location's jobs from this process on the persistent instance, as a
    run of the `skiff` code location (see the module docstring), for days [first, last] in one
    run when the job is partitioned, or for one `partition`. `settings` must be the
    environment's: every step rebuilds the job from the environment."""
    current = load_settings()  # what each step rebuilds the job from
    if settings.home != current.home:
        raise ConfigError(
            f"a run rebuilds its job from the environment's settings: SKIFF_HOME is "
            f"{current.home}, not the {settings.home} passed"
        )
    for day in (first, partition):
        if day is not None and day < current.partitions_start:
            # refused before the run starts, so nothing is written for any day of it
            where = {
                "SKIFF_PARTITIONS_START": "SKIFF_PARTITIONS_START",
                "landing": f"the earliest landing day in {current.landing}",
            }.get(current.partitions_start_source, "the default")
            raise ConfigError(
                f"{day} is before the first partition {current.partitions_start} ({where}); "
                "set SKIFF_PARTITIONS_START to that day or earlier"
            )
    recon = build_reconstructable_job(
        "orchestration.runs",
        "job_for",
        reconstructable_args=(
            job_name,
            fingerprint(current),
            current.partitions_start.isoformat(),
        ),
        reconstructor_working_directory=str(REPO_ROOT),
    )
    job = recon.get_definition()
    tags = dict(tags or {})
    if first is not None:
        tags |= partition_range_tags(first, last or first)
    if partition is not None:
        tags[PARTITION_TAG] = partition.isoformat()
    # progress at INFO (a line per day, dbt node, epoch); DEBUG stays in the UI's logs
    run_config = {
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
        **({"ops": ops} if ops else {}),
    }
    with DagsterInstance.get() as instance:
        run = instance.create_run_for_job(
            job_def=job,
            run_config=run_config,
            tags=tags,
            remote_job_origin=job_origin(job_name),
            job_code_origin=recon.get_python_origin(),
        )
        result = execute_run(recon, run, instance, raise_on_error=False)
    report = RunReport(steps_ok=result.success)
    for event in result.get_step_failure_events():
        report.failures.append(
            f"step {event.step_key} failed: {event.step_failure_data.error.message}"
        )
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        asset = materialization.asset_key.to_user_string()
        report.materialized.append((asset, materialization.partition))
        by_day = materialization.metadata.get("rows_by_day")
        for day, counts in (by_day.value if by_day else {}).items():
            report.landing[(asset, day)] = counts
    for evaluation in result.get_asset_check_evaluations():
        severity = evaluation.severity or AssetCheckSeverity.ERROR
        report.checks.append(
            (
                evaluation.asset_key.to_user_string(),
                evaluation.check_name,
                evaluation.passed,
                severity.value,
            )
        )
    return report


def run_job(
    settings: Settings,
    job_name: str,
    first: dt.date | None = None,
    last: dt.date | None = None,
    ops: dict | None = None,
    tags: dict[str, str] | None = None,
    partition: dt.date | None = None,
) -> bool:
    """`run_job_report`, printing the step failures; True when no step failed."""
    report = run_job_report(settings, job_name, first, last, ops, tags, partition)
    for line in report.failures:
        print(line)
    return report.steps_ok


def run_days(settings: Settings, first: dt.date, last: dt.date) -> bool:
    """Materialize landing days [first, last] through the marts in one run."""
    return run_job(settings, DAILY_REFRESH, first, last)


def run_days_report(settings: Settings, first: dt.date, last: dt.date) -> RunReport:
    """`run_days`, with what the run did (see RunReport) for the command line to print."""
    return run_job_report(settings, DAILY_REFRESH, first, last)


def run_requested(settings: Settings, request: RunRequest, sensor_name: str) -> bool:
    """Run what a sensor requested, in process, tagged as the sensor daemon tags its launches."""
    return run_job(
        settings,
        request.job_name,
        ops=request.run_config["ops"],
        tags={**request.tags, SENSOR_NAME_TAG: sensor_name, RUN_KEY_TAG: request.run_key},
    )


SUMMARY_TABLES = (
    ("raw", "raw_browsing_events"),
    ("raw", "raw_browsing_events_rejected"),
    ("raw", "raw_products"),
    ("main", "stg_browsing_events"),
    ("main", "int_events_sessionized"),
    ("main", "sessions"),
    ("main", "conversion_examples"),
    ("main", "session_sequences"),
)


def summarize(settings: Settings) -> str:
    """Rows per table, sessions and conversion rate, read back from the warehouse."""
    warehouse = build_warehouse(settings)
    lines = [f"{'table':<32}{'rows':>12}"]
    for schema, table in SUMMARY_TABLES:
        schema = settings.raw_schema if schema == "raw" else settings.models_schema
        count = warehouse.query(f"select count(*) as n from {schema}.{table}").iloc[0]["n"]
        lines.append(f"{schema + '.' + table:<32}{int(count):>12,}")
    stats = warehouse.query(
        "select count(*) as sessions, avg(case when purchased then 1.0 else 0.0 end) as rate,"
        f" count(distinct session_day) as days from {settings.models_schema}.sessions"
    ).iloc[0]
    lines.append(
        f"\n{int(stats['sessions']):,} sessions over {int(stats['days'])} days; "
        f"conversion rate {float(stats['rate'] or 0):.2%}"
    )
    return "\n".join(lines)
