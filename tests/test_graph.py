"""The whole asset graph: that the code location loads, and three days materialized in process
on a temporary SKIFF_HOME. The graph's shape is tests/test_graph_snapshot.py; the marts'
invariants are dbt tests, which run here as asset checks and must all pass."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterInstance

from ml.synthetic import GeneratorConfig, generate
from orchestration.definitions import build_definitions
from orchestration.monitoring.grading import SUMMARY_CHECK
from orchestration.runs import run_days
from skiff.settings import REPO_ROOT

START = dt.date(2026, 1, 5)
DAYS = [START + dt.timedelta(days=i) for i in range(3)]
DBT_GROUPS = ("staging", "intermediate", "marts")


def test_code_location_loads(settings):
    """What `dagster dev` does first: load workspace.yaml's code location, in a new process."""
    done = subprocess.run(
        [
            str(os.path.join(os.path.dirname(sys.executable), "dagster")),
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=REPO_ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _check_evaluations(settings) -> list:
    """The asset check evaluations of the latest run on the persistent instance."""
    with DagsterInstance.get() as instance:
        (run,) = instance.get_runs(limit=1)
        entries = instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    return [entry.asset_check_evaluation for entry in entries]


def _materializations(instance: DagsterInstance, key: str, day: dt.date) -> list:
    """The materializations of `key`'s partition `day`."""
    return instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(key), asset_partitions=[str(day)]), limit=1
    ).records


def _sql(settings, query: str) -> pd.DataFrame:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(query).fetchdf()


def _one(settings, query: str):
    return _sql(settings, query).iloc[0, 0]


@pytest.mark.slow
def test_three_days_end_to_end(settings):
    result = generate(
        settings.landing, GeneratorConfig(days=3, sessions_per_day=300, seed=11, start=START)
    )
    # The middle day first: of the day before, never built, it writes the late visits only,
    # so Dagster records no materialization of that day (it stays missing until it is built).
    assert run_days(settings, DAYS[1], DAYS[1])
    with DagsterInstance.get() as instance:
        for key in ("int_events_sessionized", "sessions", "conversion_examples"):
            assert not _materializations(instance, key, DAYS[0]), f"{key} {DAYS[0]} recorded"
            assert _materializations(instance, key, DAYS[1]), key
    assert run_days(settings, DAYS[0], DAYS[-1])
    # a successful dbt invocation leaves no target folder behind (named by its run's id; other
    # test workers' runs may have theirs there right now)
    with DagsterInstance.get() as instance:
        (run,) = instance.get_run_records(limit=1)
    left = (REPO_ROOT / "dbt_project" / "target").glob(f"*-{run.dagster_run.run_id[:7]}-*")
    assert not list(left)

    # nothing lost: raw rows + quarantine = rows written by the generator
    raw = _one(settings, "select count(*) from raw.raw_browsing_events")
    rejected = _one(settings, "select count(*) from raw.raw_browsing_events_rejected")
    assert raw + rejected == result.events
    assert rejected == result.malformed

    # every dbt test ran as an asset check of its model, and passed
    graph = build_definitions(settings).resolve_asset_graph()
    dbt_checks = {
        key for key in graph.asset_check_keys if graph.get(key.asset_key).group_name in DBT_GROUPS
    }
    evaluations = _check_evaluations(settings)
    passed = {e.asset_check_key: e.passed for e in evaluations}
    assert dbt_checks
    assert {key: passed.get(key) for key in dbt_checks} == dict.fromkeys(dbt_checks, True)
    # a range run's dbt test results say which days they judged
    days = f"{DAYS[0]} .. {DAYS[-1]}"
    dated = [e for e in evaluations if e.asset_check_key in dbt_checks]
    summaries = [e for e in dated if e.asset_check_key.name == SUMMARY_CHECK]
    tests = [e for e in dated if e.asset_check_key.name != SUMMARY_CHECK]
    assert all(e.description.startswith(f"{days}: ") for e in tests)
    assert {e.metadata["days"].text for e in tests} == {days}
    # and each tested model's worst_recent_day read the run's days back from those results
    assert {e.asset_check_key.asset_key for e in summaries} == {
        e.asset_check_key.asset_key for e in tests
    }
    assert {e.metadata["window"].text for e in summaries} == {
        f"{DAYS[-1] - dt.timedelta(days=6)} .. {DAYS[-1]}"
    }
    assert {e.metadata["days_graded"].value for e in summaries} == {len(DAYS)}

    # the marts hold the three days, with buyers among the sessions
    assert set(
        _sql(settings, "select distinct session_day from sessions")["session_day"].dt.date
    ) == set(DAYS)
    positives = _one(
        settings, "select count(distinct session_key) from conversion_examples where will_purchase"
    )
    assert positives > 0

    # a rerun of one day replaces it: every table has the same rows as before
    tables = [
        "raw.raw_browsing_events",
        "stg_browsing_events",
        "int_events_sessionized",
        "sessions",
        "conversion_examples",
        "session_sequences",
    ]
    before = {t: _one(settings, f"select count(*) from {t}") for t in tables}
    assert run_days(settings, DAYS[1], DAYS[1])
    assert {t: _one(settings, f"select count(*) from {t}") for t in tables} == before
    # that run rewrote the session day before it too, final: Dagster records it
    with DagsterInstance.get() as instance:
        (run,) = instance.get_runs(limit=1)
        for key in ("int_events_sessionized", "sessions", "conversion_examples"):
            (record,) = _materializations(instance, key, DAYS[0])
            assert record.run_id == run.run_id, key
            assert record.asset_materialization.metadata["final"].value is True


