"""What monitoring reads: the one day of a run, the published champion, the day's rows in the
warehouse, and the references, computed once per model version and cached under
`$SKIFF_HOME/artifacts/monitoring/reference/` so that a nightly run reads only its own day."""

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import AssetExecutionContext, Failure

from orchestration.monitoring.config import REFERENCE_ROWS
from orchestration.partitions import partition_days
from orchestration.sql import date_sql
from skiff.settings import Settings


def reference_dir(settings: Settings) -> Path:
    return settings.artifacts / "monitoring" / "reference"


def one_day(context: AssetExecutionContext) -> dt.date:
    days = partition_days(context)
    if len(days) != 1:
        raise Failure(
            description=f"monitoring grades one day per run, got {days[0]} .. {days[-1]}: "
            "launch a backfill (one run per day) instead of a single-run range",
            allow_retries=False,
        )
    return days[0]


def published(settings: Settings, problem: str) -> tuple[Any, Path]:
    from ml.registry import ArtifactError, load_published

    try:
        return load_published(settings.published, problem)
    except ArtifactError as exc:
        raise Failure(
            description=f"{exc}: monitoring compares the day with a published champion; "
            "train and promote one first (job train_models).",
            allow_retries=False,
        ) from exc


def examples(warehouse: Any, first: dt.date | str, last: dt.date | str) -> pd.DataFrame:
    return warehouse.query(
        f"select * from {warehouse.models_schema}.conversion_examples"
        f" where session_day between {date_sql(first)} and {date_sql(last)}"
    )


def conversion_reference(
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
    rows = examples(warehouse, first, last)
    if rows.empty:
        raise Failure(
            description=f"conversion_examples has no rows in {first} .. {last}, the {part} "
            f"days of {version}: rebuild those days first."
        )
    batch = features.batch_from_frame(sample_sessions(rows, REFERENCE_ROWS))
    frame = conversion_inputs(batch)
    frame["purchase_probability"] = models.load_registered(registry, version).predict_proba(batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    log.info(f"{part} reference of {version}: {len(frame):,} prefixes of {first} .. {last}")
    return frame


def scored_day(context: AssetExecutionContext, day: dt.date) -> tuple[pd.DataFrame, str]:
    """The day's scores with the label of each prefix, of the version that scored it last."""
    schema = context.resources.warehouse.models_schema
    frame = context.resources.warehouse.query(
        "select p.session_key, p.prefix_length, p.purchase_probability, p.model_version,"
        f" e.will_purchase from {schema}.conversion_predictions p"
        f" join {schema}.conversion_examples e"
        " on e.session_key = p.session_key and e.prefix_length = p.prefix_length"
        f" where p.session_day = {date_sql(day)} and e.session_day = {date_sql(day)}"
    )
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


def sessions(warehouse: Any, first: dt.date | str, last: dt.date | str) -> list[list[str]]:
    frame = warehouse.query(
        f"select product_skus from {warehouse.models_schema}.session_sequences"
        f" where session_day between {date_sql(first)} and {date_sql(last)}"
        " order by first_view_at, session_key"
    )
    return [s.split(" ") for s in frame["product_skus"]]
