"""The whole asset graph: its shape, that the code location loads, and three days materialized
in process on a temporary SKIFF_HOME, with the marts' invariants checked from SQL."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import duckdb
import pandas as pd
import pytest
from dagster import AssetKey

from ml.synthetic import GeneratorConfig, generate
from orchestration.definitions import (
    DAILY_REFRESH,
    DATA_GROUPS,
    MONITOR_DAYS,
    NIGHTLY,
    SCORE_DAYS,
    TRAIN_MODELS,
    build_definitions,
)
from orchestration.runs import run_days
from skiff.settings import REPO_ROOT

START = dt.date(2026, 1, 5)
DAYS = [START + dt.timedelta(days=i) for i in range(3)]

EXPECTED_ASSETS = {
    ("ingestion", "raw_browsing_events"),
    ("ingestion", "raw_browsing_events_rejected"),
    ("ingestion", "raw_products"),
    ("ingestion", "raw_products_rejected"),
    ("staging", "stg_browsing_events"),
    ("staging", "stg_products"),
    ("intermediate", "int_events_sessionized"),
    ("marts", "sessions"),
    ("marts", "conversion_examples"),
    ("marts", "session_sequences"),
    ("conversion", "conversion_training_set"),
    ("conversion", "conversion_model_majority"),
    ("conversion", "conversion_model_logistic"),
    ("conversion", "conversion_model_hgb"),
    ("conversion", "conversion_model_gru"),
    ("conversion", "conversion_evaluation"),
    ("conversion", "conversion_champion"),
    ("conversion", "conversion_predictions"),
    ("recommendation", "recommender_training_set"),
    ("recommendation", "recommender_candidate_pop"),
    ("recommendation", "recommender_candidate_sknn"),
    ("recommendation", "recommender_candidate_gru"),
    ("recommendation", "recommender_evaluation"),
    ("recommendation", "recommender_champion"),
    ("recommendation", "recommender_next_items"),
    ("monitoring", "conversion_feature_drift"),
    ("monitoring", "conversion_prediction_drift"),
    ("monitoring", "conversion_quality"),
    ("monitoring", "recommender_monitoring"),
    ("experiments", "experiment_results"),
}


def test_graph_snapshot(settings):
    """Asset keys, groups, jobs and lineage: an accidental rename shows up here."""
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    nodes = {(graph.get(k).group_name, k.to_user_string()) for k in graph.materializable_asset_keys}
    assert nodes == EXPECTED_ASSETS
    assert graph.get(AssetKey("raw_browsing_events")).child_keys >= {
        AssetKey("stg_browsing_events")
    }
    assert AssetKey("int_events_sessionized") in graph.get(AssetKey("sessions")).parent_keys
    check_names = {k.name for k in graph.asset_check_keys}
    assert {"rows_reconcile", "quarantine_share"} <= check_names
    assert any(name.startswith("unique_") for name in check_names)  # dbt tests as checks
    # singular tests that read two models are pinned to one of them
    assert {
        (k.asset_key.to_user_string(), k.name)
        for k in graph.asset_check_keys
        if k.name.startswith("assert_")
    } >= {
        ("conversion_examples", "assert_conversion_examples_before_first_purchase"),
        ("sessions", "assert_sessions_n_events_match_events"),
        ("sessions", "assert_session_events_on_session_day"),
    }
    assert [job.name for job in defs.jobs] == [
        DAILY_REFRESH,
        TRAIN_MODELS,
        SCORE_DAYS,
        MONITOR_DAYS,
        NIGHTLY,
        "retrain_conversion",
        "retrain_recommender",
    ]
    assert {k.to_user_string() for k in _job_keys(defs, SCORE_DAYS)} == {"conversion_predictions"}
    assert {graph.get(k).group_name for k in _job_keys(defs, DAILY_REFRESH)} == set(DATA_GROUPS)
    # the nightly run: one day from landing files to monitoring, nothing trained
    nightly = {graph.get(k).group_name for k in _job_keys(defs, NIGHTLY)}
    assert nightly == {*DATA_GROUPS, "conversion", "monitoring"}
    assert {
        k.to_user_string()
        for k in _job_keys(defs, NIGHTLY)
        if graph.get(k).group_name == "conversion"
    } == {"conversion_predictions"}
    assert {graph.get(k).group_name for k in _job_keys(defs, "retrain_recommender")} == {
        "recommendation"
    }
    assert [s.name for s in defs.schedules] == ["nightly"]
    assert sorted(s.name for s in defs.sensors) == [
        "drift_retrain_sensor",
        "landing_sensor",
        "run_failure_alert",
    ]
    # freshness expectations on the marts and the predictions, nowhere else
    fresh = {
        k.to_user_string()
        for k in graph.materializable_asset_keys
        if graph.get(k).freshness_policy is not None
    }
    assert fresh == {
        "sessions",
        "conversion_examples",
        "session_sequences",
        "conversion_predictions",
    }


def _job_keys(defs, name: str) -> set:
    return set(defs.resolve_job_def(name).asset_layer.executable_asset_keys)


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
    targets_before = set((REPO_ROOT / "dbt_project" / "target").glob("skiff_dbt_models-*"))
    assert run_days(settings, DAYS[0], DAYS[-1])
    # a successful dbt invocation leaves no target folder behind
    assert set((REPO_ROOT / "dbt_project" / "target").glob("skiff_dbt_models-*")) <= targets_before

    # nothing lost: raw rows + quarantine = rows written by the generator
    raw = _one(settings, "select count(*) from raw.raw_browsing_events")
    rejected = _one(settings, "select count(*) from raw.raw_browsing_events_rejected")
    assert raw + rejected == result.events
    assert rejected == result.malformed

    # one row per session, counts agree with the events
    assert _one(settings, "select count(*) - count(distinct session_key) from sessions") == 0
    assert (
        _one(
            settings,
            """
        select count(*) from sessions as s
        join (select session_key, count(*) as n from int_events_sessionized group by 1) as e
          using (session_key)
        where s.n_events <> e.n""",
        )
        == 0
    )
    assert _one(settings, "select count(*) from sessions where purchased <> (n_purchase > 0)") == 0
    assert set(
        _sql(settings, "select distinct session_day from sessions")["session_day"].dt.date
    ) == set(DAYS)

    # conversion examples: strictly before the first purchase, prefixes contiguous from 1
    assert (
        _one(
            settings,
            """
        select count(*) from conversion_examples as c join sessions as s using (session_key)
        where c.product_action = 'purchase' or c.event_at >= s.first_purchase_at
           or c.will_purchase <> s.purchased""",
        )
        == 0
    )
    assert (
        _one(
            settings,
            """
        select count(*) from (
          select session_key, max(prefix_length) as k, count(*) as n
          from conversion_examples group by 1) where k <> n""",
        )
        == 0
    )
    positives = _one(
        settings, "select count(distinct session_key) from conversion_examples where will_purchase"
    )
    assert positives > 0

    # sequences: tokens are the session's detail views, in order
    assert (
        _one(
            settings,
            """
        select count(*) from session_sequences as q
        join (select session_key, count(*) as n from int_events_sessionized
              where product_action = 'detail' group by 1) as e using (session_key)
        where q.n_views <> e.n
           or len(string_split(q.product_skus, ' ')) <> q.n_views""",
        )
        == 0
    )

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
