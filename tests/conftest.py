"""Shared fixtures: a temporary SKIFF_HOME per test, landing days written by hand or generated."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import pytest

from ml import contract
from skiff.settings import Settings, ensure_home, load_settings
from tests.objectstore import s3_bucket, s3_server  # noqa: F401  (fixtures)

DAY = dt.date(2026, 1, 5)
# A developer's own automation settings must not leak into the tests' instances.
AUTOMATION_VARIABLES = (
    "SKIFF_TIMEZONE",
    "SKIFF_NIGHTLY_CRON",
    "SKIFF_RELEASE_CRON",
    "SKIFF_DRIFT_PERSISTENCE_DAYS",
    "SKIFF_RETRAIN_TRAIN_DAYS",
    "SKIFF_ALERT_WEBHOOK_URL",
    "SKIFF_SERVE_URL",
    "SKIFF_REPORTS_URL",
    "SKIFF_RETRAIN_COOLDOWN_HOURS",
)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A fresh SKIFF_HOME in tmp_path, local DuckDB environment."""
    monkeypatch.setenv("SKIFF_HOME", str(tmp_path / "skiff"))
    monkeypatch.setenv("SKIFF_ENV", "local")
    cleared = (
        "SKIFF_DBT_TARGET",
        "SKIFF_RAW_SCHEMA",
        "SKIFF_PARTITIONS_START",
        "DAGSTER_HOME",
        "SKIFF_DAGSTER_HOME",
        "SKIFF_ARTIFACTS_URL",
        "SKIFF_EXECUTOR",
        "SKIFF_MANIFEST_KEY",
        "SKIFF_MANIFEST_KEYS_PREVIOUS",
        *AUTOMATION_VARIABLES,
    )
    for name in cleared:
        monkeypatch.delenv(name, raising=False)
    return ensure_home(load_settings())


def ms(day: dt.date, seconds: float) -> str:
    return str(contract.day_bounds_ms(day)[0] + int(seconds * 1000))


def write_day(
    landing: Path,
    day: dt.date,
    events: Iterable[Sequence[str]],
    products: Iterable[Sequence[str]] = (),
    event_columns: Sequence[str] = contract.EVENT_COLUMNS,
) -> Path:
    folder = landing / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(list(events), columns=list(event_columns)).to_csv(
        folder / contract.EVENTS_FILE, index=False
    )
    pd.DataFrame(list(products), columns=list(contract.PRODUCT_COLUMNS)).to_csv(
        folder / contract.PRODUCTS_FILE, index=False
    )
    return folder
