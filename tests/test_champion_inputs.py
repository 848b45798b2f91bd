"""A champion step reads the training set its evaluation was computed on, not the latest one,
and each evaluation run writes its own leaderboard.

Real Dagster runs of the real recommender candidates, evaluation and champion through the
hand-off IO manager on a persistent instance; only `recommender_training_set` is a stand-in
(sessions that walk item i -> i + 1, with the window a config names), so no marts are built.
Runs: A and B train and evaluate on different test days, C materializes only a training set
(yet another window), D runs the champion alone. D's latest `training_set` is C's and its
latest `recommender_evaluation` is B's: the champion must judge B's candidate on B's test days.
"""

import datetime as dt
import uuid

import numpy as np
from dagster import (
    AssetSelection,
    Config,
    DagsterInstance,
    Definitions,
    asset,
    define_asset_job,
)

from ml.registry import Registry
from orchestration.handoff import HandoffIOManager
from orchestration.recommendation.assets import build_candidate_asset, build_evaluation_asset
from orchestration.recommendation.champion import build_champion_asset
from orchestration.recommendation.config import (
    ALGORITHMS,
    CHAMPION,
    EVALUATION,
    LEADERBOARD_REPORT,
    TRAINING_SET,
    candidate_asset_name,
    split_window,
)
from orchestration.reports import read_report, run_relpath

ITEMS = [f"sku{i:02d}" for i in range(40)]
FAST = {candidate_asset_name("gru"): {"config": {"params_json": '{"epochs": 1}'}}}


class WindowConfig(Config):
    test_day: str
    seed: int = 0


@asset(name=TRAINING_SET)
def stand_in_training_set(config: WindowConfig) -> dict:
    """Walks i -> i + 1 split like the real asset's value, on the days the config names."""
    rng = np.random.default_rng(config.seed)

    def walks(n: int) -> list[list[str]]:
        return [
            [ITEMS[start + j] for j in range(int(rng.integers(2, 6)))]
            for start in rng.integers(0, 34, size=n)
        ]

    test = dt.date.fromisoformat(config.test_day)
    validation = test - dt.timedelta(days=1)
    window = split_window(validation - dt.timedelta(days=7), validation, test, test)
    return {"train": walks(600), "validation": walks(80), "test": walks(80), "window": window}


def _definitions(settings) -> Definitions:
    candidates = [candidate_asset_name(a) for a in ALGORITHMS]
    return Definitions(
        assets=[
            stand_in_training_set,
            *(build_candidate_asset(settings, a) for a in ALGORITHMS),
            build_evaluation_asset(settings),
            build_champion_asset(settings),
        ],
        jobs=[
            define_asset_job(
                "train", selection=AssetSelection.assets(TRAINING_SET, *candidates, EVALUATION)
            ),
            define_asset_job("training_set", selection=AssetSelection.assets(TRAINING_SET)),
            define_asset_job("champion", selection=AssetSelection.assets(CHAMPION)),
        ],
        resources={"io_manager": HandoffIOManager(root=str(settings.handoff_root))},
    )


def _run(defs: Definitions, job: str, ops: dict):
    with DagsterInstance.get() as instance:
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, run_config={"ops": ops}
        )
    assert result.success
    return result


def _metadata(result, key: str) -> dict:
    [event] = [
        e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_champion_alone_reads_its_evaluations_training_set_and_leaderboards_are_per_run(
    settings,
):
    defs = _definitions(settings)

    def run(job: str, ops: dict):
        return _run(defs, job, ops)

    days = {"a": "2026-01-14", "b": "2026-01-21", "c": "2026-01-28"}
    a = run("train", {**FAST, TRAINING_SET: {"config": {"test_day": days["a"], "seed": 1}}})
    b = run("train", {**FAST, TRAINING_SET: {"config": {"test_day": days["b"], "seed": 2}}})

    # each evaluation run's leaderboard is its own file, linked from its materialization; the
    # latest copy is the last run's
    boards = {}
    for result in (a, b):
        evaluation = _metadata(result, EVALUATION)
        relpath = run_relpath(LEADERBOARD_REPORT, result.run_id)
        assert relpath == f"recommender/runs/{result.run_id}/leaderboard.md"
        assert evaluation["report"] == f"http://127.0.0.1:3001/reports/{relpath}"
        boards[result.run_id] = read_report(settings, relpath)
        assert boards[result.run_id].strip() == evaluation["leaderboard"].strip()
    assert boards[a.run_id] != boards[b.run_id]
    assert read_report(settings, LEADERBOARD_REPORT) == boards[b.run_id]

    run("training_set", {TRAINING_SET: {"config": {"test_day": days["c"], "seed": 3}}})
    d = run("champion", {})
    # the champion-only run judged B's candidate on B's test days, not on C's latest set
    champion = _metadata(d, CHAMPION)
    best = _metadata(b, EVALUATION)["best_version"]
    assert champion["decision"] == "bootstrap" and champion["proposed"] == best
    (first,) = Registry(settings.registry).history("recommender")
    assert first["version"] == best
    assert first["evidence"]["test_days"] == f"{days['b']} .. {days['b']}", first["evidence"]


def test_a_champion_on_object_storage_names_its_url_and_a_rerun_publishes_nothing_more(
    settings, monkeypatch
):
    """With SKIFF_ARTIFACTS_URL set the registry's published root is a URL, not a path: the
    step publishes, reports where, and a rerun (a retry) finds the version in its role."""
    url = f"memory://skiff-champion-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SKIFF_ARTIFACTS_URL", url)
    defs = _definitions(settings)

    def run(job: str, ops: dict):
        return _run(defs, job, ops)

    run("train", {**FAST, TRAINING_SET: {"config": {"test_day": "2026-01-14", "seed": 1}}})
    first = _metadata(run("champion", {}), CHAMPION)
    assert first["decision"] == "bootstrap"
    assert first["published_to"] == f"{url}/published/recommender"
    registry = Registry(settings.registry)
    assert registry.url == f"{url}/registry"
    assert registry.role("recommender", "champion").version == first["champion"]
    again = _metadata(run("champion", {}), CHAMPION)
    assert again["decision"] == "unchanged" and again["champion"] == first["champion"]
    assert len(registry.history("recommender")) == 1
