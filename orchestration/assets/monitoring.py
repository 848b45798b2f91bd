"""Monitoring (group `monitoring`): each day against what the champions were trained on.

Four daily-partitioned assets, one run per day (the Plots tab draws one point per day):

- `conversion_feature_drift`: the day's model inputs (every session prefix) against the
  conversion champion's training window;
- `conversion_prediction_drift`: the day's scores in `conversion_predictions` against the scores
  the same model version gives its own training window;
- `conversion_quality`: the champion on the day's labels (complete once the day is landed:
  visits end at midnight UTC): ROC AUC, calibration, and drift of the label itself;
- `recommender_monitoring`: the recommender champion on the day's sessions: HR@20, MRR@20, the
  share of requests for items it never saw, popularity of what it recommends.

Each saves the full Evidently report as HTML under `$SKIFF_HOME/reports/monitoring/` (linked
from the materialization: a URL the Skiff service serves, and the file path), records numbers
for the Plots tab and a markdown table of the most drifted columns, and grades the day with
asset checks: WARN past a first threshold, ERROR past a second (thresholds in each asset's
config). The worst severity is also recorded as `severity` / `severity_level` metadata, which
the drift sensor reads (orchestration/sensors.py).

References are computed once per model version and cached under
`$SKIFF_HOME/artifacts/monitoring/reference/`, so a nightly run reads only its own day.
"""

import datetime as dt
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    asset,
)
from pydantic import Field

from orchestration.assets.ingestion import partition_days
from orchestration.sql import date_sql
from skiff.settings import Settings

GROUP = "monitoring"
FEATURE_DRIFT = "conversion_feature_drift"
PREDICTION_DRIFT = "conversion_prediction_drift"
QUALITY = "conversion_quality"
RECOMMENDER = "recommender_monitoring"
# Which models each monitoring asset watches: what the drift sensor retrains.
WATCHES: dict[str, str] = {
    FEATURE_DRIFT: "conversion",
    PREDICTION_DRIFT: "conversion",
    QUALITY: "conversion",
    RECOMMENDER: "recommender",
}
# Prefixes of a training window kept as the reference (whole sessions, seeded sample).
REFERENCE_ROWS = 20_000


# --- configuration: the thresholds ------------------------------------------------------------


class FeatureDriftConfig(Config):
    warn_drift_share: float = Field(
        default=0.0,
        description="WARN when the share of drifted input columns passes this (0: any column).",
    )
    error_drift_share: float = Field(
        default=0.2, description="ERROR when the share of drifted input columns passes this."
    )
    numerical_threshold: float = Field(
        default=0.25,
        description="A numerical column drifts at this normed Wasserstein distance.",
    )
    categorical_threshold: float = Field(
        default=0.1, description="A categorical column drifts at this Jensen-Shannon distance."
    )
    max_rows: int = Field(
        default=20_000, description="The day's prefixes compared (whole sessions, seeded sample)."
    )


class PredictionDriftConfig(Config):
    warn_score: float = Field(
        default=0.15, description="WARN past this normed Wasserstein distance of the scores."
    )
    error_score: float = Field(
        default=0.3, description="ERROR past this normed Wasserstein distance of the scores."
    )


class QualityConfig(Config):
    warn_auc_drop: float = Field(
        default=0.03, description="WARN when ROC AUC is this far below the model's test AUC."
    )
    error_auc_drop: float = Field(default=0.08, description="ERROR past this ROC AUC drop.")
    warn_calibration_ratio: float = Field(
        default=1.25,
        description="WARN when predicted/observed purchase rate is above this or below its "
        "inverse.",
    )
    error_calibration_ratio: float = Field(
        default=1.6, description="ERROR past this ratio (or below its inverse)."
    )
    min_buying_sessions: int = Field(
        default=50,
        description="Fewer buying sessions than this on the day: too few labels to grade it "
        "(the metrics are still recorded).",
    )


class RecommenderMonitoringConfig(Config):
    warn_hr_drop: float = Field(
        default=0.10, description="WARN when HR@20 is this fraction below the champion's test HR."
    )
    error_hr_drop: float = Field(default=0.25, description="ERROR past this relative HR drop.")
    warn_unseen_increase: float = Field(
        default=0.1,
        description="WARN when the share of requests ending on an item the model never saw is "
        "this much above its share on the champion's test days (0.1 = 10 points).",
    )
    error_unseen_increase: float = Field(
        default=0.2, description="ERROR past this increase of the unseen share."
    )


