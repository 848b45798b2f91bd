"""Experiment statistics (ml.experiments) and the experiment_results asset on a real log
written by the server's EventLog."""

from __future__ import annotations

import datetime as dt
import math
import uuid

import numpy as np
import pytest
from dagster import AssetKey, materialize

from ml import experiments as stats
from orchestration.experiments.assets import RESULTS, SRM_CHECK, build_experiment_assets
from serving.eventlog import EventLog


def test_a_proportion_has_the_textbook_variance():
    x = np.array([1] * 30 + [0] * 70)
    estimate = stats.ratio_metric(x, np.ones(100))
    assert estimate.value == pytest.approx(0.3)
    assert estimate.variance == pytest.approx(0.3 * 0.7 / 99)


def _clustered(rng: np.random.Generator, n: int, ctr: float) -> tuple[np.ndarray, np.ndarray]:
    """Sessions with 1-8 exposures and their own click propensity (correlated exposures)."""
    exposures = rng.integers(1, 9, n)
    propensity = rng.beta(ctr * 4, (1 - ctr) * 4, n)
    return rng.binomial(exposures, propensity), exposures


def test_lift_intervals_cover_the_truth_on_clustered_sessions():
    """95% intervals of A/A tests contain 0 about 95% of the time, exposures being correlated
    within a session (treating exposures as independent would cover far less)."""
    rng = np.random.default_rng(3)
    covered = naive_covered = 0
    runs = 400
    for _ in range(runs):
        a = stats.ratio_metric(*_clustered(rng, 800, 0.1))
        b = stats.ratio_metric(*_clustered(rng, 800, 0.1))
        lift = stats.lift(b, a)
        covered += lift.absolute_low <= 0 <= lift.absolute_high
        # exposures as independent units: 4.5 exposures a session on average
        naive = [stats.Estimate(e.value, e.value * (1 - e.value) / 3600, 3600) for e in (a, b)]
        naive_lift = stats.lift(naive[1], naive[0])
        naive_covered += naive_lift.absolute_low <= 0 <= naive_lift.absolute_high
    assert 0.92 <= covered / runs <= 0.98
    assert naive_covered / runs < 0.9


def test_lift_detects_a_real_difference():
    rng = np.random.default_rng(4)
    control = stats.ratio_metric(*_clustered(rng, 5000, 0.08))
    treatment = stats.ratio_metric(*_clustered(rng, 5000, 0.12))
    lift = stats.lift(treatment, control)
    assert lift.absolute_low > 0 and lift.p_value < 1e-6
    assert lift.relative_low < 0.5 < lift.relative_high  # the true relative lift is +50%


def test_sample_ratio_mismatch():
    statistic, p = stats.srm({"a": 50_800, "b": 49_200}, {"a": 0.5, "b": 0.5})
    # two variants: 800**2 / 50_000 twice, and one degree of freedom, where chi2.sf = erfc
    assert statistic == pytest.approx(25.6, rel=1e-12)
    assert p == pytest.approx(math.erfc(math.sqrt(25.6 / 2)), rel=1e-9) and p < 1e-6
    _, p = stats.srm({"a": 50_100, "b": 49_900}, {"a": 0.5, "b": 0.5})
    assert p > 0.1
    _, p = stats.srm({"a": 900}, {"a": 0.9, "b": 0.1})  # a variant that got nothing
    assert p < 1e-6


def _lift(low: float, high: float) -> stats.Lift:
    middle = (low + high) / 2
    return stats.Lift(0.1, 0.1 + middle, middle, low, high, middle, low, high, 0.5)