@pytest.mark.slow
def test_the_dbt_step_runs_dbt_in_its_own_process_and_lets_go_of_the_warehouse(settings, tmp_path):
    """No dbt process is started (a wrapper in place of the dbt executable records any call),
    the step yields each model's materialization and each test's result, and the warehouse is
    free for another process to write the moment the step ends."""
    from dagster import AssetSelection, materialize

    generate(settings.landing, GeneratorConfig(days=1, sessions_per_day=60, seed=3, start=START))
    calls = tmp_path / "calls.txt"
    wrapper = tmp_path / "dbt"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit 3\n')
    wrapper.chmod(0o755)
    defs = build_definitions(settings)
    dbt = defs.resources["dbt"].model_copy(update={"dbt_executable": str(wrapper)})
    with DagsterInstance.get() as instance:
        result = materialize(
            [*defs.assets, *defs.asset_checks],
            selection=AssetSelection.groups("ingestion", *DBT_GROUPS),
            instance=instance,
            partition_key=START.isoformat(),
            resources={**defs.resources, "dbt": dbt},
        )
    assert result.success
    assert not calls.exists(), calls.read_text()
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"stg_browsing_events", "sessions", "conversion_examples"} <= materialized
    checks = result.get_asset_check_evaluations()
    assert len(checks) > 20 and all(c.passed for c in checks), [c.asset_check_key for c in checks]
    create = "create table main.after_dbt as select 1 as x"
    writer = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import duckdb; duckdb.connect({str(settings.warehouse_path)!r}).execute({create!r})",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert writer.returncode == 0, writer.stderr


def test_a_failing_dbt_build_fails_with_dbts_error_and_lets_go_of_the_warehouse(settings):
    """No raw tables yet: dbt in process fails, the error quotes dbt's (the missing table) and
    names dbt's log, and the warehouse is free afterwards."""
    from dagster_dbt.errors import DagsterDbtCliRuntimeError

    from orchestration.dbt.assets import TRANSLATOR
    from orchestration.dbt.inprocess import dbt_in_process
    from orchestration.dbt.project import dbt_invocation

    dbt = build_definitions(settings).resources["dbt"]
    target, env = dbt_invocation(dbt.project_dir, {})
    with pytest.raises(DagsterDbtCliRuntimeError) as failed:
        list(
            dbt_in_process(
                dbt,
                [
                    "build",
                    "--select",
                    "stg_browsing_events",
                    "--exclude-resource-type",
                    "unit_test",
                ],
                context=None,
                target_path=target,
                env=env,
                translator=TRANSLATOR,
                manifest=json.loads(Path(dbt.project_dir, "target/manifest.json").read_text()),
            )
        )
    message = str(failed.value)
    assert (
        "dbt build --select stg_browsing_events --exclude-resource-type unit_test failed" in message
    ), message
    assert "raw_browsing_events" in message, message
    assert str(target / "dbt.log") in message
    with duckdb.connect(str(settings.warehouse_path)) as con:  # free: not held by dbt
        con.execute("select 1")
