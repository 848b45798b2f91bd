"""Reports and the monitoring reference cache go through the store, and their links resolve
where the reports are served.

With `SKIFF_ARTIFACTS_URL` on a real S3-compatible server (moto, `tests/objectstore.py`), a
real materialization of `recommender_monitoring` writes its Evidently report into the bucket,
links it from `SKIFF_REPORTS_URL` (or from the server's URL without it), caches the champion's
reference in the bucket and reads it back on the next run, and leaves nothing under SKIFF_HOME's
reports or artifacts, nor a temporary copy of the model. `session_sequences`, the dbt mart the
asset reads, is written by hand (this test builds no marts): a stand-in, as in
tests/test_replay_asset_run.py.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path

import duckdb
import fsspec
import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from ml import release
from ml.recommend.models import SKNNRecommender
from ml.registry import Registry
from orchestration.definitions import build_definitions
from orchestration.monitoring.config import RECOMMENDER
from orchestration.reports import read_report, report_location, write_report, write_run_report
from skiff.settings import ensure_home, load_settings
from skiff.urls import report_url
from tests.conftest import AUTOMATION_VARIABLES

ITEMS = [f"sku{i:02d}" for i in range(40)]
TEST_DAYS = [dt.date(2026, 1, 5), dt.date(2026, 1, 6)]
DAY = dt.date(2026, 1, 7)  # the monitored day
RELPATH = f"monitoring/{RECOMMENDER}/{DAY}.html"


def _walks(rng: np.random.Generator, n: int) -> list[list[str]]:
    """Sessions that mostly walk item i -> i + 1 (session-kNN learns it)."""
    return [
        [ITEMS[start + j] for j in range(int(rng.integers(2, 6)))]
        for start in rng.integers(0, 34, size=n)
    ]


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.fixture
def store(tmp_path, monkeypatch, s3_bucket):
    """A SKIFF_HOME whose artifacts live in the bucket under a prefix, with no report base."""
    monkeypatch.setenv("SKIFF_HOME", str(tmp_path / "skiff"))
    monkeypatch.setenv("SKIFF_ENV", "local")
    monkeypatch.setenv("SKIFF_ARTIFACTS_URL", f"{s3_bucket}/prod/")
    for name in (
        "DAGSTER_HOME",
        "SKIFF_DAGSTER_HOME",
        "SKIFF_PARTITIONS_START",
        "SKIFF_REPORTS_URL",
        *AUTOMATION_VARIABLES,
    ):
        monkeypatch.delenv(name, raising=False)
    # every temporary folder of this process lands here, so a leftover model copy shows
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return ensure_home(load_settings()), f"{s3_bucket}/prod", scratch


def _champion(settings, tmp_path: Path, rng: np.random.Generator) -> str:
    """A session-kNN champion published to the bucket, tested on TEST_DAYS."""
    model = SKNNRecommender().fit(_walks(rng, 400))
    manifest = Registry(settings.registry).register(
        "recommender",
        model.save(tmp_path / "sknn"),
        algorithm=model.algorithm,
        params=model.params(),
        metrics={"hr_at_20": 0.5},
        training_window={"train_start": "2026-01-01", "train_end": "2026-01-04"},
        extra={"test_window": {"start": str(TEST_DAYS[0]), "end": str(TEST_DAYS[-1])}},
    )
    release.bootstrap(
        Registry(settings.registry), str(settings.published), "recommender", manifest.version, "t"
    )
    return manifest.version


def _session_sequences(settings, days: list[dt.date], rng: np.random.Generator) -> None:
    rows = [(day, walk) for day in days for walk in _walks(rng, 300)]
    frame = pd.DataFrame(  # noqa: F841 - read by DuckDB by name
        {
            "session_day": [day for day, _ in rows],
            "product_skus": [" ".join(walk) for _, walk in rows],
            "first_view_at": pd.date_range("2026-01-05", periods=len(rows), freq="min"),
            "session_key": [f"k{i}" for i in range(len(rows))],
        }
    )
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute("create or replace table main.session_sequences as select * from frame")


def _monitor(settings) -> dict:
    defs = build_definitions(settings)
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [defs.resolve_assets_def(AssetKey(RECOMMENDER))],
            partition_key=DAY.isoformat(),
            instance=instance,
            raise_on_error=False,
        )
        failures = [
            e.step_failure_data.error.message for e in result.all_events if e.is_step_failure
        ]
        assert result.success, failures
        (materialization,) = result.asset_materializations_for_node(RECOMMENDER)
    return {key: value.value for key, value in materialization.metadata.items()}


@pytest.mark.slow
def test_monitoring_report_and_reference_cache_live_in_the_bucket(store, tmp_path, monkeypatch):
    settings, root, scratch = store
    rng = np.random.default_rng(3)
    version = _champion(settings, tmp_path, rng)
    _session_sequences(settings, [*TEST_DAYS, DAY], rng)
    fs, _ = fsspec.core.url_to_fs(root)

    monkeypatch.setenv("SKIFF_REPORTS_URL", "https://reports.example.com/skiff/")
    first = _monitor(settings)
    assert first["report"] == f"https://reports.example.com/skiff/{RELPATH}"
    assert first["report_path"] == f"{root}/reports/{RELPATH}"
    html = fs.cat_file(f"{root}/reports/{RELPATH}")
    assert len(html) > 100_000 and b"<html" in html[:2000].lower()  # self-contained Evidently
    reference = f"{root}/cache/monitoring/reference/recommender-{version}"
    assert fs.exists(f"{reference}.parquet") and fs.exists(f"{reference}.json")
    baseline = json.loads(fs.cat_file(f"{reference}.json"))
    assert first["reference_unseen_request_share"] == pytest.approx(
        baseline["unseen_request_share"]
    )

    # the second run reads the cache: the test days are gone from the warehouse (recomputing
    # would fail on them) and the cached baseline, marked, is what the run reports
    _session_sequences(settings, [DAY], rng)
    fs.pipe_file(f"{reference}.json", json.dumps({**baseline, "unseen_request_share": 0.375}))
    monkeypatch.delenv("SKIFF_REPORTS_URL")
    monkeypatch.setenv("SKIFF_SERVE_URL", "https://skiff.example.com/")
    second = _monitor(settings)
    assert second["reference_unseen_request_share"] == 0.375
    assert second["report"] == f"https://skiff.example.com/reports/{RELPATH}"
    assert fs.cat_file(f"{root}/reports/{RELPATH}") != html  # rewritten: a new run's report

    # nothing of it on the machine: no report, no cache, no copy of the model left behind
    assert _files_under(settings.reports) == [] and _files_under(settings.artifacts) == []
    assert sorted(p.name for p in scratch.iterdir() if p.name.startswith("skiff-")) == []


def test_write_report_through_the_bucket_and_back(store):
    settings, root, _ = store
    url = write_report(settings, "experiments/results.md", "# results\n")
    assert url == "http://127.0.0.1:3001/reports/experiments/results.md"
    assert fsspec.open(f"{root}/reports/experiments/results.md", "rb").open().read() == (
        b"# results\n"
    )
    assert read_report(settings, "experiments/results.md") == "# results\n"
    assert read_report(settings, "experiments/missing.md") is None
    # two runs' reports: each its own object, linked; the latest copy is the last one's
    for run, text in (("run-1", "# one\n"), ("run-2", "# two\n")):
        url = write_run_report(settings, "experiments/results.md", run, text)
        assert url == f"http://127.0.0.1:3001/reports/experiments/runs/{run}/results.md"
    assert read_report(settings, "experiments/runs/run-1/results.md") == "# one\n"
    assert read_report(settings, "experiments/runs/run-2/results.md") == "# two\n"
    assert read_report(settings, "experiments/results.md") == "# two\n"
    assert _files_under(settings.reports) == []


def test_write_report_locally_is_whole_and_refuses_paths_that_escape(settings, monkeypatch):
    monkeypatch.delenv("SKIFF_REPORTS_URL", raising=False)
    # neither SKIFF_REPORTS_URL nor SKIFF_SERVE_URL: the address `skiff ui` serves them at
    url = write_report(settings, "conversion/leaderboard.md", b"| a |\n")
    assert url == "http://127.0.0.1:3001/reports/conversion/leaderboard.md"
    assert report_location(settings, "conversion/leaderboard.md") == str(
        settings.reports / "conversion" / "leaderboard.md"
    )
    # written then renamed: the report and nothing else (no temporary file left)
    assert [p.name for p in _files_under(settings.reports)] == ["leaderboard.md"]
    for bad in ("../x", "a/../../x", "/etc/passwd", "", "a\\..\\x", "s3://other/x"):
        with pytest.raises(ValueError, match="report path"):
            write_report(settings, bad, "no")
    assert [p.name for p in _files_under(settings.home)] == ["dagster.yaml", "leaderboard.md"]


def test_report_links_use_the_reports_base_url_when_set(settings, monkeypatch):
    monkeypatch.delenv("SKIFF_REPORTS_URL", raising=False)
    monkeypatch.setenv("SKIFF_SERVE_URL", "https://skiff.example.com/")
    # a path relative to the reports root, not a file on this machine
    assert report_url(settings, "monitoring/a b.html") == (
        "https://skiff.example.com/reports/monitoring/a%20b.html"
    )
    monkeypatch.setenv("SKIFF_REPORTS_URL", "https://bucket.example.com/skiff-reports/")
    assert report_url(settings, "monitoring/a.html") == (
        "https://bucket.example.com/skiff-reports/monitoring/a.html"
    )
    # older callers' absolute paths under settings.reports still resolve
    assert report_url(settings, settings.reports / "experiments" / "results.md") == (
        "https://bucket.example.com/skiff-reports/experiments/results.md"
    )
    with pytest.raises(ValueError, match="escapes"):
        report_url(settings, "../warehouse.duckdb")
