"""The rollout policy on evidence built by hand, and the transitions on a real registry folder
whose serving configuration the server's own parser reads."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import uuid
from pathlib import Path

import pytest

from ml import release
from ml.experiments import Comparison, Evidence, Health
from ml.registry import Registry
from serving.experiments import parse

NOW = dt.datetime(2026, 2, 1, 12, tzinfo=dt.UTC)
POLICY = release.Policy()  # shadow, 1%, 5%, 25%, 50%; 1000 sessions and 24 h per stage


def _comparison(metric: str, control: float, diff: float, half_width: float) -> Comparison:
    return Comparison(
        metric=metric,
        control=control,
        treatment=control + diff,
        absolute=diff,
        low=diff - half_width,
        high=diff + half_width,
        p_value=0.5,
        fixed_low=diff - half_width / 2,
        fixed_high=diff + half_width / 2,
        fixed_p_value=0.5,
        relative=diff / control,
        width_ratio=0.8,
    )


def _evidence(
    stage: str = "1%",
    stage_sessions: int = 1200,
    *,
    ctr: tuple[float, float] = (0.002, 0.004),  # (difference, half width) at control 0.10
    conversion: tuple[float, float] = (0.0, 0.004),  # at control 0.05
    errors: tuple[float, float] = (0.001, 0.001),  # (control, treatment) error rates
    p99: tuple[float, float] = (20.0, 22.0),
    srm_p: float = 0.4,
    shadow_scores: int = 0,
    experiment: str = "recommender:v1:vs:v2",
) -> Evidence:
    return Evidence(
        problem="recommender",
        experiment=experiment,
        primary="ctr",
        control=Health(60_000, 300_000, errors[0], p99[0]),
        treatment=Health(stage_sessions, 6_000, errors[1], p99[1]),
        comparisons={
            "ctr": _comparison("ctr", 0.10, *ctr),
            "conversion": _comparison("conversion", 0.05, *conversion),
        },
        srm_p_value=srm_p,
        stage=stage,
        stage_sessions=stage_sessions,
        stage_started_at="2026-01-31T11:00:00+00:00",
        shadow_scores=shadow_scores,
        first_at="2026-01-30T11:00:00+00:00",
        last_at="2026-02-01T11:59:00+00:00",
    )


def _state(stage: int = 1, hours_ago: float = 25.0) -> release.RolloutState:
    s = POLICY.stages[stage]
    return release.RolloutState(
        problem="recommender",
        champion="v1",
        challenger="v2",
        stage=stage,
        stage_name=s.name,
        traffic=s.traffic,
        stage_started_at=(NOW - dt.timedelta(hours=hours_ago)).isoformat(),
        experiment="recommender:v1:vs:v2",
        since="2026-01-28T00:00:00+00:00",
    )


def _replay(
    estimate: float = 0.11,
    half_width: float = 0.01,
    champion_ctr: float = 0.10,
    exposures: int = 5000,
    challenger: str = "v2",
) -> release.ReplayCheck:
    return release.ReplayCheck(
        estimator="dr",
        challenger=challenger,
        champion="v1",
        estimate=estimate,
        low=estimate - half_width,
        high=estimate + half_width,
        champion_ctr=champion_ctr,
        exposures=exposures,
        days="2026-01-31 .. 2026-02-01",
    )


def _guardrails(decision: release.Decision) -> dict[str, release.Guardrail]:
    return {g.name: g for g in decision.guardrails}


# --- the policy -------------------------------------------------------------------------------


def test_policy_defaults_and_validation():
    assert [(s.name, s.traffic) for s in POLICY.stages] == [
        ("shadow", 0.0),
        ("1%", 0.01),
        ("5%", 0.05),
        ("25%", 0.25),
        ("50%", 0.5),
    ]
    assert (POLICY.min_sessions, POLICY.min_hours, POLICY.decision) == (1000, 24.0, "superior")
    with pytest.raises(ValueError, match="rise strictly"):
        release.Policy(stages=(release.Stage("a", 0.1), release.Stage("b", 0.05)))
    with pytest.raises(ValueError, match="distinct"):
        release.Policy(stages=(release.Stage("a", 0.1), release.Stage("a", 0.2)))
    with pytest.raises(ValueError, match=r"min_sessions = 0.*alpha = 1.5"):
        release.Policy(min_sessions=0, alpha=1.5)
    with pytest.raises(ValueError, match="decision must be one of"):
        release.Policy(decision="better")
    with pytest.raises(ValueError, match="last stage must show"):
        release.Policy(stages=(release.Stage("shadow", 0.0),))
    configured = release.Policy.from_dict(
        {"stages": [{"name": "10%", "traffic": 0.1}, {"name": "all", "traffic": 1}], "alpha": 0.1}
    )
    assert configured.stages == (release.Stage("10%", 0.1), release.Stage("all", 1.0))
    with pytest.raises(ValueError, match=r"unknown policy field\(s\) \['min_days'\]"):
        release.Policy.from_dict({"min_days": 2})


def test_advance_when_the_stage_met_its_minimums():
    decision = release.decide(POLICY, _state(stage=1), _evidence(), NOW)
    assert (decision.action, decision.stage, decision.stage_name) == ("advance", 2, "5%")
    assert decision.traffic == 0.05
    assert "1,200 challenger sessions" in decision.reason and "25.0 h" in decision.reason
    assert all(g.ok for g in decision.guardrails)
    assert set(_guardrails(decision)) == {"error_rate", "p99_latency_ms", "ctr", "conversion"}
    assert decision.evidence["ctr_low"] == pytest.approx(-0.002)
    assert decision.evidence["treatment_sessions"] == 1200


def test_shadow_counts_shadow_scores():
    state = _state(stage=0)
    few = _evidence("shadow", 0, shadow_scores=999)
    decision = release.decide(POLICY, state, few, NOW)
    assert decision.action == "hold" and "999 shadow scores of the 1,000" in decision.reason
    enough = dataclasses.replace(few, shadow_scores=1000)
    decision = release.decide(POLICY, state, enough, NOW, _replay())
    assert (decision.action, decision.stage_name, decision.traffic) == ("advance", "1%", 0.01)


def test_replay_gate_before_the_first_shopper():
    """At the first stage the recommender needs a replay estimate on enough logged exposures;
    one whose upper bound is below the champion's logged CTR less the margin rolls back."""
    state = _state(stage=0)
    shadow = _evidence("shadow", 0, shadow_scores=5000)
    waiting = release.decide(POLICY, state, shadow, NOW)
    assert waiting.action == "hold"
    assert "no replay estimate of v2 on the logs of v1 yet" in waiting.reason
    few = release.decide(POLICY, state, shadow, NOW, _replay(exposures=999))
    assert few.action == "hold" and "999 logged champion exposures of the 1,000" in few.reason
    other = release.decide(POLICY, state, shadow, NOW, _replay(challenger="v9"))
    assert other.action == "hold" and "no replay estimate of v2" in other.reason
    undefined = release.decide(POLICY, state, shadow, NOW, _replay(champion_ctr=math.nan))
    assert undefined.action == "hold" and "undefined" in undefined.reason

    # threshold (1 - 0.05) * 0.10 = 0.095: an upper bound of 0.0949 fails, 0.0951 passes
    worse = release.decide(POLICY, state, shadow, NOW, _replay(0.0849, 0.01))
    assert worse.action == "rollback" and "replay gate" in worse.reason
    gate = _guardrails(worse)["replay_dr"]
    assert (gate.ok, gate.value, gate.threshold) == (False, pytest.approx(0.0949), 0.095)
    assert worse.evidence["replay_estimate"] == pytest.approx(0.0849)
    close = release.decide(POLICY, state, shadow, NOW, _replay(0.0851, 0.01))
    assert close.action == "hold" and _guardrails(close)["replay_dr"].ok
    assert "cannot tell yet" in close.reason  # 0.0751 .. 0.0951 straddles 0.095
    # it passes once the lower bound reaches the threshold
    passed = release.decide(POLICY, state, shadow, NOW, _replay(0.1051, 0.01))
    assert passed.action == "advance" and "replay dr 0.1051 vs logged 0.1000" in passed.reason

    # not gated: a later stage, the conversion problem, or the gate switched off
    later = release.decide(POLICY, _state(stage=1), _evidence(), NOW, _replay(0.05))
    assert later.action == "advance" and "replay_dr" not in _guardrails(later)
    conversion = dataclasses.replace(state, problem="conversion")
    assert release.decide(POLICY, conversion, shadow, NOW).action == "advance"
    off = dataclasses.replace(POLICY, replay_gate=False)
    assert release.decide(off, state, shadow, NOW).action == "advance"


