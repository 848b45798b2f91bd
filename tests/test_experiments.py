"""Experiment statistics (ml.experiments) and the experiment_results asset on a real log
written by the server's EventLog."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance

from ml import experiments as stats
from ml import sequential as seq
from orchestration.definitions import RELEASE_LOOP, build_definitions
from orchestration.experiments.assets import RESULTS, SRM_CHECK
from serving.eventlog import EventLog


def _sessions(
    rng: np.random.Generator,
    n: int,
    weights: dict[str, float],
    ctr: dict[str, float],
    *,
    stage: str | None = "50%",
    start: str = "2026-01-05T00:00:00.000Z",
    purchase_slope: float = 0.0,
) -> pd.DataFrame:
    """Mart rows (`experiment_sessions`) of one period: sessions with 1-8 exposures and their
    own click propensity (exposures of a session are correlated); purchases depend on
    `history_adds` by `purchase_slope` (a pre-exposure covariate CUPED can use)."""
    names = list(weights)
    variant = rng.choice(names, n, p=np.array(list(weights.values())) / sum(weights.values()))
    exposures = rng.integers(1, 9, n)
    rate = np.array([ctr[v] for v in variant])
    clicked = rng.binomial(exposures, rng.beta(rate * 4, (1 - rate) * 4))
    adds = rng.poisson(1.0, n)
    purchased = rng.random(n) < np.clip(0.05 + purchase_slope * adds, 0, 1)
    return pd.DataFrame(
        {
            "problem": "recommender",
            "experiment": "recs",
            "stage": stage,
            "weights": json.dumps(weights, sort_keys=True),
            "variant": variant,
            "role": np.where(variant == "champion", "champion", "challenger"),
            "model_version": np.where(variant == "champion", "v1", "v2"),
            "session_id": [f"{start}-{i}" for i in range(n)],
            "first_at": start,
            "exposures": exposures,
            "clicked": clicked,
            "added": (adds > 0).astype(int),
            "purchased": purchased.astype(int),
            "errors": 0,
            "history_events": adds + rng.poisson(3, n),
            "history_adds": adds,
        }
    )


NO_EXPOSURES = pd.DataFrame(
    columns=["problem", "experiment", "stage", "variant", "role", "latency_ms", "error", "at"]
)
HALF = {"challenger": 0.5, "champion": 0.5}


def test_intervals_cover_the_truth_on_clustered_sessions():
    """95% intervals of A/A tests contain 0 about 95% of the time (fixed) and at least 95%
    (always valid), exposures being correlated within a session; treating exposures as
    independent units would cover far less."""
    rng = np.random.default_rng(3)
    fixed = valid = naive = 0
    runs = 200
    for _ in range(runs):
        rows = _sessions(rng, 1600, HALF, {"champion": 0.1, "challenger": 0.1})
        c = stats.evidence(rows, NO_EXPOSURES, "recommender", "recs", cuped=False)
        ctr = c.comparisons["ctr"]
        fixed += ctr.fixed_low <= 0 <= ctr.fixed_high
        valid += ctr.low <= 0 <= ctr.high
        shown = rows.groupby("role")["exposures"].sum()
        se = math.sqrt(sum(ctr.control * (1 - ctr.control) / shown[r] for r in shown.index))
        naive += abs(ctr.absolute) <= 1.96 * se
    assert 0.91 <= fixed / runs <= 0.99
    assert valid / runs >= 0.95
    assert naive / runs < 0.9  # about 0.85: a design effect near 2


def test_a_real_difference_is_found():
    rng = np.random.default_rng(4)
    rows = _sessions(rng, 20_000, HALF, {"champion": 0.08, "challenger": 0.12})
    ctr = stats.evidence(rows, NO_EXPOSURES, "recommender", "recs").comparisons["ctr"]
    assert ctr.low > 0 and ctr.p_value < 1e-6
    assert ctr.low < 0.04 < ctr.high and ctr.relative == pytest.approx(0.5, abs=0.1)
    assert ctr.fixed_low > ctr.low and ctr.fixed_high < ctr.high  # the price of looking often


def test_periods_are_compared_within_themselves():
    """A 5% stage on a busy day, a 50% stage on a quiet one, no true effect: sessions pooled
    over the ramp make the challenger look worse; the stratified estimate does not."""
    rng = np.random.default_rng(6)
    busy = _sessions(rng, 40_000, {"challenger": 0.05, "champion": 0.95},
                     {"champion": 0.2, "challenger": 0.2}, stage="5%")  # fmt: skip
    quiet = _sessions(rng, 40_000, HALF, {"champion": 0.1, "challenger": 0.1},
                      stage="50%", start="2026-01-06T00:00:00.000Z")  # fmt: skip
    found = stats.evidence(pd.concat([busy, quiet]), NO_EXPOSURES, "recommender", "recs")
    ctr = found.comparisons["ctr"]
    assert ctr.treatment - ctr.control < -0.02  # Simpson: pooled sessions mislead
    assert ctr.low < 0 < ctr.high and abs(ctr.absolute) < 0.005
    assert found.srm_p_value > 0.001  # each period matches its own weights
    assert found.stage == "50%" and found.stage_sessions == (quiet["role"] == "challenger").sum()
    assert found.stage_started_at == "2026-01-06T00:00:00.000Z"


def test_cuped_narrows_the_interval_by_the_variance_it_explains():
    rng = np.random.default_rng(8)
    rows = _sessions(rng, 20_000, HALF, {"champion": 0.1, "challenger": 0.1}, purchase_slope=0.3)
    plain = stats.evidence(rows, NO_EXPOSURES, "recommender", "recs", cuped=False)
    adjusted = stats.evidence(rows, NO_EXPOSURES, "recommender", "recs")
    conversion = adjusted.comparisons["conversion"]
    assert plain.comparisons["conversion"].width_ratio == 1.0
    treated = (rows["role"] == "challenger").to_numpy()
    explained = seq.cuped(rows["purchased"], rows[["history_events", "history_adds"]], treated)
    # the width goes with the standard error: sqrt(1 - R^2) here, about 0.8
    assert conversion.width_ratio == pytest.approx(
        math.sqrt(1 - explained.variance_reduction), abs=0.01
    )
    assert conversion.width_ratio < 0.9
    assert conversion.low < 0 < conversion.high
    assert adjusted.comparisons["ctr"].width_ratio == pytest.approx(1, abs=0.01)  # nothing to use


def test_health_srm_and_the_shadow_stage():
    rng = np.random.default_rng(10)
    shadow = _sessions(rng, 300, {"champion": 1.0, "challenger": 0.0},
                       {"champion": 0.1, "challenger": 0.1}, stage="shadow")  # fmt: skip
    found = stats.evidence(shadow, NO_EXPOSURES, "recommender", "recs", shadow_scores=280)
    assert found.stage == "shadow" and found.stage_sessions == 0 and found.shadow_scores == 280
    assert math.isnan(found.comparisons["ctr"].low) and math.isnan(found.srm_p_value)
    skewed = _sessions(rng, 4000, {"challenger": 0.44, "champion": 0.56},
                       {"champion": 0.1, "challenger": 0.1})  # fmt: skip
    skewed["weights"] = json.dumps(HALF, sort_keys=True)  # logged 50/50, served 44/56
    latency = rng.lognormal(2, 0.5, 5000)
    exposures = pd.DataFrame(
        {
            "problem": "recommender",
            "experiment": "recs",
            "stage": "50%",
            "variant": np.repeat(["champion", "challenger"], 2500),
            "role": np.repeat(["champion", "challenger"], 2500),
            "latency_ms": latency,
            "error": np.arange(5000) % 50 == 0,
            "at": "2026-01-05T01:00:00.000Z",
        }
    )
    found = stats.evidence(pd.concat([shadow, skewed]), exposures, "recommender", "recs")
    assert found.srm_p_value < 1e-6
    assert found.treatment.p99_latency_ms == pytest.approx(np.quantile(latency[2500:], 0.99))
    assert found.control.error_rate == pytest.approx(0.02) and found.control.exposures == 2500
    assert found.treatment.sessions == (skewed["role"] == "challenger").sum()
    assert stats.evidence(skewed, exposures, "recommender", "other") is None

    (result,) = stats.experiment_results(pd.concat([shadow, skewed]), exposures)
    table = result.variants.set_index("variant")
    assert result.evidence == found and list(table.index) == ["challenger", "champion"]
    ctr = found.comparisons["ctr"]
    assert table.loc["challenger", "ctr_lift_low"] == pytest.approx(ctr.low / ctr.control)
    assert table.loc["champion", "sessions"] == (
        pd.concat([shadow, skewed]).query("role == 'champion'")["session_id"].nunique()
    )
    assert math.isnan(table.loc["champion"].get("ctr_lift", math.nan))


def test_sample_ratio_mismatch():
    statistic, p = stats.srm({"a": 50_800, "b": 49_200}, {"a": 0.5, "b": 0.5})
    # two variants: 800**2 / 50_000 twice, and one degree of freedom, where chi2.sf = erfc
    assert statistic == pytest.approx(25.6, rel=1e-12)
    assert p == pytest.approx(math.erfc(math.sqrt(25.6 / 2)), rel=1e-9) and p < 1e-6
    _, p = stats.srm({"a": 50_100, "b": 49_900}, {"a": 0.5, "b": 0.5})
    assert p > 0.1
    _, p = stats.srm({"a": 900}, {"a": 0.9, "b": 0.1})  # a variant that got nothing
    assert p < 1e-6


def test_sessions_table_is_the_mart_of_a_real_log(tmp_path):
    """Written by the server's EventLog: one row per session and period, history of the
    first exposure, clicks per exposure, errors counted, an unknown exposure id ignored."""
    log = EventLog(tmp_path)
    weights = {"challenger": 0.05, "champion": 0.95}
    for i, (stage, at, events, adds, error) in enumerate(
        [("5%", "T01", 4, 1, False), ("5%", "T00", 2, 0, False), ("25%", "T02", 9, 2, True)]
    ):
        log.write(
            {
                "kind": "exposure", "id": f"e{i}", "at": f"2026-01-05{at}:00:00.000Z",
                "problem": "conversion", "experiment": "conv", "stage": stage,
                "session_id": "s", "variant": "challenger", "role": "challenger",
                "model_version": "v2", "weights": weights, "latency_ms": 1.5, "error": error,
                "history_events": events, "history_adds": adds, "probability": 0.1,
            }
        )  # fmt: skip
    for exposure, action in [("e0", "click"), ("e1", "click"), ("e1", "add"), ("x", "click")]:
        log.write({"kind": "feedback", "exposure_id": exposure, "action": action})
    log.close()
    read = stats.read_log(tmp_path)
    table = stats.sessions_table(read.exposures, read.feedback)
    assert list(table.columns) == list(stats.SESSION_COLUMNS)
    rows = table.set_index("stage")
    assert len(rows) == 2  # the same session in two periods
    first = rows.loc["5%"]
    assert (first["exposures"], first["clicked"], first["added"], first["purchased"]) == (
        2,
        2,
        1,
        0,
    )
    assert (first["history_events"], first["history_adds"], first["errors"]) == (2, 0, 0)
    assert first["first_at"] == "2026-01-05T00:00:00.000Z"
    assert (rows.loc["25%", "errors"], rows.loc["25%", "history_events"]) == (1, 9)
    assert json.loads(first["weights"]) == weights


def test_ctr_lift_is_the_difference_of_ratios_when_arms_see_different_numbers_of_widgets():
    """A challenger that keeps shoppers browsing (9 widgets a session instead of 3) at a higher
    click-through: the lift must be the difference of the click ratios, not of per-session
    values centred on the pooled ratio (that gave +0.076 for a true +0.100)."""
    rng = np.random.default_rng(12)
    rows = _sessions(rng, 40_000, HALF, {"champion": 0.1, "challenger": 0.2})
    treated = rows["role"] == "challenger"
    rows["exposures"] = np.where(treated, 9, 3)
    rows["clicked"] = rng.binomial(rows["exposures"], np.where(treated, 0.2, 0.1))
    found = stats.evidence(rows, NO_EXPOSURES, "recommender", "recs", cuped=False)
    ctr = found.comparisons["ctr"]
    by_arm = rows.groupby("role")[["clicked", "exposures"]].sum()
    ratios = by_arm["clicked"] / by_arm["exposures"]
    assert ctr.absolute == pytest.approx(ratios["challenger"] - ratios["champion"], abs=1e-12)
    assert ctr.fixed_low < 0.1 < ctr.fixed_high


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
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    for i in range(sessions):
        variant = names[rng.choice(len(names), p=list(shares.values()))]
        role = "champion" if variant == names[0] else "challenger"
        for _ in range(rng.integers(1, 4)):
            exposure_id = uuid.uuid4().hex
            log.write(
                {
                    "kind": "exposure",
                    "id": exposure_id,
                    "at": now,
                    "problem": problem,
                    "experiment": experiment,
                    "stage": "50%",
                    "session_id": f"{experiment}-{i}",
                    "variant": variant,
                    "role": role,
                    "model_version": f"v-{role}",
                    "weights": {n: 1 / len(names) for n in names},
                    "latency_ms": 1.0,
                    "error": False,
                    "history_events": 2,
                    "history_adds": 0,
                    "items": ["a", "b"],
                }
            )
            if rng.random() < ctr[variant]:
                click = {"kind": "feedback", "exposure_id": exposure_id, "action": "click"}
                log.write({**click, "at": now})
                if rng.random() < 0.2:
                    log.write({**click, "action": "purchase", "at": now})


def _release_loop(settings):
    """One run of the release loop on today's log: log -> raw -> marts -> results -> rollouts."""
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        return defs.resolve_job_def(RELEASE_LOOP).execute_in_process(
            instance=instance, partition_key=dt.datetime.now(dt.UTC).date().isoformat()
        )


