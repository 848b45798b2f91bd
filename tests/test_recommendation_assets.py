"""The recommendation assets materialized for real: generated days -> landing -> dbt marts ->
training set -> candidates -> evaluation and checks -> first champion (bootstrap) published with
its lookup -> batch predictions in the warehouse. Then a worse candidate is proposed and
refused, and the operator's override admits it as challenger (the demo's --bad-challenger)."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from dagster import (
    AssetSelection,
    DagsterInstance,
    Definitions,
    define_asset_job,
)

from ml import release
from ml.recommend.compare import best_row
from ml.registry import Registry, load_published
from ml.synthetic import GeneratorConfig, generate
from orchestration.definitions import build_definitions
from orchestration.handoff import Handoff
from orchestration.recommendation.champion import first_champion
from orchestration.recommendation.config import CHAMPION, GATE_NAMES
from orchestration.runs import run_days

START = dt.date(2026, 1, 5)
JOB = "recommender_refresh"
CHAMPION_ONLY = "recommender_champion_only"  # its inputs come from the last refresh
FAST = {"ops": {"recommender_candidate_gru": {"config": {"params_json": '{"epochs": 3}'}}}}


def _definitions(settings) -> Definitions:
    jobs = [
        define_asset_job(JOB, selection=AssetSelection.groups("recommendation")),
        define_asset_job(CHAMPION_ONLY, selection=AssetSelection.assets(CHAMPION)),
    ]
    return Definitions.merge(build_definitions(settings), Definitions(jobs=jobs))


def _materialize(settings, run_config: dict, job_name: str = JOB):
    job = _definitions(settings).resolve_job_def(job_name)
    with DagsterInstance.get() as instance:
        return job.execute_in_process(instance=instance, run_config=run_config)


def _metadata(result, key: str) -> dict:
    [event] = [
        e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _row(model: str, validation_hr: float, test_hr: float) -> dict:
    return {"model": model, "validation_hr_at_20": validation_hr, "hr_at_20": test_hr}


def test_best_candidate_is_chosen_on_the_validation_days():
    # sknn is best on the validation days, gru on the test days: the validation days choose
    rows = [_row("pop", 0.20, 0.21), _row("sknn", 0.48, 0.40), _row("gru", 0.45, 0.52)]
    assert best_row(rows)["model"] == "sknn"
    rows[1]["hr_at_20"], rows[2]["hr_at_20"] = 0.0, 1.0  # whatever the test days say
    assert best_row(rows)["model"] == "sknn"
    with pytest.raises(ValueError, match="validation_hr_at_20"):
        best_row([{"model": "pop", "hr_at_20": 0.2}])


def _candidate(hr: float, **failed: bool) -> dict:
    checks = [
        {"name": n, "gating": True, "passed": not failed.get(n, False)} for n in GATE_NAMES[:2]
    ]
    return {"version": f"v-{hr}", "row": {"hr_at_20": hr}, "checks": checks}


def test_first_champion_is_the_best_passing_model_and_pop_counts():
    candidates = {"pop": _candidate(0.2, beats_pop=True), "gru": _candidate(0.4)}
    assert first_champion(candidates, "gru", "best")[:2] == ("gru", None)
    assert first_champion(candidates, "gru", "baseline")[:2] == ("pop", "gru")
    # a candidate that fails a gate: POP serves (beating itself is not asked of it)
    candidates["gru"] = _candidate(0.4, unseen_items=True)
    champion, challenger, reason = first_champion(candidates, "gru", "best")
    assert (champion, challenger) == ("pop", None)
    assert "gru: gating check(s) failed: unseen_items" in reason
    assert first_champion(candidates, "gru", "baseline")[:2] == ("pop", None)
    candidates["pop"] = _candidate(0.2, beats_pop=True, unseen_items=True)
    assert first_champion(candidates, "gru", "best")[:2] == (None, None)
    assert first_champion({"pop": _candidate(0.2, beats_pop=True)}, "pop", "best")[0] == "pop"


@pytest.mark.slow
def test_recommendation_assets_end_to_end(settings):
    generate(settings.landing, GeneratorConfig(days=10, sessions_per_day=1500, seed=5, start=START))
    assert run_days(settings, START, START + dt.timedelta(days=9))

    result = _materialize(settings, FAST)
    assert result.success

    training = _metadata(result, "recommender_training_set")
    assert training["test_start"] == training["test_end"] == "2026-01-14"
    assert training["validation_start"] == training["validation_end"] == "2026-01-13"
    assert training["train_end"] == "2026-01-12" and training["train_sessions"] > 3000
    assert training["validation_sessions"] > 300 and training["test_sessions"] > 300

    evaluation = _metadata(result, "recommender_evaluation")
    assert "| pop |" in evaluation["leaderboard"] and "| gru |" in evaluation["leaderboard"]
    assert evaluation["best"] in ("sknn", "gru")
    assert "| model | validation HR@20 | HR@20 |" in evaluation["leaderboard"]
    # measured both ways: HR@20 as the server shows lists by default, viewed products left out
    lines = evaluation["leaderboard"].splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    header, _, *rows = itertools.takewhile(lambda line: line.startswith("|"), lines[top:])
    column = [c.strip() for c in header.strip("|").split("|")].index("HR@20 new items")
    new_items = {
        cells[0].strip(): float(cells[column])
        for cells in (row.strip("|").split("|") for row in rows)
    }
    assert set(new_items) == {"pop", "sknn", "gru"}
    assert all(0 < value <= 1 for value in new_items.values()), new_items
    # the choice is the argmax of the validation column; what is reported is the test days'
    selection = evaluation["selection"]
    assert set(selection) == {"pop", "sknn", "gru"}
    assert evaluation["best"] == max(selection, key=lambda a: selection[a]["validation_hr_at_20"])
    assert evaluation["validation_hr_at_20"] == selection[evaluation["best"]]["validation_hr_at_20"]
    assert evaluation["hr_at_20"] == selection[evaluation["best"]]["test_hr_at_20"]
    assert evaluation["hr_at_20"] > 0.3 and 0 < evaluation["ndcg_at_20"] < evaluation["hr_at_20"]
    report = settings.reports / "recommender" / "runs" / result.run_id / "leaderboard.md"
    assert report.read_text().strip() == evaluation["leaderboard"].strip()
    assert evaluation["report"] == (
        f"http://127.0.0.1:3001/reports/recommender/runs/{result.run_id}/leaderboard.md"
    )
    latest = settings.reports / "recommender" / "leaderboard.md"
    assert latest.read_text() == report.read_text()
    # the steps' values went through the hand-off store as JSON under this run's id, no pickles
    store = Handoff(settings.handoff_root)
    handed = sorted(
        Path(p).relative_to(store.run_path(result.run_id)).as_posix()
        for p in store.fs.find(store.run_path(result.run_id))
    )
    assert handed == sorted(
        f"{name}.json"
        for name in (
            "recommender_training_set",
            *(f"recommender_candidate_{a}" for a in ("pop", "sknn", "gru")),
            "recommender_evaluation",
            "recommender_champion",
        )
    )
    with DagsterInstance.get() as instance:
        window = store.load(instance, "recommender_training_set")["window"]
    assert len(window) == 6 and window == {k: training[k] for k in window}

    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(GATE_NAMES) <= set(checks)
    assert checks["beats_pop"].passed and checks["unseen_items"].passed

    champion = _metadata(result, "recommender_champion")
    assert (champion["decision"], champion["decided_by"]) == ("bootstrap", "bootstrap")
    assert champion["challenger"] == "none" and champion["proposed_role"] == "champion"
    registry = Registry(settings.registry)
    assert {m.algorithm for m in registry.versions("recommender")} == {"pop", "sknn", "gru"}
    version = registry.roles("recommender")["champion"]
    assert champion["champion"] == version and champion["champion_algorithm"] == evaluation["best"]
    assert release.read_serving_config(str(settings.published))["recommender"] == {
        "name": f"recommender:{version}",
        "stage": None,
        "variants": [{"name": "champion", "role": "champion", "weight": 1.0}],
        "shadow": None,
    }

    manifest, folder = load_published(settings.published, "recommender")
    assert manifest.version == version
    # the registry and monitoring's baseline hold the test days' numbers
    assert manifest.metrics["hr_at_20"] == evaluation["hr_at_20"]
    assert manifest.extra["test_window"] == {"start": "2026-01-14", "end": "2026-01-14"}
    assert manifest.extra["validation"]["hr_at_20"] == evaluation["validation_hr_at_20"]
    lookup = pd.read_parquet(folder / "next_items.parquet")
    assert len(lookup) > 1000 and lookup["next_items"].map(len).eq(20).all()
    from ml.recommend.models import Recommender

    model = Recommender.load(folder)
    sku, items = lookup.iloc[0]["product_sku_hash"], lookup.iloc[0]["next_items"]
    assert model.recommend([sku], 20) == list(items)  # the lookup is this model's

    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        rows = con.execute(
            "select count(*), count(distinct product_sku_hash), min(model_version)"
            " from main.recommender_next_items"
        ).fetchone()
    assert rows == (20 * len(lookup), len(lookup), version)

    # an operator proposes POP: it fails the POP gate and is worse, so it is not admitted
    again = _materialize(
        settings,
        {**FAST, "ops": {**FAST["ops"], "recommender_champion": {"config": {"candidate": "pop"}}}},
    )
    assert again.success
    kept = _metadata(again, "recommender_champion")
    assert kept["decision"] == "kept" and kept["proposed_role"] == "none"
    assert "beats_pop" in kept["why"] and "below the champion" in kept["why"]
    assert registry.roles("recommender") == {"champion": version}
    assert load_published(settings.published, "recommender")[0].version == version

    # the override admits POP as challenger anyway (the demo's bad challenger); the champion
    # stays, and the server is told to start the ramp in shadow
    override = {"ops": {"recommender_champion": {"config": {"challenger": "pop"}}}}
    admitted = _materialize(settings, override, CHAMPION_ONLY)
    assert admitted.success
    meta = _metadata(admitted, "recommender_champion")
    assert meta["decision"] == "admitted as challenger (override)"
    assert (meta["decided_by"], meta["challenger_algorithm"]) == ("operator/override", "pop")
    pop = registry.roles("recommender")["challenger"]
    assert registry.roles("recommender")["champion"] == version
    assert load_published(settings.published, "recommender", "challenger")[0].version == pop
    served = release.read_serving_config(str(settings.published))["recommender"]
    assert (served["name"], served["stage"], served["shadow"]) == (
        f"recommender:{version}:vs:{pop}",
        "shadow",
        "challenger",
    )
    history = registry.history("recommender")
    assert [(h["role"], h["version"], h["decided_by"]) for h in history] == [
        ("champion", version, "bootstrap"),
        ("challenger", pop, "operator/override"),
    ]
    assert history[1]["evidence"]["algorithm"] == "pop" and history[1]["stage"] == "shadow"
