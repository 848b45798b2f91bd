"""Monitoring checks tied to their day: a warning on day 1 and a pass on day 2 are each recorded
as that day's, the summary check names day 1, and the day's Evidently report says which asset,
day and model version it grades, with Skiff's thresholds — real Dagster materializations on a
persistent instance, real Evidently reports."""

import datetime as dt

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckKey,
    AssetExecutionContext,
    AssetKey,
    Config,
    DagsterInstance,
    ResourceDefinition,
    materialize,
)

from ml.monitoring import data_drift, grade
from orchestration.monitoring.grading import (
    SUMMARY_CHECK,
    Grade,
    graded_day,
    monitoring_asset,
    report_relpath,
)
from orchestration.partitions import daily_partitions

ASSET = "toy_drift"
DAY1, DAY2 = dt.date(2026, 1, 5), dt.date(2026, 1, 6)
WARN, ERROR = 0.15, 0.9


class ToyConfig(Config):
    shift: float = 0.0


def _toy_asset(settings):
    @monitoring_asset(
        ASSET,
        daily_partitions(settings),
        deps=[],
        checks={"score_drift": f"WARN past {WARN}, ERROR past {ERROR}."},
        description="A drifting column, graded the way every monitoring asset grades a day.",
    )
    def toy_drift(context: AssetExecutionContext, config: ToyConfig):
        day = dt.date.fromisoformat(context.partition_key)
        rng = np.random.default_rng(0)
        reference = pd.DataFrame({"score": rng.normal(0, 1, 500)})
        current = pd.DataFrame({"score": rng.normal(config.shift, 1, 500)})
        drift = data_drift(
            reference, current, numerical=["score"], numerical_threshold=WARN, drift_share=1.0
        )
        score = drift.score("score")
        severity = grade(score, WARN, ERROR)
        yield from graded_day(
            context,
            settings,
            ASSET,
            day,
            report=drift,
            grades=[
                Grade(
                    "score_drift",
                    severity,
                    score,
                    f"score drift {score:.3f} (warn > {WARN}, error > {ERROR})",
                )
            ],
            summary=lambda s: f"score drift {score:.3f}: {s}",
            metadata={"drift_score": float(score)},
            model_version="v-toy-1",
        )

    return toy_drift


def _run(settings, day: dt.date, shift: float) -> None:
    with DagsterInstance.get() as instance:
        result = materialize(
            [_toy_asset(settings)],
            instance=instance,
            partition_key=day.isoformat(),
            resources={"warehouse": ResourceDefinition.none_resource()},
            run_config={"ops": {ASSET: {"config": {"shift": shift}}}},
        )
    assert result.success


def _history(check: str) -> list:
    key = AssetCheckKey(AssetKey(ASSET), check)
    with DagsterInstance.get() as instance:
        records = instance.event_log_storage.get_asset_check_execution_history(key, limit=20)
    return [r for r in records if r.event is not None and r.event.asset_check_evaluation]


def test_each_day_keeps_its_own_check_result_and_the_summary_names_the_warned_day(settings):
    _run(settings, DAY1, shift=0.6)  # drifts past WARN, not ERROR
    _run(settings, DAY2, shift=0.0)

    evaluations = [r.event.asset_check_evaluation for r in _history("score_drift")]
    by_day = {e.partition: e for e in evaluations}
    assert len(evaluations) == 2 and set(by_day) == {DAY1.isoformat(), DAY2.isoformat()}
    assert not by_day[DAY1.isoformat()].passed and by_day[DAY2.isoformat()].passed
    assert by_day[DAY1.isoformat()].description.startswith(f"{DAY1}: ")
    # no result without its day, and no "planned" row left per day without a result
    with DagsterInstance.get() as instance:
        for check in ("score_drift", SUMMARY_CHECK):
            key = AssetCheckKey(AssetKey(ASSET), check)
            records = instance.event_log_storage.get_asset_check_execution_history(key, limit=20)
            assert all(r.partition for r in records), [(r.partition, r.status) for r in records]
            assert all(r.event and r.event.asset_check_evaluation for r in records)

    summary = {
        r.event.asset_check_evaluation.partition: r.event.asset_check_evaluation
        for r in _history(SUMMARY_CHECK)
    }
    latest = summary[DAY2.isoformat()]
    assert not latest.passed  # day 2 passed, but the week's worst day warned
    values = {k: v.value for k, v in latest.metadata.items()}
    assert values["worst_severity"] == "warn" and values["worst_day"] == DAY1.isoformat()
    assert values["days_graded"] == 2
    assert f"worst warn on {DAY1}" in latest.description
    assert summary[DAY1.isoformat()].metadata["worst_day"].value == DAY1.isoformat()


def test_report_names_asset_day_version_and_skiff_thresholds(settings):
    _run(settings, DAY1, shift=0.6)
    page = (settings.reports / report_relpath(ASSET, DAY1)).read_text()
    banner = page[page.index('<div id="skiff-banner"') :]
    banner = banner[: banner.index("</div>")]
    assert f"{ASSET} &mdash; {DAY1}" in banner
    assert "v-toy-1" in banner
    assert f"warn &gt; {WARN}, error &gt; {ERROR}" in banner  # the check's own thresholds
    assert f"&ge; {WARN:g}" in banner  # the column threshold the drift was measured with
    assert "<b>warn</b>" in banner
    assert page.index("skiff-banner") < page.index("drawDashboard")  # before Evidently's widgets


def test_evidentlys_dataset_threshold_is_the_one_skiff_grades_on():
    """Evidently's report says when it calls the data set drifted; the feature-drift asset
    passes its ERROR share, so the report no longer states Evidently's default 0.5."""
    from orchestration.monitoring.config import FeatureDriftConfig

    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"x": rng.normal(0, 1, 300), "y": rng.normal(0, 1, 300)})
    current = pd.DataFrame({"x": rng.normal(1, 1, 300), "y": rng.normal(0, 1, 300)})
    ours = FeatureDriftConfig().error_drift_share
    drift = data_drift(reference, current, numerical=["x", "y"], drift_share=ours)
    page = drift.snapshot.get_html_str(as_iframe=False)
    assert f"Dataset drift detection threshold is {ours:g}" in page
    assert "Dataset drift detection threshold is 0.5" not in page