@pytest.mark.parametrize(
    "primary, guardrail, srm_p, sessions, expected",
    [
        (_lift(0.01, 0.03), _lift(-0.01, 0.01), 0.5, 5000, "promote"),
        (_lift(0.01, 0.03), _lift(-0.03, -0.01), 0.5, 5000, "stop"),  # a guardrail is harmed
        (_lift(-0.03, -0.01), _lift(-0.01, 0.01), 0.5, 5000, "stop"),
        (_lift(-0.01, 0.03), _lift(-0.01, 0.01), 0.5, 5000, "keep"),
        (_lift(0.01, 0.03), _lift(-0.01, 0.01), 0.5, 500, "keep"),  # too few sessions
        (_lift(0.01, 0.03), _lift(-0.01, 0.01), 1e-5, 5000, "stop"),  # broken split
    ],
)
def test_decisions(primary, guardrail, srm_p, sessions, expected):
    decision, reason = stats.decide(primary, [guardrail], srm_p, [sessions, sessions])
    assert decision == expected, reason


def _simulate(
    log: EventLog,
    problem: str,
    experiment: str,
    shares: dict[str, float],
    ctr: dict[str, float],
    sessions: int,
    rng: np.random.Generator,
) -> None:
    """Exposures and feedback as the server logs them; `shares` is the traffic each variant
    really got (the logged weights are 50/50)."""
    names = list(shares)
    for i in range(sessions):
        variant = names[rng.choice(len(names), p=list(shares.values()))]
        role = "champion" if variant == names[0] else "challenger"
        for _ in range(rng.integers(1, 4)):
            exposure_id = uuid.uuid4().hex
            log.write(
                {
                    "kind": "exposure",
                    "id": exposure_id,
                    "at": dt.datetime.now(dt.UTC).isoformat(),
                    "problem": problem,
                    "experiment": experiment,
                    "session_id": f"{experiment}-{i}",
                    "variant": variant,
                    "role": role,
                    "model_version": f"v-{role}",
                    "weights": {n: 1 / len(names) for n in names},
                    "items": ["a", "b"],
                }
            )
            if rng.random() < ctr[variant]:
                log.write({"kind": "feedback", "exposure_id": exposure_id, "action": "click"})
                if rng.random() < 0.2:
                    bought = {"kind": "feedback", "exposure_id": exposure_id, "action": "purchase"}
                    log.write(bought)


def test_experiment_results_asset(settings):
    rng = np.random.default_rng(9)
    log = EventLog(settings.home / "serving")
    _simulate(
        log, "recommender", "recs-ab", {"control": 0.5, "treatment": 0.5},
        {"control": 0.06, "treatment": 0.12}, 3000, rng,
    )  # fmt: skip
    _simulate(
        log, "conversion", "skewed", {"control": 0.56, "treatment": 0.44},
        {"control": 0.1, "treatment": 0.1}, 3000, rng,
    )  # fmt: skip
    log.write({"kind": "feedback", "exposure_id": "f" * 32, "action": "click"})  # no exposure
    log.close()
    with open(stats.log_file(settings.home / "serving", dt.datetime.now(dt.UTC).date()), "a") as f:
        f.write('{"kind": "exposure", "id": "torn')  # a line cut short by a crash

    result = materialize(build_experiment_assets(settings))
    assert result.success
    metadata = result.asset_materializations_for_node(RESULTS)[0].metadata
    assert metadata["recommender_recommendation"].value == "promote"
    assert metadata["recommender_ctr_lift_low"].value > 0.5  # true relative lift +100%
    assert metadata["recommender_srm_p_value"].value > 0.001
    assert metadata["conversion_recommendation"].value == "stop"
    assert metadata["conversion_srm_p_value"].value < 1e-6
    assert metadata["feedback_without_exposure"].value == 1
    assert metadata["unreadable_lines"].value == 1
    markdown = metadata["results"].value
    assert "Recommendation: PROMOTE" in markdown and "sample ratio mismatch" in markdown
    assert metadata["report"].value.endswith("/reports/experiments/results.md")
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == SRM_CHECK and not check.passed
    assert "skewed" in check.description
    assert check.asset_key == AssetKey(RESULTS)


def test_experiment_results_on_an_empty_log(settings):
    result = materialize(build_experiment_assets(settings))
    metadata = result.asset_materializations_for_node(RESULTS)[0].metadata
    assert metadata["experiments"].value == 0 and "No exposures" in metadata["results"].value
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and math.isnan(check.metadata["smallest_p_value"].value or math.nan)
