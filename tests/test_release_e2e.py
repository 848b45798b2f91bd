"""The release loop end to end: a real `skiff serve` on 127.0.0.1, simulated shoppers from
the data's world, and the rollout controllers' looks as real Dagster runs on a real DuckDB
(serving log -> raw tables -> dbt marts -> experiment_results -> rollouts).

One small world, trained once with POP as the first recommender champion and the best model
that passes the offline gates admitted as challenger. The simulator knows each variant's
true click-through, so the test checks the controller against the truth: the challenger it
promotes is truly better, and POP, admitted again by an operator against the new champion,
is rolled back by the replay gate before any shopper sees it: its off-policy estimate on the
champion's explored, logged traffic falls short of the champion's logged click-through. The
registry's history, the published experiments.json and what the server answers must agree at
the end of each ramp.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import httpx
import pytest

from ml import release
from ml.registry import Registry
from ml.simulate import world as simulated_world
from ml.synthetic import GeneratorConfig, generate
from orchestration.definitions import TRAIN_MODELS
from orchestration.demo import training_windows
from orchestration.demo_release import release_looks, server
from orchestration.runs import run_days, run_job
from skiff.settings import ensure_home, load_settings
from tests.conftest import AUTOMATION_VARIABLES

PROBLEM = "recommender"
CONFIG = GeneratorConfig(days=6, sessions_per_day=600, seed=5, start=dt.date(2026, 1, 5))
POLICY = {
    "stages": ["shadow:0", "25%:0.25", "50%:0.5"],
    "min_sessions": 60,
    "min_hours": 0.0,
    "n_star": 300,
    "replay_min_exposures": 200,
}
SMALL_MODELS = {
    "conversion_model_hgb": {"max_iter": 20},
    "conversion_model_gru": {"epochs": 1, "hidden": 8},
    "recommender_candidate_gru": {"params_json": json.dumps({"epochs": 2})},
}
# Each decision is a sequential test on random traffic (which sessions a variant gets hashes
# the experiment's name, which holds the versions' training times), so the look budget has a
# wide margin: in runs here a phase was decided after 2 to 6 looks of 250 sessions, and 8 such
# looks once fell short. 500 sessions a look cost little beyond each look's Dagster run.
LOOKS = {"sessions_per_look": 500, "max_looks": 12, "policy": POLICY}
# The rollback at shadow waits for the replay's interval to clear the threshold, narrowing with
# the champion's logged traffic: in a clean-clone CI run it still straddled it after 12 looks
# (24,024 exposures, upper bound 0.2045 against 0.1953, falling about 0.004 a look). A phase
# ends as soon as it is decided, so a larger budget costs only the runs that need it.
ROLLBACK_LOOKS = {**LOOKS, "max_looks": 24}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A SKIFF_HOME with the marts built and the models trained: POP champion, the best
    recommender admitted as challenger at the first stage; conversion without a challenger."""
    root = tmp_path_factory.mktemp("release") / "skiff"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKIFF_HOME", str(root))
        patch.setenv("SKIFF_ENV", "local")
        cleared = ("DAGSTER_HOME", "SKIFF_DAGSTER_HOME", "SKIFF_ARTIFACTS_URL")
        for name in (*cleared, *AUTOMATION_VARIABLES):
            patch.delenv(name, raising=False)
        settings = ensure_home(load_settings())
        days = generate(settings.landing, CONFIG).days
        assert run_days(settings, days[0], days[-1])
        ops = {
            **{name: {"config": config} for name, config in SMALL_MODELS.items()},
            **training_windows(days[0], days[-1]),
            "recommender_champion": {"config": {"bootstrap": "baseline"}},
        }
        assert run_job(settings, TRAIN_MODELS, ops=ops)
        yield settings


def _served(url: str) -> dict:
    """The recommender experiment the server runs now, once it has reloaded."""
    time.sleep(1.5)
    return httpx.get(f"{url}/readyz", timeout=5).json()["experiments"][PROBLEM]


def _true_ctr(reports: list, role_variant: str) -> float:
    """The simulator's true click-through of a variant over all looks (exposure-weighted)."""
    rows = [v for r in reports for v in r.variants if v.problem == PROBLEM]
    rows = [v for v in rows if v.variant == role_variant]
    return sum(v.expected_clicks for v in rows) / sum(v.exposures for v in rows)