# --- helpers ----------------------------------------------------------------------------------


def report_path(settings: Settings, asset_name: str, day: dt.date) -> Path:
    return settings.reports / "monitoring" / asset_name / f"{day.isoformat()}.html"


def reference_dir(settings: Settings) -> Path:
    return settings.artifacts / "monitoring" / "reference"


def _one_day(context: AssetExecutionContext) -> dt.date:
    days = partition_days(context)
    if len(days) != 1:
        raise Failure(
            description=f"monitoring grades one day per run, got {days[0]} .. {days[-1]}: "
            "launch a backfill (one run per day) instead of a single-run range",
            allow_retries=False,
        )
    return days[0]


def _published(settings: Settings, problem: str) -> tuple[Any, Path]:
    from ml.registry import ArtifactError, load_published

    try:
        return load_published(settings.published, problem)
    except ArtifactError as exc:
        raise Failure(
            description=f"{exc}: monitoring compares the day with a published champion; "
            "train and promote one first (job train_models).",
            allow_retries=False,
        ) from exc


def _report_url(settings: Settings, path: Path) -> str:
    from skiff.urls import report_url

    return report_url(settings, path)


def _check_severity(severity: str) -> AssetCheckSeverity:
    return AssetCheckSeverity.ERROR if severity == "error" else AssetCheckSeverity.WARN


def _check(asset_name: str, name: str, severity: str, text: str, **values: Any) -> AssetCheckResult:
    return AssetCheckResult(
        asset_key=asset_name,
        check_name=name,
        passed=severity == "ok",
        severity=_check_severity(severity),
        description=text,
        metadata={"severity": severity, **values},
    )


def _common_metadata(
    settings: Settings, day: dt.date, html: Path, grades: dict[str, tuple[str, float]]
) -> dict[str, Any]:
    """What every monitoring materialization records. `grades` maps each check to its
    severity and value; the drift sensor reads `severity` and quotes `alerts` in its tags."""
    from ml.monitoring import level, worst

    severity = worst(*(g for g, _ in grades.values()))
    alerts = ", ".join(f"{name}={value:.3f} ({g})" for name, (g, value) in grades.items())
    return {
        "day": MetadataValue.text(day.isoformat()),
        "severity": MetadataValue.text(severity),
        "alerts": MetadataValue.text(alerts),
        "severity_level": level(severity),
        "report": MetadataValue.url(_report_url(settings, html)),
        "report_path": MetadataValue.path(str(html)),
    }


def _examples(warehouse: Any, first: dt.date | str, last: dt.date | str) -> pd.DataFrame:
    return warehouse.query(
        f"select * from {warehouse.models_schema}.conversion_examples"
        f" where session_day between {date_sql(first)} and {date_sql(last)}"
    )


