"""`recommender_replay` in a real release-loop run on a real DuckDB: a champion (POP) and a
challenger (session-kNN) in a real registry, a server-format log of the champion exploring,
written here with `ml.offpolicy.explore` and clicks drawn from a known rule, through the
serving log, dbt's experiment marts and the replay asset. `session_sequences`, the dbt mart the
click model learns from, is written by hand (this test builds no data marts): a stand-in, said
so here. The asset's rows must equal `ml.offpolicy.replay` run on the same records, and the
controller's replay gate must read them."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance

from ml import offpolicy, release
from ml.recommend.models import PopRecommender, SKNNRecommender
from ml.registry import Registry
from orchestration.dbt.project import build_dbt_project
from orchestration.definitions import RELEASE_LOOP, build_definitions
from orchestration.experiments import replay as replay_asset
from orchestration.resources import build_resources
from serving.eventlog import EventLog

ITEMS = [f"sku{i:02d}" for i in range(30)]


def _train_sessions(rng: np.random.Generator) -> list[list[str]]:
    """Sessions that walk item i -> i + 1 mostly: kNN learns it, POP cannot."""
    out = []
    for _ in range(400):
        start = int(rng.integers(0, 25))
        out.append([ITEMS[start + j] for j in range(int(rng.integers(2, 6)))])
    return out


def _register(registry: Registry, model, name: str, tmp: Path) -> str:
    folder = model.save(tmp / name)
    window = {"train_start": "2026-01-01", "train_end": "2026-01-10"}
    manifest = registry.register(
        "recommender",
        folder,
        algorithm=model.algorithm,
        params=model.params(),
        metrics={"hr_at_20": 0.5},
        training_window=window,
    )
    return manifest.version


def _write_log(
    settings, champion, version: str, experiment: str, rng: np.random.Generator
) -> list[dict]:
    """The champion's answers as the server logs them: 30% explored, propensities, context;
    a click on the item that follows the last viewed one, when it is shown, half the time."""
    log = EventLog(settings.home / "serving")
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    exploration = offpolicy.Exploration(0.3, 12)
    records = []
    for s in range(400):  # 1,200 exposures: over the gate's 1,000
        viewed = [ITEMS[int(rng.integers(0, 25))]]
        for _ in range(3):
            ranked = champion.recommend_batch([viewed], exploration.size(5))[0]
            shown = offpolicy.explore(ranked, 5, exploration, rng)
            record = {
                "kind": "exposure",
                "id": uuid.uuid4().hex,
                "at": now,
                "problem": "recommender",
                "experiment": experiment,
                "mode": "ab",
                "stage": "shadow",
                "session_id": f"s{s}",
                "variant": "champion",
                "role": "champion",
                "model_version": version,
                "weights": {"champion": 1.0},
                "latency_ms": 1.0,
                "error": False,
                "history_events": len(viewed),
                "history_adds": 0,
                "items": shown.items,
                "path": "model",
                "context": list(viewed),
                "propensities": shown.propensities,
                "explored": shown.explored,
                "logging_policy": exploration.name,
            }
            log.write(record)
            records.append(record)
            following = ITEMS[min(ITEMS.index(viewed[-1]) + 1, len(ITEMS) - 1)]
            if following in shown.items and rng.random() < 0.5:
                click = {"kind": "feedback", "exposure_id": record["id"], "action": "click"}
                log.write({**click, "item": following, "at": now})
                record["clicked"] = following
            viewed.append(following)
    log.close()
    return records


@pytest.mark.slow
def test_the_replay_asset_writes_what_ml_offpolicy_computes_and_the_gate_reads_it(
    settings, tmp_path
):
    rng = np.random.default_rng(4)
    train = _train_sessions(rng)
    pop, sknn = PopRecommender().fit(train), SKNNRecommender().fit(train)
    registry = Registry(settings.registry)
    champion = _register(registry, pop, "pop", tmp_path)
    challenger = _register(registry, sknn, "sknn", tmp_path)
    url = str(settings.published)
    release.bootstrap(registry, url, "recommender", champion, "test")
    state = release.admit(registry, url, "recommender", challenger, "test")
    records = _write_log(settings, pop, champion, state.experiment, rng)
    with duckdb.connect(str(settings.warehouse_path)) as con:  # the mart's stand-in
        frame = pd.DataFrame(  # noqa: F841 - read by DuckDB by name
            {
                "session_day": [dt.date(2026, 1, 10)] * len(train),
                "product_skus": [" ".join(s) for s in train],
                "first_view_at": pd.date_range("2026-01-10", periods=len(train), freq="s"),
                "session_key": [f"k{i}" for i in range(len(train))],
            }
        )
        con.execute("create table main.session_sequences as select * from frame")

    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        result = defs.resolve_job_def(RELEASE_LOOP).execute_in_process(
            instance=instance, partition_key=dt.datetime.now(dt.UTC).date().isoformat()
        )
    assert result.success
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        rows = con.execute("select * from main.recommender_replay").fetchdf()

    # the same estimates from the records written, computed without the warehouse
    log = pd.DataFrame(
        {
            "exposure_id": [r["id"] for r in records],
            "session_id": [r["session_id"] for r in records],
            "context": [r["context"] for r in records],
            "items": [r["items"] for r in records],
            "propensities": [r["propensities"] for r in records],
            "clicks": [[int(i == r.get("clicked")) for i in r["items"]] for r in records],
            "explored": [r["explored"] for r in records],
        }
    )
    model = offpolicy.fit_click_model(offpolicy.TransitionModel.fit(train), log)
    for version, recommender in ((champion, pop), (challenger, sknn)):
        lists = offpolicy.target_lists(recommender.recommend_batch, log)
        expected = offpolicy.replay(log, lists, model)
        got = rows[(rows["target_version"] == version) & (rows["target_role"] != "logging")]
        got = got.set_index("estimator")
        assert set(got.index) == {"ips", "snips", "dm", "dr"}
        for name, estimate in expected.items():
            assert got.loc[name, "value"] == pytest.approx(estimate.value, rel=1e-6)
            assert got.loc[name, "high"] == pytest.approx(estimate.high, rel=1e-6)
            assert got.loc[name, "exposures"] == len(records)
    logged = rows[rows["estimator"] == "logged"]
    assert logged["value"].iloc[0] == pytest.approx(offpolicy.logged_ctr(log).value)

    # kNN follows the walk, POP does not: the challenger is estimated better than the champion
    warehouse = build_resources(settings, build_dbt_project(settings))["warehouse"]
    found = replay_asset.read_replay(warehouse, champion, challenger)
    assert found.exposures == len(records) and found.estimate > found.champion_ctr
    # the controller's look read it: the gate is one of its guardrails, passed; the stage
    # holds on its shadow scores and hours
    look = result.asset_materializations_for_node("recommender_rollout")[0].metadata
    assert look["action"].value == "hold" and "shadow scores" in look["reason"].value
    assert look["guardrail_replay_dr"].value.startswith("ok")
    assert look["guardrail_replay_dr_value"].value == pytest.approx(found.high)