@pytest.mark.parametrize(
    ("sessions", "hours", "expected"),
    [
        (340, 25.0, ["340 challenger sessions of the 1,000 needed"]),
        (1200, 3.0, ["3.0 h of the 24 h needed"]),
        (999, 23.9, ["999 challenger sessions", "23.9 h of the 24 h"]),
    ],
)
def test_hold_until_enough_sessions_and_time(sessions, hours, expected):
    decision = release.decide(POLICY, _state(2, hours), _evidence("5%", sessions), NOW)
    assert (decision.action, decision.stage_name, decision.traffic) == ("hold", "5%", 0.05)
    for text in expected:
        assert text in decision.reason


def test_hold_while_the_server_is_on_another_stage_or_nothing_is_logged():
    decision = release.decide(POLICY, _state(stage=2), _evidence("1%", 5000), NOW)
    assert decision.action == "hold" and "waiting for the server" in decision.reason
    decision = release.decide(POLICY, _state(stage=2), None, NOW)
    assert decision.action == "hold" and "no exposures" in decision.reason
    other = _evidence(experiment="recommender:v1:vs:v9")
    assert release.decide(POLICY, _state(), other, NOW).action == "hold"


@pytest.mark.parametrize(
    ("change", "breached", "value", "threshold"),
    [
        # +0.6 points of errors against at most +0.5
        ({"errors": (0.001, 0.007)}, "error_rate", 0.006, 0.005),
        # 90 ms > 1.5 x 40 ms
        ({"p99": (40.0, 90.0)}, "p99_latency_ms", 90.0, 60.0),
        # ctr upper bound -0.006 + 0.0005 < -5% x 0.10
        ({"ctr": (-0.006, 0.0005)}, "ctr", -0.0055, -0.005),
        # conversion upper bound -0.004 + 0.001 < -5% x 0.05
        ({"conversion": (-0.004, 0.001)}, "conversion", -0.003, -0.0025),
    ],
)
def test_rollback_on_each_guardrail(change, breached, value, threshold):
    decision = release.decide(POLICY, _state(stage=3), _evidence("25%", 40, **change), NOW)
    assert (decision.action, decision.stage, decision.traffic) == ("rollback", None, 0.0)
    states = _guardrails(decision)
    assert not states[breached].ok
    assert states[breached].value == pytest.approx(value)
    assert states[breached].threshold == pytest.approx(threshold)
    assert all(g.ok for name, g in states.items() if name != breached)
    assert breached in decision.reason and "stage 25%" in decision.reason


