"""Production without Kubernetes: steps that share nothing but object storage.

With SKIFF_ARTIFACTS_URL on a real S3-compatible server on 127.0.0.1 (moto, tests/objectstore.py)
and SKIFF_EXECUTOR=multiprocess, the code location's own jobs run training (`train_models`),
scoring (`score_days`) and monitoring (`monitor_days`) of one day through `dagster.execute_job`
on a persistent instance, so every step is its own process, as with a step launcher per pod.
Checked: the champions are in the bucket (registry roles and published pointers), the day's
predictions are in the warehouse, the report links of the evaluation and monitoring metadata
answer with objects of the bucket (SKIFF_REPORTS_URL = the bucket's HTTP address), every value
a step handed to another is in the bucket under its run, and nothing was written under
$SKIFF_HOME/artifacts or $SKIFF_HOME/reports (Dagster's own instance folder is allowed).

The marts are built first (`run_days`, the command line's runner, with the same executor: each
ingestion and dbt step its own process too); the checks are about what steps hand each other.
"""

import datetime as dt
import json
import os
import time
from pathlib import Path

import duckdb
import fsspec
import httpx
import pytest
from dagster import DagsterEventType, DagsterInstance, execute_job, reconstructable

from ml.registry import Registry, published_copy
from ml.synthetic import GeneratorConfig, generate
from orchestration.definitions import MONITOR_DAYS, SCORE_DAYS, TRAIN_MODELS, build_definitions
from orchestration.demo import training_windows
from orchestration.monitoring.config import WATCHES
from orchestration.runs import run_days
from skiff.settings import ensure_home, load_settings
from tests.conftest import AUTOMATION_VARIABLES

# About 3 minutes (186 s) on an idle two-core machine; a loaded one (other suites at once) took 12.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1500)]

CONFIG = GeneratorConfig(days=6, sessions_per_day=600, seed=5, start=dt.date(2026, 1, 5))
# Small models and open conversion gates: the test is about the hand-offs, not model quality.
SMALL_MODELS = {
    "conversion_model_hgb": {"max_iter": 20},
    "conversion_model_gru": {"epochs": 1, "hidden": 8},
    "conversion_evaluation": {"pr_auc_margin": -1.0, "max_calibration_error": 1.0},
    "recommender_candidate_gru": {"params_json": json.dumps({"epochs": 2})},
}
# Two step processes at a time (the machines have two cores), forked from a server that imported
# the code location once (Dagster's `forkserver` start method): about 3 s a step less than
# spawning Python and importing it all again (the test: 401 s -> 242 s on one loaded machine).
# Not the code location's default: the server keeps the environment of the process's first
# run, and a process that runs jobs under other settings later (this suite) would hand its
# steps stale ones; here every run has this test's.
EXECUTION = {
    "execution": {
        "config": {
            "max_concurrent": 2,
            "start_method": {"forkserver": {"preload_modules": ["orchestration.definitions"]}},
        }
    }
}


def _job(name: str):
    """The code location's job, as each step's process rebuilds it from the environment."""
    return build_definitions(ensure_home(load_settings())).resolve_job_def(name)


def train_models_job():
    return _job(TRAIN_MODELS)


def score_days_job():
    return _job(SCORE_DAYS)


def monitor_days_job():
    return _job(MONITOR_DAYS)


def _execute(instance, job_fn, run_config: dict, tags: dict | None = None):
    result = execute_job(
        reconstructable(job_fn),
        instance,
        run_config={**EXECUTION, **run_config},
        tags=tags,
        raise_on_error=False,
    )
    failures = [
        f"{e.step_key}: {e.step_failure_data.error.message}"
        for e in result.all_events
        if e.is_step_failure
    ]
    assert result.success, f"{job_fn.__name__} failed: {failures}"
    return result


def _metadata(result, key: str) -> dict:
    (event,) = result.asset_materializations_for_node(key)
    return {k: v.value for k, v in event.metadata.items()}


def _step_pids(instance, result) -> set[int]:
    entries = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_START)
    return {entry.dagster_event.pid for entry in entries}