def _conversion_reference(
    settings: Settings, warehouse: Any, version: str, log: Any, *, holdout: bool = False
) -> pd.DataFrame:
    """Model inputs, labels and the version's own scores on its training window, or with
    `holdout` on its validation and test days (cached per version).

    Inputs are compared with the training window: what the model learned from. Scores and
    labels are compared with the held-out days, because a model scores its own training rows
    more confidently than any new day, which would read as drift every day.
    """
    from ml.conversion import features, models
    from ml.monitoring import conversion_inputs, sample_sessions
    from ml.registry import Registry

    part = "holdout" if holdout else "train"
    path = reference_dir(settings) / f"conversion-{version}-{part}.parquet"
    if path.exists():
        return pd.read_parquet(path)
    registry = Registry(settings.registry)
    window = registry.manifest("conversion", version).training_window
    first, last = (
        (window["validation_day"], window["test_day"])
        if holdout
        else (window["train_start"], window["train_end"])
    )
    examples = _examples(warehouse, first, last)
    if examples.empty:
        raise Failure(
            description=f"conversion_examples has no rows in {first} .. {last}, the {part} "
            f"days of {version}: rebuild those days first."
        )
    batch = features.batch_from_frame(sample_sessions(examples, REFERENCE_ROWS))
    frame = conversion_inputs(batch)
    frame["purchase_probability"] = models.load_registered(registry, version).predict_proba(batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    log.info(f"{part} reference of {version}: {len(frame):,} prefixes of {first} .. {last}")
    return frame


# --- assets -----------------------------------------------------------------------------------


def _monitoring_asset(
    name: str,
    partitions: PartitionsDefinition,
    *,
    deps: list[AssetKey],
    checks: dict[str, str],
    description: str,
):
    """What every monitoring asset shares: daily partitions (one run per day), the group, the
    warehouse pool, and its checks, described."""
    return asset(
        name=name,
        deps=deps,
        group_name=GROUP,
        partitions_def=partitions,
        kinds={"evidently", "python"},
        pool="warehouse",
        required_resource_keys={"warehouse"},
        check_specs=[
            AssetCheckSpec(check, asset=name, description=text) for check, text in checks.items()
        ],
        description=description,
    )


def build_feature_drift_asset(settings: Settings, partitions: PartitionsDefinition):
    @_monitoring_asset(
        FEATURE_DRIFT,
        partitions,
        deps=[AssetKey("conversion_examples"), AssetKey("conversion_champion")],
        checks={
            "feature_drift": "Share of the conversion model's input columns that drifted from "
            "its training window: WARN past warn_drift_share, ERROR past error_drift_share.",
        },
        description="Evidently data drift of the day's conversion model inputs (every session "
        "prefix) against the champion's training window.",
    )
    def conversion_feature_drift(
        context: AssetExecutionContext, config: FeatureDriftConfig
    ) -> Iterator:
        from ml.conversion import features
        from ml.monitoring import (
            CATEGORICAL_INPUTS,
            NUMERICAL_EXTRA,
            conversion_inputs,
            data_drift,
            grade,
            monitored_features,
            sample_sessions,
        )

        day = _one_day(context)
        warehouse = context.resources.warehouse
        manifest, _ = _published(settings, "conversion")
        reference = _conversion_reference(settings, warehouse, manifest.version, context.log)
        day_examples = _examples(warehouse, day, day)
        if day_examples.empty:
            raise Failure(description=f"conversion_examples has no rows on {day}")
        current = conversion_inputs(
            features.batch_from_frame(sample_sessions(day_examples, config.max_rows))
        )
        drift = data_drift(
            reference,
            current,
            numerical=[*monitored_features(), *NUMERICAL_EXTRA],
            categorical=CATEGORICAL_INPUTS,
            numerical_threshold=config.numerical_threshold,
            categorical_threshold=config.categorical_threshold,
        )
        html = drift.save_html(report_path(settings, FEATURE_DRIFT, day))
        severity = grade(drift.drift_share, config.warn_drift_share, config.error_drift_share)
        top = drift.columns.iloc[0]
        context.log.info(
            f"{day}: {drift.n_drifted}/{drift.n_columns} inputs drifted (share "
            f"{drift.drift_share:.2f}, {severity}); most: {top['column']} {top['score']:.3f}"
        )
        window = manifest.training_window
        yield MaterializeResult(
            metadata={
                **_common_metadata(
                    settings, day, html, {"feature_drift": (severity, drift.drift_share)}
                ),
                "drift_share": float(drift.drift_share),
                "drifted_columns": drift.n_drifted,
                "columns": drift.n_columns,
                "max_column_score": float(top["score"]),
                "most_drifted_column": MetadataValue.text(str(top["column"])),
                "most_drifted": MetadataValue.md(drift.markdown()),
                "champion_version": MetadataValue.text(manifest.version),
                "reference_window": MetadataValue.text(
                    f"{window['train_start']} .. {window['train_end']}"
                ),
                "reference_rows": drift.reference_rows,
                "current_rows": drift.current_rows,
            }
        )
        drifted = drift.columns[drift.columns["drifted"]]["column"].tolist()
        yield _check(
            FEATURE_DRIFT,
            "feature_drift",
            severity,
            f"{drift.n_drifted} of {drift.n_columns} inputs drifted (share "
            f"{drift.drift_share:.2f}; warn > {config.warn_drift_share}, error > "
            f"{config.error_drift_share})" + (f": {', '.join(drifted[:8])}" if drifted else ""),
            drift_share=float(drift.drift_share),
            drifted_columns=drift.n_drifted,
            warn_threshold=config.warn_drift_share,
            error_threshold=config.error_drift_share,
        )

    return conversion_feature_drift


def _day_predictions(warehouse: Any, day: dt.date) -> pd.DataFrame:
    """The day's scores with the label of each prefix."""
    schema = warehouse.models_schema
    return warehouse.query(
        "select p.session_key, p.prefix_length, p.purchase_probability, p.model_version,"
        f" e.will_purchase from {schema}.conversion_predictions p"
        f" join {schema}.conversion_examples e"
        " on e.session_key = p.session_key and e.prefix_length = p.prefix_length"
        f" where p.session_day = {date_sql(day)} and e.session_day = {date_sql(day)}"
    )


def _scored_day(context: AssetExecutionContext, day: dt.date) -> tuple[pd.DataFrame, str]:
    frame = _day_predictions(context.resources.warehouse, day)
    if frame.empty:
        raise Failure(
            description=f"no conversion_predictions on {day}: materialize that partition of "
            "conversion_predictions (job score_days) first.",
            allow_retries=False,
        )
    versions = sorted(frame["model_version"].unique())
    if len(versions) > 1:
        context.log.warning(f"{day} was scored by several versions {versions}; using the last")
    return frame[frame["model_version"] == versions[-1]], versions[-1]


def build_prediction_drift_asset(settings: Settings, partitions: PartitionsDefinition):
    @_monitoring_asset(
        PREDICTION_DRIFT,
        partitions,
        deps=[AssetKey("conversion_predictions")],
        checks={
            "prediction_drift": "Normed Wasserstein distance of the day's purchase "
            "probabilities from the model's scores on its held-out days: WARN past warn_score, "
            "ERROR past error_score.",
        },
        description="Evidently drift of the day's conversion scores (conversion_predictions) "
        "against the scores the same model version gave its held-out validation and test days.",
    )
    def conversion_prediction_drift(
        context: AssetExecutionContext, config: PredictionDriftConfig
    ) -> Iterator:
        from ml.monitoring import data_drift, grade

        day = _one_day(context)
        current, version = _scored_day(context, day)
        reference = _conversion_reference(
            settings, context.resources.warehouse, version, context.log, holdout=True
        )
        drift = data_drift(
            reference,
            current,
            numerical=["purchase_probability"],
            numerical_threshold=config.warn_score,
        )
        html = drift.save_html(report_path(settings, PREDICTION_DRIFT, day))
        score = drift.score("purchase_probability")
        severity = grade(score, config.warn_score, config.error_score)
        mean_now = float(current["purchase_probability"].mean())
        mean_ref = float(reference["purchase_probability"].mean())
        context.log.info(
            f"{day}: score drift {score:.3f} ({severity}); mean {mean_now:.4f} vs {mean_ref:.4f}"
        )
        yield MaterializeResult(
            metadata={
                **_common_metadata(settings, day, html, {"prediction_drift": (severity, score)}),
                "drift_score": float(score),
                "drift_share": float(drift.drift_share),
                "mean_probability": mean_now,
                "reference_mean_probability": mean_ref,
                "model_version": MetadataValue.text(version),
                "prefixes": len(current),
            }
        )
        yield _check(
            PREDICTION_DRIFT,
            "prediction_drift",
            severity,
            f"score drift {score:.3f} (warn > {config.warn_score}, error > {config.error_score});"
            f" mean probability {mean_now:.4f} against {mean_ref:.4f}",
            drift_score=float(score),
        )

    return conversion_prediction_drift


def build_quality_asset(settings: Settings, partitions: PartitionsDefinition):
    @_monitoring_asset(
        QUALITY,
        partitions,
        deps=[AssetKey("conversion_predictions"), AssetKey("conversion_examples")],
        checks={
            "auc_drop": "The day's ROC AUC below the model's test-day AUC: WARN past "
            "warn_auc_drop, ERROR past error_auc_drop.",
            "calibration": "Predicted over observed purchase rate: WARN beyond "
            "warn_calibration_ratio (either way), ERROR beyond error_calibration_ratio.",
        },
        description="The conversion champion on the day's labels (complete once the day is "
        "landed): ROC AUC, PR AUC, calibration, and drift of the purchase rate itself.",
    )
    def conversion_quality(context: AssetExecutionContext, config: QualityConfig) -> Iterator:
        from ml.monitoring import conversion_quality as measure
        from ml.monitoring import data_drift, grade, worst
        from ml.registry import Registry

        day = _one_day(context)
        current, version = _scored_day(context, day)
        manifest = Registry(settings.registry).manifest("conversion", version)
        quality = measure(
            current["will_purchase"].astype(bool).to_numpy(),
            current["purchase_probability"].to_numpy(),
        )
        reference = _conversion_reference(
            settings, context.resources.warehouse, version, context.log, holdout=True
        )
        labels = {"will_purchase": lambda f: f["will_purchase"].astype(bool).map(str)}
        drift = data_drift(
            reference.assign(**labels), current.assign(**labels), categorical=["will_purchase"]
        )
        html = drift.save_html(report_path(settings, QUALITY, day))
        test_auc = float(manifest.metrics.get("roc_auc", math.nan))
        auc_drop = test_auc - quality["roc_auc"]
        ratio = quality["calibration_ratio"]
        buyers = int(current.groupby("session_key")["will_purchase"].any().sum())
        if buyers < config.min_buying_sessions:
            auc_severity = calibration_severity = "ok"
            note = f"{buyers} buying sessions (< {config.min_buying_sessions}): too few to grade"
        else:
            auc_severity = grade(auc_drop, config.warn_auc_drop, config.error_auc_drop)
            off = abs(math.log(ratio)) if ratio and ratio > 0 else math.inf
            calibration_severity = grade(
                off,
                math.log(config.warn_calibration_ratio),
                math.log(config.error_calibration_ratio),
            )
            note = ""
        severity = worst(auc_severity, calibration_severity)
        context.log.info(
            f"{day}: ROC AUC {quality['roc_auc']:.3f} (test {test_auc:.3f}), predicted/observed "
            f"{ratio:.2f}: {severity} {note}"
        )
        yield MaterializeResult(
            metadata={
                **_common_metadata(
                    settings,
                    day,
                    html,
                    {
                        "auc_drop": (auc_severity, auc_drop),
                        "calibration": (calibration_severity, ratio),
                    },
                ),
                **{k: float(v) for k, v in quality.items()},
                "buying_sessions": buyers,
                "test_roc_auc": test_auc,
                "auc_drop": float(auc_drop),
                "reference_observed_rate": float(reference["will_purchase"].mean()),
                "label_drift_score": float(drift.score("will_purchase")),
                "model_version": MetadataValue.text(version),
                **({"note": MetadataValue.text(note)} if note else {}),
            }
        )
        yield _check(
            QUALITY,
            "auc_drop",
            auc_severity,
            note
            or f"ROC AUC {quality['roc_auc']:.3f} against {test_auc:.3f} on the test day (drop "
            f"{auc_drop:.3f}; warn > {config.warn_auc_drop}, error > {config.error_auc_drop})",
            auc_drop=float(auc_drop),
        )
        yield _check(
            QUALITY,
            "calibration",
            calibration_severity,
            note
            or f"predicted {quality['predicted_rate']:.4f} / observed "
            f"{quality['observed_rate']:.4f} = {ratio:.2f} (warn beyond "
            f"{config.warn_calibration_ratio}, error beyond {config.error_calibration_ratio})",
            calibration_ratio=float(ratio),
        )

    return conversion_quality


def _sessions(warehouse: Any, first: dt.date | str, last: dt.date | str) -> list[list[str]]:
    frame = warehouse.query(
        f"select product_skus from {warehouse.models_schema}.session_sequences"
        f" where session_day between {date_sql(first)} and {date_sql(last)}"
        " order by first_view_at, session_key"
    )
    return [s.split(" ") for s in frame["product_skus"]]


def build_recommender_monitoring_asset(settings: Settings, partitions: PartitionsDefinition):
    @_monitoring_asset(
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
            worst,
        )
        from ml.recommend.models import Recommender

        day = _one_day(context)
        warehouse = context.resources.warehouse
        manifest, folder = _published(settings, "recommender")
        model = Recommender.load(folder)
        known = set(model.vocab.items[1:])
        popularity = dict(zip(model.vocab.items[1:], model.popularity[1:].tolist(), strict=True))

        def measure(first: dt.date | str, last: dt.date | str):
            sessions = [s for s in _sessions(warehouse, first, last) if len(s) >= 2]
            if not sessions:
                raise Failure(
                    description=f"session_sequences has no session of 2+ views in {first} .. {last}"
                )
            return recommender_day(sessions, model.recommend_batch, known, popularity)

        today = measure(day, day)
        # the champion on its own test days: the baseline of the shares and the distributions
        path = reference_dir(settings) / f"recommender-{manifest.version}.parquet"
        baseline_path = path.with_suffix(".json")
        if path.exists() and baseline_path.exists():
            reference = pd.read_parquet(path)
            baseline = json.loads(baseline_path.read_text())
        else:
            window = manifest.extra["test_window"]
            measured = measure(window["start"], window["end"])
            reference, baseline = measured.points, measured.metrics
            path.parent.mkdir(parents=True, exist_ok=True)
            reference.to_parquet(path, index=False)
            baseline_path.write_text(json.dumps(baseline))
        drift = data_drift(
            reference,
            today.points,
            numerical=RECOMMENDER_NUMERICAL,
            categorical=RECOMMENDER_CATEGORICAL,
        )
        html = drift.save_html(report_path(settings, RECOMMENDER, day))
        m = today.metrics
        test_hr = float(manifest.metrics["hr_at_20"])
        hr_drop = 1 - m["hr_at_20"] / test_hr if test_hr > 0 else math.nan
        hr_severity = grade(hr_drop, config.warn_hr_drop, config.error_hr_drop)
        unseen_increase = m["unseen_request_share"] - baseline["unseen_request_share"]
        unseen_severity = grade(
            unseen_increase, config.warn_unseen_increase, config.error_unseen_increase
        )
        severity = worst(hr_severity, unseen_severity)
        context.log.info(
            f"{day}: HR@20 {m['hr_at_20']:.3f} (test {test_hr:.3f}), unseen requests "
            f"{m['unseen_request_share']:.2%}: {severity}"
        )
        yield MaterializeResult(
            metadata={
                **_common_metadata(
                    settings,
                    day,
                    html,
                    {
                        "hr_drop": (hr_severity, hr_drop),
                        "unseen_requests": (unseen_severity, unseen_increase),
                    },
                ),
                **{k: float(v) for k, v in m.items()},
                "test_hr_at_20": test_hr,
                "reference_unseen_request_share": float(baseline["unseen_request_share"]),
                "unseen_increase": float(unseen_increase),
                "hr_drop": float(hr_drop),
                "drift_share": float(drift.drift_share),
                "drifted_columns": drift.n_drifted,
                "most_drifted": MetadataValue.md(drift.markdown()),
                "champion_version": MetadataValue.text(manifest.version),
            }
        )
        yield _check(
            RECOMMENDER,
            "hr_drop",
            hr_severity,
            f"HR@20 {m['hr_at_20']:.3f} against {test_hr:.3f} on the test days (relative drop "
            f"{hr_drop:.1%}; warn > {config.warn_hr_drop:.0%}, error > {config.error_hr_drop:.0%})",
            hr_drop=float(hr_drop),
        )
        yield _check(
            RECOMMENDER,
            "unseen_requests",
            unseen_severity,
            f"{m['unseen_request_share']:.1%} of requests end on an item the champion never saw, "
            f"against {baseline['unseen_request_share']:.1%} on its test days (increase "
            f"{unseen_increase:+.1%}; warn > {config.warn_unseen_increase:.0%}, error > "
            f"{config.error_unseen_increase:.0%})",
            unseen_request_share=float(m["unseen_request_share"]),
            unseen_increase=float(unseen_increase),
        )

    return recommender_monitoring


def build_monitoring_assets(
    settings: Settings, partitions: PartitionsDefinition
) -> list[AssetsDefinition]:
    return [
        build_feature_drift_asset(settings, partitions),
        build_prediction_drift_asset(settings, partitions),
        build_quality_asset(settings, partitions),
        build_recommender_monitoring_asset(settings, partitions),
    ]