def test_latency_under_the_floor_never_breaches():
    # 30 ms is 6 x the champion's 5 ms, but under the 50 ms floor
    decision = release.decide(POLICY, _state(), _evidence(p99=(5.0, 30.0)), NOW)
    assert decision.action == "advance"
    assert _guardrails(decision)["p99_latency_ms"].threshold == 50.0


def test_error_rate_and_latency_wait_for_enough_challenger_exposures():
    bad = _evidence(errors=(0.001, 0.05), p99=(20.0, 400.0))
    few = dataclasses.replace(bad, treatment=dataclasses.replace(bad.treatment, exposures=150))
    assert release.decide(POLICY, _state(), few, NOW).action == "advance"
    assert release.decide(POLICY, _state(), bad, NOW).action == "rollback"


def test_a_worse_metric_within_the_margin_is_no_breach():
    # ctr upper bound -0.004 + 0.0005 = -0.0035 > -0.005: worse, but within the margin
    decision = release.decide(POLICY, _state(), _evidence(ctr=(-0.004, 0.0005)), NOW)
    assert decision.action == "advance" and _guardrails(decision)["ctr"].ok


def test_sample_ratio_mismatch_holds_but_errors_still_roll_back():
    decision = release.decide(POLICY, _state(), _evidence(srm_p=1e-5), NOW)
    assert decision.action == "hold"
    assert "sample ratio mismatch (p = 1e-05 < 0.001)" in decision.reason
    assert release.decide(POLICY, _state(), _evidence(srm_p=0.0011), NOW).action == "advance"
    broken = _evidence(srm_p=1e-5, errors=(0.0, 0.5))
    assert release.decide(POLICY, _state(), broken, NOW).action == "rollback"