def _public_reports(endpoint: str, bucket: str, prefix: str) -> None:
    """What an operator does to serve reports from the bucket (SKIFF_REPORTS_URL): a policy
    that lets anyone read `<prefix>/*`, and nothing else of the bucket."""
    import boto3

    statement = {
        "Effect": "Allow",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*",
    }
    boto3.client("s3", endpoint_url=endpoint).put_bucket_policy(
        Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    )


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_training_scoring_and_monitoring_share_only_object_storage(
    tmp_path, monkeypatch, s3_server, s3_bucket
):
    began = time.perf_counter()
    artifacts_url = f"{s3_bucket}/prod"
    bucket = s3_bucket.removeprefix("s3://")
    reports_base = f"{s3_server}/{bucket}/prod/reports"  # the bucket's own HTTP address
    cleared = ("DAGSTER_HOME", "SKIFF_DAGSTER_HOME", "SKIFF_DBT_TARGET", *AUTOMATION_VARIABLES)
    for name in cleared:  # a developer's own settings; then this test's
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SKIFF_HOME", str(tmp_path / "skiff"))
    monkeypatch.setenv("SKIFF_ENV", "local")
    monkeypatch.setenv("SKIFF_ARTIFACTS_URL", f"{artifacts_url}/")
    monkeypatch.setenv("SKIFF_EXECUTOR", "multiprocess")
    monkeypatch.setenv("SKIFF_REPORTS_URL", reports_base)
    settings = ensure_home(load_settings())
    assert settings.executor == "multiprocess"
    days = generate(settings.landing, CONFIG).days
    assert run_days(settings, days[0], days[-1])
    scored_day = days[-1]
    ops = {
        **{name: {"config": config} for name, config in SMALL_MODELS.items()},
        **training_windows(days[0], days[-2]),
    }
    fs = fsspec.filesystem("s3")
    _public_reports(s3_server, bucket, "prod/reports")

    with DagsterInstance.get() as instance:
        trained = _execute(instance, train_models_job, {"ops": ops})
        partition = {"dagster/partition": scored_day.isoformat()}
        scored = _execute(instance, score_days_job, {}, partition)
        monitored = _execute(instance, monitor_days_job, {}, partition)
        # every step ran in a process of its own, none in the test's
        pids = [_step_pids(instance, r) for r in (trained, scored, monitored)]
    assert len(pids[0]) >= 10 and os.getpid() not in set().union(*pids)
    print(f"\ntrain + score + monitor, one process per step: {time.perf_counter() - began:.0f} s")

    # the champions are in the bucket: registry roles and the published pointers
    registry = Registry(settings.registry)
    assert settings.registry == f"{artifacts_url}/registry"
    for problem in ("conversion", "recommender"):
        champion = registry.roles(problem)["champion"]
        assert fs.exists(f"{artifacts_url}/registry/{problem}/versions/{champion}/manifest.json")
        assert fs.exists(f"{artifacts_url}/published/{problem}/champion.json")
        with published_copy(settings.published, problem) as (manifest, folder):
            assert manifest.version == champion and any(folder.iterdir())
    recommender = _metadata(trained, "recommender_champion")
    assert recommender["published_to"] == f"{artifacts_url}/published/recommender"
    assert recommender["champion"] == registry.roles("recommender")["champion"]

    # the day's predictions are in the warehouse, by the published champion
    conversion_champion = registry.roles("conversion")["champion"]
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        predicted = con.execute(
            "select count(*), min(model_version), max(model_version) from conversion_predictions"
            f" where session_day = '{scored_day}'"
        ).fetchone()
        examples = con.execute(
            f"select count(*) from conversion_examples where session_day = '{scored_day}'"
        ).fetchone()[0]
        next_items = con.execute(
            "select count(*), min(model_version) from recommender_next_items"
        ).fetchone()
    assert predicted == (examples, conversion_champion, conversion_champion) and examples > 0
    assert next_items[0] > 0 and next_items[1] == registry.roles("recommender")["champion"]

    # report links answer, with objects of the bucket
    links = {
        "conversion_evaluation": _metadata(trained, "conversion_evaluation")["report"],
        "recommender_evaluation": _metadata(trained, "recommender_evaluation")["report"],
        **{name: _metadata(monitored, name)["report"] for name in WATCHES},
    }
    for name, link in links.items():
        assert link.startswith(f"{reports_base}/"), (name, link)
        relpath = link.removeprefix(f"{reports_base}/")
        assert fs.exists(f"{artifacts_url}/reports/{relpath}"), (name, relpath)
        answer = httpx.get(link, timeout=10)  # anonymous, as a browser follows the link
        assert answer.status_code == 200 and len(answer.content) > 100, (name, link)
        assert answer.content == fs.cat_file(f"{artifacts_url}/reports/{relpath}")
    # the rest of the bucket stays private: the registry is not readable through the link base
    private = f"{s3_server}/{bucket}/prod/published/conversion/champion.json"
    assert httpx.get(private, timeout=10).status_code == 403
    assert all(links[name].endswith(f"/{name}/{scored_day}.html") for name in WATCHES)

    # what the steps handed each other is in the bucket, under the training run
    handed = fs.find(f"{artifacts_url}/handoff/runs/{trained.run_id}")
    names = {path.rsplit("/", 1)[-1] for path in handed}
    assert {"recommender_training_set.json", "conversion_evaluation.json", "index.json"} <= names
    assert not [p for p in handed if p.endswith((".pkl", ".pickle"))]

    # nothing under SKIFF_HOME but the landing files, the warehouse and Dagster's instance
    assert _files_under(settings.artifacts) == []
    assert _files_under(settings.reports) == []