def _interleave(log: EventLog, experiment: str, sessions: int, rng: np.random.Generator) -> None:
    """Interleaved exposures as the server logs them (mode, teams) with clicks naming an item:
    the challenger's items are clicked twice as often as the champion's."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    chance = {"champion": 0.05, "challenger": 0.10}
    for i in range(sessions):
        for _ in range(rng.integers(1, 4)):
            exposure_id = uuid.uuid4().hex
            items = [f"sku{j}" for j in rng.permutation(8)[:4]]
            teams = ["champion", "challenger"] if rng.random() < 0.5 else ["challenger", "champion"]
            teams = teams * 2
            log.write(
                {
                    "kind": "exposure",
                    "id": exposure_id,
                    "at": now,
                    "problem": "recommender",
                    "experiment": experiment,
                    "mode": "interleaving",
                    "stage": None,
                    "session_id": f"{experiment}-{i}",
                    "variant": "challenger",
                    "role": "challenger",
                    "model_version": "v-challenger",
                    "weights": {"challenger": 1.0},
                    "latency_ms": 1.0,
                    "error": False,
                    "history_events": 2,
                    "history_adds": 0,
                    "items": items,
                    "teams": teams,
                    "context": ["sku9"],
                }
            )
            for item, team in zip(items, teams, strict=True):
                if rng.random() < chance[team]:
                    click = {"kind": "feedback", "exposure_id": exposure_id, "action": "click"}
                    log.write({**click, "item": item, "at": now})


@pytest.mark.slow
def test_experiment_results_asset_reads_the_marts(settings):
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
    _interleave(log, "recs-interleaved", 1500, rng)
    log.close()
    with open(stats.log_file(settings.home / "serving", dt.datetime.now(dt.UTC).date()), "a") as f:
        f.write('{"kind": "exposure", "id": "torn')  # a line cut short by a crash

    result = _release_loop(settings)
    assert result.success
    metadata = result.asset_materializations_for_node(RESULTS)[0].metadata
    assert metadata["experiments"].value == 2  # the interleaving experiment has no A/B arms
    assert metadata["interleaving_experiment"].value == "recs-interleaved"
    assert metadata["interleaving_sessions"].value == 1500
    assert metadata["interleaving_decision"].value == "challenger"
    assert (
        0
        < metadata["interleaving_preference_low"].value
        < metadata["interleaving_preference"].value
    )
    # the true difference is +0.06 clicks per exposure; the always-valid interval sees it
    assert 0 < metadata["recommender_ctr_difference_low"].value < 0.06
    assert metadata["recommender_ctr_difference_high"].value > 0.06
    assert metadata["recommender_srm_p_value"].value > 0.001
    assert metadata["conversion_srm_p_value"].value < 1e-6
    markdown = metadata["results"].value
    assert "`recs-ab`" in markdown and "Sample ratio" in markdown
    assert "### Interleaving" in markdown and "`recs-interleaved`" in markdown
    assert metadata["report"].value.endswith(
        f"/reports/experiments/runs/{result.run_id}/results.md"
    )
    checks = {
        (c.asset_key.to_user_string(), c.check_name): c
        for c in result.get_asset_check_evaluations()
    }
    srm = checks[(RESULTS, SRM_CHECK)]
    assert not srm.passed and "skewed" in srm.description
    assert checks[("serving_log", "lines_reconcile")].passed  # the torn line is quarantined


@pytest.mark.slow
def test_experiment_results_on_an_empty_log(settings):
    result = _release_loop(settings)
    assert result.success
    metadata = result.asset_materializations_for_node(RESULTS)[0].metadata
    assert metadata["experiments"].value == 0 and "No exposures" in metadata["results"].value
    (srm,) = [
        c
        for c in result.get_asset_check_evaluations()
        if c.check_name == SRM_CHECK and c.asset_key.to_user_string() == RESULTS
    ]
    assert srm.passed and math.isnan(srm.metadata["smallest_p_value"].value or math.nan)


def test_release_schedule_reads_yesterday_and_today_in_one_run(settings):
    from dagster import build_schedule_context

    schedule = build_definitions(settings).resolve_schedule_def("release_hourly")
    for tick in (dt.datetime(2026, 12, 2, 0, 5, tzinfo=dt.UTC), dt.datetime(2026, 12, 2, 17)):
        tick = tick.replace(tzinfo=dt.UTC)
        (request,) = schedule.evaluate_tick(
            build_schedule_context(scheduled_execution_time=tick)
        ).run_requests
        assert request.tags["dagster/asset_partition_range_start"] == "2026-12-01"
        assert request.tags["dagster/asset_partition_range_end"] == "2026-12-02"
        assert request.run_key == f"release-{tick:%Y%m%dT%H%M}"