def test_promote_at_the_last_stage_when_superior():
    last = _state(stage=4)
    better = _evidence("50%", 30_000, ctr=(0.005, 0.004))  # interval +0.001 .. +0.009
    decision = release.decide(POLICY, last, better, NOW)
    assert (decision.action, decision.stage, decision.traffic) == ("promote", None, 1.0)
    assert "superior" in decision.reason and "+0.0010 .. +0.0090" in decision.reason
    unsure = _evidence("50%", 30_000, ctr=(0.003, 0.004))  # -0.001 .. +0.007
    decision = release.decide(POLICY, last, unsure, NOW)
    assert decision.action == "hold" and "not yet superior" in decision.reason
    # the same evidence at an earlier stage advances: only the last stage promotes
    early = release.decide(POLICY, _state(stage=3), dataclasses.replace(better, stage="25%"), NOW)
    assert early.action == "advance"


def test_promote_when_non_inferior_within_the_margin():
    policy = release.Policy(decision="non_inferior", non_inferiority_margin=0.02)
    # the bound is -2% x 0.10 = -0.002; the interval -0.0015 .. +0.0025 clears it
    evidence = _evidence("50%", 30_000, ctr=(0.0005, 0.002))
    decision = release.decide(policy, _state(stage=4), evidence, NOW)
    assert decision.action == "promote" and "non-inferior" in decision.reason
    assert release.decide(POLICY, _state(stage=4), evidence, NOW).action == "hold"
    # -0.0025 .. +0.0015: the lower bound is below -0.002
    worse = _evidence("50%", 30_000, ctr=(-0.0005, 0.002))
    assert release.decide(policy, _state(stage=4), worse, NOW).action == "hold"


def test_no_challenger_holds_and_an_unknown_stage_restarts_the_ramp():
    alone = release.RolloutState("recommender", "v1", experiment="recommender:v1")
    assert release.decide(POLICY, alone, None, NOW).action == "hold"
    policy = release.Policy(stages=(release.Stage("2%", 0.02), release.Stage("20%", 0.2)))
    decision = release.decide(policy, _state(stage=2), _evidence("5%"), NOW)
    assert (decision.action, decision.stage, decision.stage_name) == ("advance", 0, "2%")


# --- the serving configuration ----------------------------------------------------------------


def test_serving_config_per_stage_is_what_the_server_parses():
    shadow = release.serving_config(_state(stage=0))
    assert shadow["variants"] == [{"name": "champion", "role": "champion", "weight": 1.0}]
    assert (shadow["shadow"], shadow["stage"]) == ("challenger", "shadow")
    five = release.serving_config(_state(stage=2))
    assert five == {
        "name": "recommender:v1:vs:v2",
        "stage": "5%",
        "variants": [
            {"name": "challenger", "role": "challenger", "weight": 0.05},
            {"name": "champion", "role": "champion", "weight": 0.95},
        ],
        "shadow": None,
    }
    alone = release.serving_config(release.RolloutState("recommender", "v1", experiment="x"))
    assert alone["variants"] == [{"name": "champion", "role": "champion", "weight": 1.0}]
    assert alone["shadow"] is None and alone["stage"] is None
    experiments = parse({"recommender": five, "conversion": shadow}, "experiments.json")
    assert experiments["recommender"].weights == {"challenger": 0.05, "champion": 0.95}
    assert experiments["conversion"].shadow == "challenger"


def test_serving_config_file_is_replaced_whole(tmp_path):
    url = str(tmp_path / "published")
    assert release.read_serving_config(url) == {}
    release.write_serving_config(url, {"recommender": release.serving_config(_state())})
    assert json.loads((tmp_path / "published" / release.EXPERIMENTS_FILE).read_text())
    assert not list((tmp_path / "published").glob("*.tmp-*"))
    (tmp_path / "published" / release.EXPERIMENTS_FILE).write_text("{oops")
    with pytest.raises(ValueError, match=r"experiments\.json is not JSON"):
        release.read_serving_config(url)


def test_state_round_trip():
    state = _state(stage=3)
    assert release.RolloutState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    with pytest.raises(ValueError, match=r"unknown \['colour'\]"):
        release.RolloutState.from_dict({**state.to_dict(), "colour": "red"})


# --- transitions on a registry ----------------------------------------------------------------


