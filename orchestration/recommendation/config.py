"""Next-item recommendation: names of the assets and checks, and the run configuration."""

import datetime as dt

from dagster import Config

PROBLEM = "recommender"
GROUP = "recommendation"
TRAINING_SET = "recommender_training_set"
EVALUATION = "recommender_evaluation"
CHAMPION = "recommender_champion"
NEXT_ITEMS = "recommender_next_items"
ALGORITHMS = ("pop", "sknn", "gru")
K = 20
LOOKUP = "next_items.parquet"
# The latest leaderboard with the chosen candidate's checks, a report under reports_root.
LEADERBOARD_REPORT = f"{PROBLEM}/leaderboard.md"
GATE_NAMES = (
    "beats_pop",
    "unseen_items",
    "similar_item_stability",
    "shuffle_stability",
    "tail_hit_rate",
)
# What the registry records of each candidate's evaluation.
REGISTERED_METRICS = (
    "hr_at_20",
    "mrr_at_20",
    "ndcg_at_20",
    "coverage",
    "popularity_bias",
    "predictions",
    "train_seconds",
)
NEXT_ITEMS_COLUMNS = {
    "product_sku_hash": "varchar",
    "rank": "integer",
    "next_sku": "varchar",
    "model_version": "varchar",
    "as_of_day": "date",
}


def candidate_asset_name(algorithm: str) -> str:
    return f"recommender_candidate_{algorithm}"


class TrainingSetConfig(Config):
    train_days: int = 14
    validation_days: int = 1  # between training and test: the best candidate is chosen here
    test_days: int = 1
    end_day: str = ""  # last test day (YYYY-MM-DD); empty = the latest day in the mart


class CandidateConfig(Config):
    params_json: str = ""  # hyper-parameters over ml.recommend.compare.DEFAULT_PARAMS, as JSON


BOOTSTRAP_MODES = ("best", "baseline")
BASELINE = "pop"
# The gating checks that compare a candidate with POP; an override skips them, no other.
BETTER_THAN_GATES = ("beats_pop",)


class ChampionConfig(Config):
    candidate: str = ""  # propose this algorithm's candidate; empty = the evaluation's best
    # Without a champion: "best" makes the proposed candidate champion if its gating checks
    # pass, else POP; "baseline" makes POP champion and admits the proposed candidate as
    # challenger at once if its gating checks pass.
    bootstrap: str = "best"
    # Operator override: admit this algorithm's candidate as challenger even if it does not
    # beat POP or the champion (other gating checks still apply); recorded as operator/override.
    challenger: str = ""


def split_window(
    first: dt.date, validation: dt.date, test: dt.date, last: dt.date
) -> dict[str, str]:
    """Training days [first, validation), validation days [validation, test), test days
    [test, last], as the registry records them."""
    day = dt.timedelta(days=1)
    return {
        "train_start": first.isoformat(),
        "train_end": (validation - day).isoformat(),
        "validation_start": validation.isoformat(),
        "validation_end": (test - day).isoformat(),
        "test_start": test.isoformat(),
        "test_end": last.isoformat(),
    }


def test_window(window: dict) -> dict:
    return {"start": window["test_start"], "end": window["test_end"]}


def validation_window(window: dict) -> dict:
    return {"start": window["validation_start"], "end": window["validation_end"]}
