"""The hand-off between conversion steps: files under `$SKIFF_HOME/artifacts/conversion/`.

The split as Parquet, one JSON per candidate, the evaluation: any IO manager or executor works
and a step can be rerun alone. Models go only through the registry (`settings.registry`).
"""

import json
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import Failure

from orchestration.conversion.config import TRAINING_SET
from skiff.settings import Settings

SPLIT_PARTS = ("train", "validation", "test")


def work_dir(settings: Settings) -> Path:
    return settings.artifacts / "conversion"


def training_set_dir(settings: Settings) -> Path:
    return work_dir(settings) / "training_set"


def candidate_path(settings: Settings, algorithm: str) -> Path:
    return work_dir(settings) / "candidates" / f"{algorithm}.json"


def evaluation_path(settings: Settings) -> Path:
    return work_dir(settings) / "evaluation.json"


def leaderboard_path(settings: Settings) -> Path:
    """The latest leaderboard as markdown, for the command line's summary."""
    return settings.reports / "conversion" / "leaderboard.md"


def read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise Failure(
            description=f"{path} is missing: materialize its upstream asset first.",
            allow_retries=False,
        )
    return json.loads(path.read_text())


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def split_frames(settings: Settings) -> dict[str, pd.DataFrame]:
    folder = training_set_dir(settings)
    if not (folder / "split.json").exists():
        raise Failure(
            description=f"No training set in {folder}: materialize {TRAINING_SET}.",
            allow_retries=False,
        )
    return {part: pd.read_parquet(folder / f"{part}.parquet") for part in SPLIT_PARTS}


def split_window(settings: Settings) -> dict[str, str]:
    return read_json(training_set_dir(settings) / "split.json")["window"]