def _versions(registry: Registry, tmp_path: Path, n: int) -> list[str]:
    versions = []
    for i in range(n):
        folder = tmp_path / f"model-{i}"
        folder.mkdir()
        (folder / "weights.bin").write_bytes(f"model {i}".encode())
        manifest = registry.register(
            "recommender",
            folder,
            algorithm=f"algo{i}",
            params={},
            metrics={"hr_at_20": 0.1 * i},
            training_window={},
        )
        versions.append(manifest.version)
    return versions


def _served(published: Path) -> dict:
    entry = json.loads((published / release.EXPERIMENTS_FILE).read_text())["recommender"]
    parse({"recommender": entry}, "experiments.json")  # what the server would accept
    return entry


@pytest.fixture
def world(tmp_path):
    registry = Registry(tmp_path / "registry")
    return registry, tmp_path / "published", _versions(registry, tmp_path, 3)


def test_bootstrap_admit_ramp_and_promote(world):
    registry, published, (v0, v1, _) = world
    url = str(published)
    state = release.bootstrap(registry, url, "recommender", v0, "POP counts", now=NOW)
    assert registry.roles("recommender") == {"champion": v0}
    assert _served(published)["variants"] == [
        {"name": "champion", "role": "champion", "weight": 1.0}
    ]
    assert (published / "recommender" / "champion.json").exists()
    with pytest.raises(release.ReleaseError, match="already has a champion"):
        release.bootstrap(registry, url, "recommender", v1, "again", now=NOW)

    state = release.admit(registry, url, "recommender", v1, "gates passed", now=NOW)
    assert registry.roles("recommender") == {"champion": v0, "challenger": v1}
    assert (state.stage_name, state.traffic, state.experiment) == (
        "shadow",
        0.0,
        f"recommender:{v0}:vs:{v1}",
    )
    assert _served(published)["shadow"] == "challenger"
    assert release.load_state(registry, "recommender") == state

    later = NOW + dt.timedelta(hours=30)
    evidence = _evidence("shadow", 0, shadow_scores=1500, experiment=state.experiment)
    replay = _replay(challenger=v1)
    decision = release.decide(POLICY, state, evidence, later, replay)
    state = release.apply(registry, url, state, decision, now=later)
    assert (state.stage, state.stage_name, state.stage_started_at) == (1, "1%", later.isoformat())
    assert _served(published)["variants"][0] == {
        "name": "challenger",
        "role": "challenger",
        "weight": 0.01,
    }
    step = registry.history("recommender")[-1]
    assert (step["role"], step["version"], step["stage"], step["traffic"]) == (
        "challenger",
        v1,
        "1%",
        0.01,
    )
    assert step["decided_by"] == "rollout controller" and step["evidence"]["shadow_scores"] == 1500

    last = dataclasses.replace(state, stage=4, stage_name="50%", traffic=0.5)
    registry.set_rollout("recommender", last.to_dict())  # as if it had ramped on
    better = _evidence("50%", 30_000, ctr=(0.005, 0.004), experiment=state.experiment)
    decision = release.decide(POLICY, last, better, later + dt.timedelta(days=2))
    assert decision.action == "promote"
    state = release.apply(registry, url, last, decision, now=later + dt.timedelta(days=2))
    assert registry.roles("recommender") == {"champion": v1}
    assert state == release.load_state(registry, "recommender")
    assert state.challenger is None and state.experiment == f"recommender:{v1}"
    assert _served(published) == release.serving_config(state)
    assert json.loads((published / "recommender" / "champion.json").read_text())["version"] == v1

    history = registry.history("recommender")
    assert [(h["role"], h["version"], h["decided_by"]) for h in history] == [
        ("champion", v0, "bootstrap"),
        ("challenger", v1, "offline gates"),
        ("challenger", v1, "rollout controller"),
        ("champion", v1, "rollout controller"),
        ("retired", v0, "rollout controller"),
    ]
    for line in history:
        assert {"at", "problem", "version", "role", "previous", "stage", "traffic"} <= set(line)
        assert {"decided_by", "reason", "evidence"} <= set(line)
    assert history[0]["traffic"] == 1.0 and history[1]["stage"] == "shadow"
    assert (history[3]["stage"], history[3]["previous"], history[3]["traffic"]) == ("50%", v0, 1.0)
    assert history[3]["evidence"]["ctr_low"] == pytest.approx(0.001)
    # the replaced champion is retired, never labelled challenger
    assert all(h["version"] != v0 for h in history if h["role"] == "challenger")


