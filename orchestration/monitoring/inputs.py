"""What monitoring reads: the one day of a run, the published champion, the day's rows in the
warehouse, and the references, computed once per model version and cached in the store at
`<settings.cache_root>/monitoring/reference/` (`$SKIFF_HOME/artifacts/cache/` by default,
`$SKIFF_ARTIFACTS_URL/cache` in object storage) so that a nightly run reads only its own day,
in whichever pod it runs.

A cached reference is immutable: its name holds the model version it was computed for, and the
same version and warehouse rows give the same content (a seeded sample, the model's own
scores). Two runs that compute it at once write the same bytes; the first write wins
(exclusive create on object storage, write-then-rename locally), and no reader sees half a file.
"""

import datetime as dt
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import AssetExecutionContext, Failure

from orchestration.monitoring.config import REFERENCE_ROWS
from orchestration.partitions import partition_days
from orchestration.reports import join
from orchestration.sql import date_sql
from orchestration.store import read_url, write_url
from skiff.settings import Settings

REFERENCE_CACHE = "monitoring/reference"


def reference_location(settings: Settings, name: str) -> str:
    """Where the cached reference `name` (e.g. `conversion-<version>-train.parquet`) lives."""
    return join(settings.cache_root, f"{REFERENCE_CACHE}/{name}")


def cached_frame(settings: Settings, name: str) -> pd.DataFrame | None:
    data = read_url(reference_location(settings, name))
    return None if data is None else pd.read_parquet(io.BytesIO(data))


def cache_frame(settings: Settings, name: str, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_url(reference_location(settings, name), buffer.getvalue(), exclusive=True)


def cached_json(settings: Settings, name: str) -> Any | None:
    data = read_url(reference_location(settings, name))
    return None if data is None else json.loads(data)


def cache_json(settings: Settings, name: str, value: Any) -> None:
    write_url(reference_location(settings, name), json.dumps(value).encode(), exclusive=True)


def one_day(context: AssetExecutionContext) -> dt.date:
    days = partition_days(context)
    if len(days) != 1:
        raise Failure(
            description=f"monitoring grades one day per run, got {days[0]} .. {days[-1]}: "
            "launch a backfill (one run per day) instead of a single-run range",
            allow_retries=False,
        )
    return days[0]


@contextmanager
def published(settings: Settings, problem: str) -> Iterator[tuple[Any, Path]]:
    """The published champion's manifest and a verified local folder for the `with` block
    (a copy of a remote artifact is removed on exit: load the model inside the block)."""
    from ml.registry import ArtifactError, published_copy

    entered = False
    try:
        with published_copy(settings.published, problem) as found:
            entered = True
            yield found
    except ArtifactError as exc:
        if entered:  # raised by the block, not by the published champion
            raise
        raise _no_champion(exc) from exc


def published_manifest(settings: Settings, problem: str) -> Any:
    """The published champion's manifest, its signature verified; its files are not read
    (monitoring needs the version, not the model)."""
    from ml import registry

    try:
        return registry.published_manifest(settings.published, problem)
    except registry.ArtifactError as exc:
        raise _no_champion(exc) from exc


def _no_champion(exc: Exception) -> Failure:
    return Failure(
        description=f"{exc}: monitoring compares the day with a published champion; "
        "train and promote one first (job train_models).",
        allow_retries=False,
    )


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
    name = f"conversion-{version}-{part}.parquet"
    cached = cached_frame(settings, name)
    if cached is not None:
        return cached
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
    cache_frame(settings, name, frame)
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
