"""Monitoring of the recommender champion: `recommender_monitoring` grades each day's sessions
(t+1 from 1..t) against what the champion did on its own test days. Recommending is the cost,
so a seeded sample of `max_sessions` sessions is evaluated, the day's and the test days' alike,
and the sample's standard error of HR@20 is recorded beside it."""

import datetime as dt
import math
from collections.abc import Iterator

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Failure,
    MetadataValue,
    PartitionsDefinition,
)

from orchestration.monitoring.config import RECOMMENDER, RecommenderMonitoringConfig
from orchestration.monitoring.grading import Grade, graded_day, monitoring_asset
from orchestration.monitoring.inputs import (
    cache_frame,
    cache_json,
    cached_frame,
    cached_json,
    one_day,
    published,
    sessions,
)
from skiff.settings import Settings


def build_recommender_monitoring_asset(
    settings: Settings, partitions: PartitionsDefinition
) -> AssetsDefinition:
    @monitoring_asset(
        RECOMMENDER,
        partitions,
        deps=[AssetKey("session_sequences"), AssetKey("recommender_champion")],
        checks={
            "hr_drop": "HR@20 on the day relative to the champion's test HR@20: WARN past "
            "warn_hr_drop, ERROR past error_hr_drop.",
            "unseen_requests": "Share of requests whose last item the champion never saw: WARN "
            "past warn_unseen_increase above its share on the champion's test days, ERROR "
            "past error_unseen_increase.",
        },
        description="The published recommender on the day's sessions (t+1 from 1..t): HR@20, "
        "MRR@20, requests for unseen items, popularity of the recommendations; Evidently drift "
        "of those per-request columns against the champion's test days.",
    )
    def recommender_monitoring(
        context: AssetExecutionContext, config: RecommenderMonitoringConfig
    ) -> Iterator:
        from ml.monitoring import (
            RECOMMENDER_CATEGORICAL,
            RECOMMENDER_NUMERICAL,
            data_drift,
            grade,
            recommender_day,
        )
        from ml.recommend.models import Recommender

        day = one_day(context)
        warehouse = context.resources.warehouse
        with published(settings, "recommender") as (manifest, folder):
            model = Recommender.load(folder)
        known = set(model.vocab.items[1:])
        popularity = dict(zip(model.vocab.items[1:], model.popularity[1:].tolist(), strict=True))

        def measure(first: dt.date | str, last: dt.date | str):
            requests = [s for s in sessions(warehouse, first, last) if len(s) >= 2]
            if not requests:
                raise Failure(
                    description="session_sequences has no session of 2+ views in"
                    f" {first} .. {last}",
                    allow_retries=False,  # the data is missing: a retry finds none either
                )
            return recommender_day(
                requests,
                model.recommend_batch,
                known,
                popularity,
                max_sessions=config.max_sessions,
            )

        today = measure(day, day)
        # the champion on its own test days: the baseline of the shares and the distributions
        name = f"recommender-{manifest.version}"
        # the frame first, the metrics last: a reader that finds the metrics finds both
        baseline = cached_json(settings, f"{name}.json")
        reference = cached_frame(settings, f"{name}.parquet") if baseline is not None else None
        if reference is None or baseline is None:
            window = manifest.extra["test_window"]
            measured = measure(window["start"], window["end"])
            reference, baseline = measured.points, measured.metrics
            cache_frame(settings, f"{name}.parquet", reference)
            cache_json(settings, f"{name}.json", baseline)
        drift = data_drift(
            reference,
            today.points,
            numerical=RECOMMENDER_NUMERICAL,
            categorical=RECOMMENDER_CATEGORICAL,
            drift_share=config.drift_share,
        )
        m = today.metrics
        test_hr = float(manifest.metrics["hr_at_20"])
        hr_drop = 1 - m["hr_at_20"] / test_hr if test_hr > 0 else math.nan
        hr_severity = grade(hr_drop, config.warn_hr_drop, config.error_hr_drop)
        hr_se = m["hr_at_20_se"]
        sample = (
            f"{m['sampled_sessions']:,.0f} of {m['sessions']:,.0f} sessions, "
            f"{m['predictions']:,.0f} predictions; 95% interval "
            f"{m['hr_at_20_ci95_low']:.3f} .. {m['hr_at_20_ci95_high']:.3f}"
        )
        unseen_increase = m["unseen_request_share"] - baseline["unseen_request_share"]
        unseen_severity = grade(
            unseen_increase, config.warn_unseen_increase, config.error_unseen_increase
        )
        yield from graded_day(
            context,
            settings,
            RECOMMENDER,
            day,
            report=drift,
            grades=[
                Grade(
                    "hr_drop",
                    hr_severity,
                    hr_drop,
                    f"HR@20 {m['hr_at_20']:.3f} ± {1.96 * hr_se:.3f} ({sample}) against "
                    f"{test_hr:.3f} on the test days (relative drop {hr_drop:.1%}; warn > "
                    f"{config.warn_hr_drop:.0%}, error > {config.error_hr_drop:.0%})",
                    {
                        "hr_drop": float(hr_drop),
                        "hr_drop_se": float(hr_se / test_hr) if test_hr > 0 else math.nan,
                        "sampled_sessions": float(m["sampled_sessions"]),
                    },
                ),
                Grade(
                    "unseen_requests",
                    unseen_severity,
                    unseen_increase,
                    f"{m['unseen_request_share']:.1%} of requests end on an item the champion "
                    f"never saw, against {baseline['unseen_request_share']:.1%} on its test days "
                    f"(increase {unseen_increase:+.1%}; warn > {config.warn_unseen_increase:.0%}, "
                    f"error > {config.error_unseen_increase:.0%})",
                    {
                        "unseen_request_share": float(m["unseen_request_share"]),
                        "unseen_increase": float(unseen_increase),
                    },
                ),
            ],
            summary=lambda severity: (
                f"HR@20 {m['hr_at_20']:.3f} ± {1.96 * hr_se:.3f} on {sample} (test "
                f"{test_hr:.3f}), unseen requests "
                f"{m['unseen_request_share']:.2%}: {severity}"
            ),
            metadata={
                **{k: float(v) for k, v in m.items()},
                "test_hr_at_20": test_hr,
                "reference_unseen_request_share": float(baseline["unseen_request_share"]),
                "unseen_increase": float(unseen_increase),
                "hr_drop": float(hr_drop),
                "sample": MetadataValue.text(sample),
                "drift_share": float(drift.drift_share),
                "drifted_columns": drift.n_drifted,
                "most_drifted": MetadataValue.md(drift.markdown()),
                "champion_version": MetadataValue.text(manifest.version),
            },
        )

    return recommender_monitoring