def test_rollback_stops_traffic_and_is_recorded(world):
    registry, published, (v0, v1, _) = world
    url = str(published)
    release.bootstrap(registry, url, "recommender", v0, "first", now=NOW)
    state = release.admit(registry, url, "recommender", v1, "gates passed", now=NOW)
    state = dataclasses.replace(state, stage=1, stage_name="1%", traffic=0.01)
    bad = _evidence("1%", 50, errors=(0.0, 0.2), experiment=state.experiment)
    decision = release.decide(POLICY, state, bad, NOW)
    state = release.apply(registry, url, state, decision, now=NOW)
    assert registry.roles("recommender") == {"champion": v0}
    assert state.challenger is None and _served(published)["variants"][0]["role"] == "champion"
    line = registry.history("recommender")[-1]
    assert (line["role"], line["version"], line["traffic"]) == ("rolled_back", v1, 0.0)
    assert line["decided_by"] == "rollout controller" and "error_rate" in line["reason"]
    assert line["evidence"]["treatment_error_rate"] == 0.2
    # the server unloads it: no challenger pointer is left among the published files
    assert not (published / "recommender" / "challenger.json").exists()
    assert (published / "recommender" / "champion.json").exists()
    with pytest.raises(release.ReleaseError, match="no challenger to roll back"):
        release.rollback(registry, url, "recommender", "again")


def test_override_replaces_a_challenger_and_operator_promote_retires(world):
    registry, published, (v0, v1, v2) = world
    url = str(published)
    release.bootstrap(registry, url, "recommender", v0, "first", now=NOW)
    release.admit(registry, url, "recommender", v1, "gates passed", now=NOW)
    with pytest.raises(release.ReleaseError, match="already the recommender champion"):
        release.admit(registry, url, "recommender", v0, "again")
    state = release.admit(
        registry, url, "recommender", v2, "operator's choice", decided_by="operator/override"
    )
    assert state.challenger == v2 and state.experiment == f"recommender:{v0}:vs:{v2}"
    lines = registry.history("recommender")[-2:]
    assert [(h["role"], h["version"]) for h in lines] == [("rolled_back", v1), ("challenger", v2)]
    assert {h["decided_by"] for h in lines} == {"operator/override"}

    release.promote(registry, url, "recommender", v1, "operator knows best")
    assert registry.roles("recommender") == {"champion": v1}
    tail = registry.history("recommender")[-3:]
    assert [(h["role"], h["version"], h["decided_by"]) for h in tail] == [
        ("champion", v1, "operator"),
        ("retired", v0, "operator"),
        ("rolled_back", v2, "operator"),  # it was measured against the old champion
    ]
    assert _served(published)["name"] == f"recommender:{v1}"


def test_state_that_disagrees_with_the_roles_is_refused(world):
    registry, published, (v0, v1, _) = world
    release.bootstrap(registry, str(published), "recommender", v0, "first", now=NOW)
    assert release.load_state(registry, "recommender").challenger is None
    registry.assign("recommender", "challenger", v1, "by hand")
    with pytest.raises(release.ReleaseError, match=r"changed outside ml\.release"):
        release.load_state(registry, "recommender")
    assert release.load_state(registry, "conversion") is None


def test_memory_filesystem_works_too(tmp_path):
    registry = Registry(f"memory://skiff-release-{uuid.uuid4().hex}")
    (v0,) = _versions(registry, tmp_path, 1)
    url = f"memory://skiff-published-{uuid.uuid4().hex}"
    release.bootstrap(registry, url, "recommender", v0, "first", now=NOW)
    assert release.read_serving_config(url)["recommender"]["name"] == f"recommender:{v0}"
    assert math.isclose(registry.history("recommender")[0]["traffic"], 1.0)


def test_rollout_config_reads_the_policy_and_refuses_an_unknown_estimator():
    from orchestration.experiments.rollout import RolloutConfig

    policy = RolloutConfig(stages=["shadow:0", "10%:0.1"], replay_min_exposures=300).policy()
    assert [(s.name, s.traffic) for s in policy.stages] == [("shadow", 0.0), ("10%", 0.1)]
    assert (policy.replay_gate, policy.replay_min_exposures) == (True, 300)
    with pytest.raises(ValueError, match="replay_estimator must be one of"):
        RolloutConfig(replay_estimator="DR").policy()
    with pytest.raises(ValueError, match="not `name:share`"):
        RolloutConfig(stages=["shadow"]).policy()
