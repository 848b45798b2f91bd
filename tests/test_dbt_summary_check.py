"""dbt tests' `worst_recent_day`: a failure on an earlier day stays in sight behind later passes.

Real Dagster runs on a persistent instance. The tested asset stands in for a dbt model: it
records check results the way the dbt step does (`orchestration.dbt.assets._dated`: the days
in the description and in `days` metadata), so no dbt project is built here; the summary check
is the one the code location builds for its dbt models (`build_dbt_summary_checks`).
"""

import datetime as dt

from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    Config,
    DagsterInstance,
    MetadataValue,
    Output,
    asset,
    materialize,
)

from orchestration.dbt.checks import build_dbt_summary_checks, days_of
from orchestration.definitions import build_definitions
from orchestration.monitoring.grading import RECENT_DAYS, SUMMARY_CHECK

MODEL = "toy_sessions"
TESTS = {"row_conditions": AssetCheckSeverity.ERROR, "visits_split_on_gap": AssetCheckSeverity.WARN}


class Outcome(Config):
    days: str
    failed: list[str] = []


@asset(
    name=MODEL,
    check_specs=[AssetCheckSpec(name, asset=MODEL) for name in TESTS],
)
def toy_model(config: Outcome):
    yield Output(None)
    for name, severity in TESTS.items():
        yield AssetCheckResult(
            check_name=name,
            passed=name not in config.failed,
            severity=severity,
            description=f"{config.days}: dbt test",
            metadata={"days": MetadataValue.text(config.days)},
        )


SUMMARY = build_dbt_summary_checks(toy_model, "toy_worst_recent_day")


def _run(instance, days: str, failed: tuple[str, ...] = ()):
    result = materialize(
        [toy_model, SUMMARY],
        instance=instance,
        run_config={"ops": {MODEL: {"config": {"days": days, "failed": list(failed)}}}},
        raise_on_error=False,
    )
    [summary] = [
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_check_key == AssetCheckKey(toy_model.key, SUMMARY_CHECK)
    ]
    return summary


def test_days_of_reads_a_day_and_a_range():
    assert days_of("2026-01-05") == [dt.date(2026, 1, 5)]
    assert days_of("2026-01-30 .. 2026-02-01") == [
        dt.date(2026, 1, 30),
        dt.date(2026, 1, 31),
        dt.date(2026, 2, 1),
    ]


def test_an_earlier_failure_stays_in_sight_behind_later_passes(settings):
    with DagsterInstance.get() as instance:
        first = _run(instance, "2026-01-05 .. 2026-01-06")
        assert first.passed, first.description
        # day 7 fails its WARN test, day 8 passes: the latest result of each test is a pass
        warned = _run(instance, "2026-01-07", failed=("visits_split_on_gap",))
        assert not warned.passed and "worst warn on 2026-01-07" in warned.description
        later = _run(instance, "2026-01-08")
        latest = instance.get_latest_asset_check_evaluation_record(
            AssetCheckKey(toy_model.key, "visits_split_on_gap")
        )
        assert latest.event.dagster_event.asset_check_evaluation_data.passed
        assert not later.passed
        assert later.metadata["worst_day"].value == "2026-01-07"
        assert later.metadata["worst_severity"].value == "warn"
        assert later.metadata["days_graded"].value == 4
        assert later.severity == AssetCheckSeverity.WARN

        # an ERROR test's failure on a day outranks the warning, and a re-run of that day
        # that passes replaces its verdict
        errored = _run(instance, "2026-01-09", failed=("row_conditions",))
        assert errored.metadata["worst_severity"].value == "error"
        assert errored.metadata["worst_days"].value == "2026-01-09"
        rerun = _run(instance, "2026-01-09")
        assert rerun.metadata["worst_severity"].value == "warn"

        # the warning leaves the window RECENT_DAYS days after it
        gone = dt.date(2026, 1, 7) + dt.timedelta(days=RECENT_DAYS)
        clean = _run(instance, f"2026-01-10 .. {gone}")
        assert clean.passed, clean.description
        assert clean.metadata["window"].value == f"{gone - dt.timedelta(days=6)} .. {gone}"


def test_every_dbt_tested_model_has_the_summary_in_the_jobs_that_build_it(settings):
    defs = build_definitions(settings)
    [dbt] = [a for a in defs.assets if a.node_def.name == "skiff_dbt_models"]
    tested = {spec.asset_key for spec in dbt.check_specs}
    summaries = {key.asset_key for checks in defs.asset_checks for key in checks.check_keys}
    assert summaries == tested
    assert {"sessions", "stg_browsing_events", "session_sequences"} <= {
        k.to_user_string() for k in tested
    }
    for job in ("daily_refresh", "nightly_refresh"):
        assert "dbt_worst_recent_day" in defs.resolve_job_def(job).graph.node_dict
