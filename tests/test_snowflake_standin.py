"""The production warehouse path against a Snowflake stand-in: fakesnow's server on 127.0.0.1
speaks the Snowflake protocol over DuckDB. The same landing days go through ingestion, the dbt
marts and the conversion model (training set, candidates, evaluation with its leakage gate,
champion, a day of predictions) once on the local DuckDB and once with SKIFF_ENV=prod (the dbt
`snowflake` target, the Snowflake warehouse resource); every table must hold the same rows,
the training set must split the same, and the day's predictions must be as many, with the
champion's version, in both warehouses; a server log goes through the release loop (raw log
tables, experiment marts, experiment_results) to the same marts and the same numbers.

What this proves: the prod switch, the Snowflake connection settings, the Snowflake dispatch
macros, the SQL and the Python assets' reads and writes run through the Snowflake connector and
dbt-snowflake, with the same results. What it does not: fakesnow is DuckDB underneath, so
Snowflake's own SQL semantics, performance, stages (write_pandas) and permissions are not
tested here."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from dagster import AssetSelection, DagsterInstance, Definitions, define_asset_job

from ml.registry import load_published
from ml.synthetic import GeneratorConfig, generate
from orchestration.conversion.config import (
    CHAMPION,
    CHECKS,
    EVALUATION,
    GROUP,
    PREDICTIONS,
    TRAINING_SET,
)
from orchestration.dbt.project import build_dbt_project, dbt_cli
from orchestration.definitions import SCORE_DAYS, build_definitions
from orchestration.handoff import Handoff
from orchestration.partitions import partition_range_tags
from orchestration.resources import build_warehouse
from orchestration.runs import SUMMARY_TABLES, run_days
from skiff.settings import Settings, ensure_home, load_settings
from tests.servers import fakesnow_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# 4 days: a training window of 2, a validation day, a test day (the last one, scored too)
DAYS = [dt.date(2026, 1, 5) + dt.timedelta(days=i) for i in range(4)]
TRAIN = "train_conversion"
# Tiny models and relaxed gates: the test is about the warehouse path, not model quality.
TRAINING_ROUND = {
    TRAINING_SET: {"train_days": 2, "test_day": DAYS[-1].isoformat()},
    "conversion_model_hgb": {"max_iter": 20},
    "conversion_model_gru": {"epochs": 1, "hidden": 8},
    EVALUATION: {"pr_auc_margin": -1.0, "max_calibration_error": 1.0},
}


def _counts(settings: Settings) -> dict[str, int]:
    warehouse = build_warehouse(settings)
    counts = {}
    for layer, table in SUMMARY_TABLES:
        schema = settings.raw_schema if layer == "raw" else settings.models_schema
        frame = warehouse.query(f"select count(*) as n from {schema}.{table}")
        counts[table] = int(frame.iloc[0]["n"])
    return counts


def _conversion(settings: Settings) -> dict:
    """Train the conversion model on the landed days, score the test day; what came out."""
    base = build_definitions(settings)
    training = AssetSelection.groups(GROUP) - AssetSelection.assets(PREDICTIONS)
    defs = Definitions.merge(base, Definitions(jobs=[define_asset_job(TRAIN, training)]))
    day = DAYS[-1].isoformat()
    with DagsterInstance.get() as instance:
        trained = defs.resolve_job_def(TRAIN).execute_in_process(
            instance=instance,
            run_config={"ops": {k: {"config": v} for k, v in TRAINING_ROUND.items()}},
            raise_on_error=False,
        )
        _succeeded(trained, f"{TRAIN} ({settings.env})")
        checks = {c.check_name: c.passed for c in trained.get_asset_check_evaluations()}
        assert checks == dict.fromkeys(CHECKS, True), f"gates ({settings.env}): {checks}"
        (champion,) = trained.asset_materializations_for_node(CHAMPION)
        assert champion.metadata["promoted"].value, champion.metadata["reason"].value
        scored = defs.resolve_job_def(SCORE_DAYS).execute_in_process(
            instance=instance,
            tags=partition_range_tags(dt.date.fromisoformat(day), dt.date.fromisoformat(day)),
            raise_on_error=False,
        )
        _succeeded(scored, f"{SCORE_DAYS} {day} ({settings.env})")
        training = Handoff(settings.handoff_root).load(instance, TRAINING_SET)
    warehouse = build_warehouse(settings)
    predictions = warehouse.query(
        f"select model_version, count(*) as n from {warehouse.models_schema}.{PREDICTIONS}"
        f" where session_day = cast('{day}' as date) group by model_version"
    )
    examples = warehouse.query(
        f"select count(*) as n from {warehouse.models_schema}.conversion_examples"
        f" where session_day = cast('{day}' as date)"
    )
    test_part = training["test"]
    return {
        "split": {key: training[key] for key in ("window", "parts")},
        # what the Python assets saw: dates as datetimes, whole numbers as integers, ...
        "kinds": {name: dtype.kind for name, dtype in test_part.dtypes.items()},
        "predictions": dict(
            zip(predictions["model_version"], predictions["n"].astype(int), strict=True)
        ),
        "examples": int(examples.iloc[0]["n"]),
        "champion": load_published(settings.published, "conversion")[0].version,
    }


def _experiments(settings: Settings) -> dict:
    """A server log written into `settings.home`, then one run of the release loop on it: the
    marts' row counts and the recommender experiment's numbers."""
    import numpy as np

    from orchestration.definitions import RELEASE_LOOP
    from orchestration.experiments.assets import RESULTS
    from serving.eventlog import EventLog
    from tests.test_experiments import _simulate

    log = EventLog(settings.home / "serving")
    shares, ctr = {"control": 0.5, "treatment": 0.5}, {"control": 0.1, "treatment": 0.2}
    _simulate(log, "recommender", "recs-ab", shares, ctr, 400, np.random.default_rng(3))
    log.close()
    with DagsterInstance.get() as instance:
        result = (
            build_definitions(settings)
            .resolve_job_def(RELEASE_LOOP)
            .execute_in_process(
                instance=instance,
                partition_key=dt.datetime.now(dt.UTC).date().isoformat(),
                raise_on_error=False,
            )
        )
    _succeeded(result, f"{RELEASE_LOOP} ({settings.env})")
    metadata = result.asset_materializations_for_node(RESULTS)[0].metadata
    warehouse = build_warehouse(settings)
    counts = {
        table: int(
            warehouse.query(f"select count(*) as n from {warehouse.models_schema}.{table}").iloc[0][
                "n"
            ]
        )
        for table in ("experiment_exposures", "experiment_sessions")
    }
    numbers = ("recommender_sessions", "recommender_ctr_difference", "recommender_srm_p_value")
    return {**counts, **{k: round(metadata[k].value, 9) for k in numbers}}


def _succeeded(result, what: str) -> None:
    failures = [
        f"{e.step_key}: {e.step_failure_data.error.message}"
        for e in result.all_events
        if e.is_step_failure
    ]
    assert result.success, f"{what} failed:\n" + "\n".join(failures)


@pytest.fixture
def fakesnow_port(tmp_path: Path):
    with fakesnow_server(tmp_path / "fakesnow.log") as port:
        yield port


def test_same_rows_on_duckdb_and_on_the_snowflake_standin(
    settings, fakesnow_port, tmp_path, monkeypatch
):
    # enough sessions that every day has buyers and non-buyers (about 2% of sessions buy)
    config = GeneratorConfig(
        days=len(DAYS), sessions_per_day=200, seed=9, start=DAYS[0], n_products=200
    )
    generate(settings.landing, config)
    assert run_days(settings, DAYS[0], DAYS[-1])
    local = _counts(settings)
    local_model = _conversion(settings)
    local_experiments = _experiments(settings)

    prod_home = tmp_path / "prod"
    for name, value in {
        "SKIFF_ENV": "prod",
        "SKIFF_HOME": str(prod_home),
        "SKIFF_REPORTS_URL": "https://reports.skiff.example/reports",
        "SNOWFLAKE_ACCOUNT": "standin",
        "SNOWFLAKE_USER": "skiff",
        "SNOWFLAKE_PASSWORD": "not-a-secret",
        "SNOWFLAKE_ROLE": "transformer",
        "SNOWFLAKE_WAREHOUSE": "transforming",
        "SNOWFLAKE_DATABASE": "skiff",
        "SNOWFLAKE_SCHEMA": "analytics",
        "SNOWFLAKE_HOST": "127.0.0.1",
        "SNOWFLAKE_PORT": str(fakesnow_port),
        "SNOWFLAKE_PROTOCOL": "http",
        "SKIFF_SNOWFLAKE_LOAD": "insert",  # fakesnow does not serve write_pandas's PUT
        "SKIFF_MANIFEST_KEY": "manifest-key-for-the-standin",  # prod signs its manifests
    }.items():
        monkeypatch.setenv(name, value)
    prod = ensure_home(load_settings())
    assert (prod.env, prod.dbt_target, prod.models_schema) == ("prod", "snowflake", "analytics")
    shutil.copytree(settings.landing, prod.landing, dirs_exist_ok=True)
    warehouse = build_warehouse(prod)
    with warehouse._resource().get_connection() as con:  # a real account has its database
        con.cursor().execute("create database if not exists skiff")

    assert run_days(prod, DAYS[0], DAYS[-1])
    assert _counts(prod) == local
    assert min(local.values()) > 0

    # the conversion model through the stand-in: the same training set, as many predictions
    prod_model = _conversion(prod)
    assert prod_model["split"] == local_model["split"], "the training set split differently"
    assert prod_model["kinds"] == local_model["kinds"], "the warehouses' frames differ in type"
    parts = local_model["split"]["parts"]
    assert all(parts[p]["prefixes"] > 0 for p in ("train", "validation", "test")), parts
    for model in (local_model, prod_model):
        assert model["predictions"] == {model["champion"]: model["examples"]}, model
    assert prod_model["examples"] == local_model["examples"] > 0

    # the experiment data through the stand-in: the same server log -> the same marts and evidence
    assert _experiments(prod) == local_experiments

    # every model, test and macro compiles for the Snowflake target
    compiled = dbt_cli(build_dbt_project(prod)).cli(["compile"], raise_on_error=False).wait()
    assert compiled.is_successful()
