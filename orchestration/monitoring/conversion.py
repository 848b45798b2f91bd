"""Monitoring of the conversion champion, one daily-partitioned asset per question:

- `conversion_feature_drift`: the day's model inputs (every session prefix) against the
  champion's training window;
- `conversion_prediction_drift`: the day's scores in `conversion_predictions` against the scores
  the same model version gives its held-out days;
- `conversion_quality`: the champion on the day's labels (final once the next day is
  built: a visit keeps its events after midnight): ROC AUC, calibration, and drift of the
  label itself.
"""

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

from orchestration.monitoring.config import (
    FEATURE_DRIFT,
    ONE_COLUMN_SHARE,
    PREDICTION_DRIFT,
    QUALITY,
    FeatureDriftConfig,
    PredictionDriftConfig,
    QualityConfig,
)
from orchestration.monitoring.grading import Grade, graded_day, monitoring_asset
from orchestration.monitoring.inputs import (
    conversion_reference,
    examples,
    one_day,
    published_manifest,
    scored_day,
)
from skiff.settings import Settings


def build_feature_drift_asset(
    settings: Settings, partitions: PartitionsDefinition
) -> AssetsDefinition:
    @monitoring_asset(
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

        day = one_day(context)
        warehouse = context.resources.warehouse
        manifest = published_manifest(settings, "conversion")
        reference = conversion_reference(settings, warehouse, manifest.version, context.log)
        day_examples = examples(warehouse, day, day)
        if day_examples.empty:
            raise Failure(
                description=f"conversion_examples has no rows on {day}: materialize that day"
                " first (skiff run)",
                allow_retries=False,
            )
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
            drift_share=config.error_drift_share,  # Evidently's summary line says our ERROR
        )
        severity = grade(drift.drift_share, config.warn_drift_share, config.error_drift_share)
        top = drift.columns.iloc[0]
        drifted = drift.columns[drift.columns["drifted"]]["column"].tolist()
        window = manifest.training_window
        yield from graded_day(
            context,
            settings,
            FEATURE_DRIFT,
            day,
            report=drift,
            grades=[
                Grade(
                    "feature_drift",
                    severity,
                    drift.drift_share,
                    f"{drift.n_drifted} of {drift.n_columns} inputs drifted (share "
                    f"{drift.drift_share:.2f}; warn > {config.warn_drift_share}, error > "
                    f"{config.error_drift_share})"
                    + (f": {', '.join(drifted[:8])}" if drifted else ""),
                    {
                        "drift_share": float(drift.drift_share),
                        "drifted_columns": drift.n_drifted,
                        "warn_threshold": config.warn_drift_share,
                        "error_threshold": config.error_drift_share,
                    },
                )
            ],
            summary=lambda severity: (
                f"{drift.n_drifted}/{drift.n_columns} inputs drifted (share "
                f"{drift.drift_share:.2f}, {severity}); most: {top['column']} {top['score']:.3f}"
            ),
            metadata={
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
            },
        )

    return conversion_feature_drift


def build_prediction_drift_asset(
    settings: Settings, partitions: PartitionsDefinition
) -> AssetsDefinition:
    @monitoring_asset(
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

        day = one_day(context)
        current, version = scored_day(context, day)
        reference = conversion_reference(
            settings, context.resources.warehouse, version, context.log, holdout=True
        )
        drift = data_drift(
            reference,
            current,
            numerical=["purchase_probability"],
            numerical_threshold=config.warn_score,
            drift_share=ONE_COLUMN_SHARE,  # one column: drifted at warn_score, Skiff's WARN
        )
        score = drift.score("purchase_probability")
        severity = grade(score, config.warn_score, config.error_score)
        mean_now = float(current["purchase_probability"].mean())
        mean_ref = float(reference["purchase_probability"].mean())
        yield from graded_day(
            context,
            settings,
            PREDICTION_DRIFT,
            day,
            report=drift,
            grades=[
                Grade(
                    "prediction_drift",
                    severity,
                    score,
                    f"score drift {score:.3f} (warn > {config.warn_score}, error > "
                    f"{config.error_score}); mean probability {mean_now:.4f} against "
                    f"{mean_ref:.4f}",
                    {"drift_score": float(score)},
                )
            ],
            summary=lambda severity: (
                f"score drift {score:.3f} ({severity}); mean {mean_now:.4f} vs {mean_ref:.4f}"
            ),
            metadata={
                "drift_score": float(score),
                "drift_share": float(drift.drift_share),
                "mean_probability": mean_now,
                "reference_mean_probability": mean_ref,
                "model_version": MetadataValue.text(version),
                "prefixes": len(current),
            },
        )

    return conversion_prediction_drift


def build_quality_asset(settings: Settings, partitions: PartitionsDefinition) -> AssetsDefinition:
    @monitoring_asset(
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
        from ml.monitoring import data_drift, grade
        from ml.registry import Registry

        day = one_day(context)
        current, version = scored_day(context, day)
        manifest = Registry(settings.registry).manifest("conversion", version)
        quality = measure(
            current["will_purchase"].astype(bool).to_numpy(),
            current["purchase_probability"].to_numpy(),
        )
        reference = conversion_reference(
            settings, context.resources.warehouse, version, context.log, holdout=True
        )
        labels = {"will_purchase": lambda f: f["will_purchase"].astype(bool).map(str)}
        drift = data_drift(
            reference.assign(**labels),
            current.assign(**labels),
            categorical=["will_purchase"],
            drift_share=ONE_COLUMN_SHARE,  # one column, the label (recorded, not graded)
        )
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
        auc_text = (
            f"ROC AUC {quality['roc_auc']:.3f} against {test_auc:.3f} on the test day "
            f"(drop {auc_drop:.3f}; warn > {config.warn_auc_drop}, error > "
            f"{config.error_auc_drop})"
        )
        calibration_text = (
            f"predicted {quality['predicted_rate']:.4f} / observed "
            f"{quality['observed_rate']:.4f} = {ratio:.2f} (warn beyond "
            f"{config.warn_calibration_ratio}, error beyond {config.error_calibration_ratio})"
        )
        yield from graded_day(
            context,
            settings,
            QUALITY,
            day,
            report=drift,
            grades=[
                Grade(
                    "auc_drop",
                    auc_severity,
                    auc_drop,
                    # the note beside the thresholds the day would have been graded on
                    f"{note}; {auc_text}" if note else auc_text,
                    {"auc_drop": float(auc_drop)},
                ),
                Grade(
                    "calibration",
                    calibration_severity,
                    ratio,
                    f"{note}; {calibration_text}" if note else calibration_text,
                    {"calibration_ratio": float(ratio)},
                ),
            ],
            summary=lambda severity: (
                f"ROC AUC {quality['roc_auc']:.3f} (test {test_auc:.3f}), "
                f"predicted/observed {ratio:.2f}: {severity} {note}"
            ),
            metadata={
                **{k: float(v) for k, v in quality.items()},
                "buying_sessions": buyers,
                "test_roc_auc": test_auc,
                "auc_drop": float(auc_drop),
                "reference_observed_rate": float(reference["will_purchase"].mean()),
                "label_drift_score": float(drift.score("will_purchase")),
                "model_version": MetadataValue.text(version),
                **({"note": MetadataValue.text(note)} if note else {}),
            },
        )

    return conversion_quality
