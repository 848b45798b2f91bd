"""Conversion: names of the assets and checks, what the steps hand each other, and the run
configuration of each asset."""

import pandas as pd
from dagster import AssetKey, Config
from pydantic import Field

from ml.conversion import gates

GROUP = "conversion"
PROBLEM = "conversion"
EXAMPLES = AssetKey("conversion_examples")
TRAINING_SET = "conversion_training_set"
EVALUATION = "conversion_evaluation"
CHAMPION = "conversion_champion"
PREDICTIONS = "conversion_predictions"
ALGORITHMS = ("majority", "logistic", "hgb", "gru")
BASELINES = ("majority", "logistic")
CANDIDATES = ("hgb", "gru")
CHECKS = ("beats_logistic_pr_auc", "no_leakage", "calibration_bounded")
METRIC_COLUMNS = ("roc_auc", "pr_auc", "log_loss", "brier", "f1", "ece", "threshold")
# The training set's hand-off: these DataFrames, with "window" and "parts" (counts) beside them.
SPLIT_PARTS = ("train", "validation", "test")
# The latest leaderboard with its gates, a report (orchestration/reports.py) under reports_root.
LEADERBOARD_REPORT = "conversion/leaderboard.md"

PREDICTION_COLUMNS: dict[str, str] = {
    "session_key": "varchar",
    "session_id": "varchar",
    "session_day": "date",
    "prefix_length": "integer",
    "event_at": "timestamp",
    "purchase_probability": "double",
    "model_version": "varchar",
    "algorithm": "varchar",
}


def model_asset_name(algorithm: str) -> str:
    return f"conversion_model_{algorithm}"


class TrainingSetConfig(Config):
    train_days: int = Field(default=14, description="Days in the training window.")
    test_day: str | None = Field(
        default=None,
        description="YYYY-MM-DD test day (validation = the day before, training = the "
        "train_days before that). Default: the latest day of conversion_examples with both "
        "buying and non-buying sessions.",
    )
    max_prefixes_per_session: int | None = Field(
        default=None,
        description="Training examples per session: all prefixes (default) or at most this "
        "many, chosen by a seeded hash. Validation and test always use every prefix.",
    )
    sample_seed: int = Field(default=0, description="Seed of the prefix sample.")


class MajorityConfig(Config):
    pass


class LogisticConfig(Config):
    seed: int = 0
    C: float = Field(default=1.0, description="Inverse L2 regularization strength.")
    max_iter: int = 2000


class HGBConfig(Config):
    seed: int = 0
    max_iter: int = Field(default=200, description="Boosting iterations.")
    learning_rate: float = 0.1
    max_leaf_nodes: int = 31
    l2_regularization: float = 0.0


class GRUConfig(Config):
    seed: int = 0
    hidden: int = 32
    embedding: int = 8
    epochs: int = Field(default=4, description="Passes over the training sessions.")
    batch_sessions: int = 256
    learning_rate: float = 3e-3
    max_categories: int = 200


CONFIGS: dict[str, type[Config]] = {
    "majority": MajorityConfig,
    "logistic": LogisticConfig,
    "hgb": HGBConfig,
    "gru": GRUConfig,
}


class EvaluationConfig(Config):
    pr_auc_margin: float = Field(
        default=gates.PR_AUC_MARGIN,
        description="Gate: the best candidate's test PR AUC must exceed logistic regression's "
        "by more than this.",
    )
    max_calibration_error: float = Field(
        default=gates.MAX_CALIBRATION_ERROR,
        description="Gate: the best candidate's expected calibration error on the test day.",
    )
    leakage_sessions: int = Field(
        default=200,
        description="Gate: sessions (half of them buyers) whose features are recomputed from "
        "int_events_sessionized cut strictly before the purchase.",
    )


BOOTSTRAP_MODES = ("best", "baseline")


class ChampionConfig(Config):
    bootstrap: str = Field(
        default="best",
        description="Without a champion: 'best' makes the best model that passes the leakage "
        "and calibration gates champion at once (the chosen candidate if it passes every gate, "
        "else logistic regression if it beats the majority baseline); 'baseline' makes logistic "
        "regression champion and admits the chosen candidate as challenger if it passes every "
        "gate, so a known-better model earns its traffic.",
    )
    challenger: str = Field(
        default="",
        description="Operator override: admit this model (majority, logistic, hgb, gru) as "
        "challenger even if it does not beat logistic regression or the champion offline; "
        "leakage and calibration must still pass. Recorded as decided by operator/override.",
    )


def split_frames(training_set: dict) -> dict[str, pd.DataFrame]:
    """The training set's parts (train, validation, test) from its step's hand-off."""
    return {part: training_set[part] for part in SPLIT_PARTS}