@pytest.mark.e2e
@pytest.mark.slow
def test_a_better_challenger_ramps_to_champion_and_a_worse_one_is_rolled_back(home):
    settings = home
    registry = Registry(settings.registry)
    first = release.load_state(registry, PROBLEM)
    assert registry.manifest(PROBLEM, first.champion).algorithm == "pop"
    assert first.challenger is not None and first.stage_name == "shadow"
    world = simulated_world(CONFIG, "pre")

    with server(settings, settings.home / "logs" / "serve.log") as url:
        reports = first_reports = release_looks(settings, url, world, seed=1, **LOOKS)
        # every look ran (release_looks gives None on a failed run) and the server answered all
        assert reports and all(r.error_share == 0 and r.sessions_run > 0 for r in reports)
        promoted = release.load_state(registry, PROBLEM)
        assert promoted.champion == first.challenger and promoted.challenger is None
        # the truth agrees with the decision: the challenger was better for shoppers
        assert _true_ctr(reports, "challenger") > _true_ctr(reports, "champion")
        ramp = [
            e
            for e in registry.history(PROBLEM)
            if e["version"] == first.challenger and e["decided_by"] == release.CONTROLLER
        ]
        assert [(e["role"], e["stage"]) for e in ramp] == [
            ("challenger", "25%"),
            ("challenger", "50%"),
            ("champion", "50%"),
        ]
        assert ramp[-1]["evidence"]["ctr_low"] > 0  # promoted on an always-valid lower bound
        retired = registry.history(PROBLEM)[-1]
        assert (retired["role"], retired["version"]) == ("retired", first.champion)
        served = _served(url)
        written = release.read_serving_config(str(settings.published))[PROBLEM]
        assert served["name"] == written["name"] == f"{PROBLEM}:{promoted.champion}"
        assert served["weights"] == {"champion": 1.0}

        # POP again, by an operator's override, against the better champion
        release.admit(
            registry,
            str(settings.published),
            PROBLEM,
            first.champion,
            "demo of a rollback",
            decided_by="operator",
        )
        reports = release_looks(settings, url, world, seed=2, **ROLLBACK_LOOKS)
        # every look ran (release_looks gives None on a failed run) and the server answered all
        assert reports and all(r.error_share == 0 and r.sessions_run > 0 for r in reports)
        after = release.load_state(registry, PROBLEM)
        assert (after.champion, after.challenger) == (promoted.champion, None)
        last = registry.history(PROBLEM)[-1]
        assert (last["role"], last["version"], last["stage"]) == (
            "rolled_back",
            first.champion,
            "shadow",
        )
        assert last["decided_by"] == release.CONTROLLER and "replay gate" in last["reason"]
        evidence = last["evidence"]
        assert evidence["replay_challenger"] == first.champion
        assert evidence["replay_exposures"] >= POLICY["replay_min_exposures"]
        assert evidence["replay_high"] < 0.95 * evidence["replay_champion_ctr"]
        # no shopper saw it: every exposure of this phase was answered by the champion
        variants = {v.variant for r in reports for v in r.variants if v.problem == PROBLEM}
        assert variants == {"champion"}
        # and the truth agrees: in the first phase POP served truly worse than this champion
        first_phase = _true_ctr(first_reports, "champion")
        assert first_phase < _true_ctr(first_reports, "challenger")
        served = _served(url)
        assert served["weights"] == {"champion": 1.0}
        assert (
            served["name"] == release.read_serving_config(str(settings.published))[PROBLEM]["name"]
        )


@pytest.mark.e2e
@pytest.mark.slow
def test_the_offline_vs_online_table_on_the_trained_candidates(home):
    """The asset on the same world: every candidate and the one built to look good offline, the
    latter with session-kNN's HR@20 exactly but fewer true clicks; numbers in the metadata."""
    from dagster import AssetKey, DagsterInstance

    from orchestration.definitions import OFFLINE_VS_ONLINE
    from orchestration.recommendation.offline_online import ASSET, REPORT, TAIL_FIRST
    from orchestration.reports import read_report

    config = {
        "world_seed": CONFIG.seed,
        "world_products": CONFIG.n_products,
        "logged_sessions": 500,
        "online_sessions": 300,
    }
    assert run_job(home, OFFLINE_VS_ONLINE, ops={ASSET: {"config": config}})
    with DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(AssetKey(ASSET))
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    rows = {r["model"]: r for r in metadata["rows"]}
    assert set(rows) == {"pop", "sknn", "gru", TAIL_FIRST}
    assert rows[TAIL_FIRST]["hr_at_20"] == pytest.approx(rows["sknn"]["hr_at_20"])
    assert rows[TAIL_FIRST]["mrr_at_20"] < rows["sknn"]["mrr_at_20"]
    assert rows[TAIL_FIRST]["true_ctr"] < rows["sknn"]["true_ctr"]
    assert rows["pop"]["true_ctr"] < rows["sknn"]["true_ctr"]
    assert metadata["champion"] in rows  # whichever the release test left champion, if it ran
    for r in rows.values():
        assert 0 <= r["true_ctr_logged"] <= 1 and r["dr_high"] > r["dr_low"]  # an interval
    # the replay and the truth order POP below session-kNN, as shoppers do
    assert rows["pop"]["dr"] < rows["sknn"]["dr"]
    assert rows["pop"]["true_ctr_logged"] < rows["sknn"]["true_ctr_logged"]
    assert "rank_correlation_hr_at_20" in metadata and "rank_correlation_dr" in metadata
    assert "| IPS |" in metadata["table"] and metadata["table"] in read_report(home, REPORT)
