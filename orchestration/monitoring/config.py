"""Monitoring: names of the assets, which models each watches, and the thresholds (the run
configuration of each asset)."""

from dagster import Config
from pydantic import Field

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
# Sessions (of 2+ views) the recommender is evaluated on per day. At 1M events a day, 5,000 of
# 42,269 sessions gave HR@20 0.7645 with a standard error of 0.0029, far inside the 10% drop
# that warns, and a day's monitoring took 2.0x Evidently's own time instead of 7.9x
# (bench/monitoring.py).
RECOMMENDER_SESSIONS = 5_000
# The share of drifted columns at which a report calls its data set drifted (Evidently's
# data-set line, "Dataset drift detection threshold is ..."; Evidently's default is 0.5):
# - DRIFT_SHARE, a fifth of the columns: feature drift's ERROR share (run config
#   error_drift_share, which its report states) and the default of the recommender's
#   `drift_share` (its per-request columns are recorded, not graded);
# - ONE_COLUMN_SHARE for the reports of one column (the scores, the label), which drift when
#   that column does: prediction drift's at warn_score, Skiff's WARN.
DRIFT_SHARE = 0.2
ONE_COLUMN_SHARE = 1.0


class FeatureDriftConfig(Config):
    warn_drift_share: float = Field(
        default=0.0,
        description="WARN when the share of drifted input columns passes this (0: any column).",
    )
    error_drift_share: float = Field(
        default=DRIFT_SHARE,
        description="ERROR when the share of drifted input columns passes this (also the "
        "share Evidently's data-set drift line in the report is stated at).",
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
    drift_share: float = Field(
        default=DRIFT_SHARE,
        description="The report's Evidently data-set line calls the per-request columns "
        "drifted at this share of them (the day's share is recorded as drift_share; it is "
        "not graded).",
    )
    max_sessions: int | None = Field(
        default=RECOMMENDER_SESSIONS,
        description="Sessions of the day (and of the champion's test days, once per version) "
        "the recommender is evaluated on: a seeded random sample, its HR@20 standard error "
        "recorded beside it (hr_at_20_se); None evaluates every session.",
    )
