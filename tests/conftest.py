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


# Test files that take a minute or more, the most expensive first (per-file seconds are printed
# at the end of every run: "seconds per test file"). `make test` runs two workers, one file at a
# time each (`--dist loadfile --no-loadscope-reorder`), in this order and then the rest as
# collected: started last, one of these would leave the other worker idle for minutes. A file
# missing from the list costs balance only, never a test.
HEAVY_FIRST = (
    "test_production_s3.py",
    "test_cli_jobs.py",
    "test_release_e2e.py",
    "test_monitoring.py",
    "test_e2e_ui.py",
    "test_snowflake_standin.py",
    "test_dbt_project.py",
    "test_e2e_postgres.py",
    "test_warehouse_production.py",
    "test_recommend_ml.py",
    "test_ui_cli.py",
    "test_conversion_assets.py",
    "test_recommendation_assets.py",
    # the heaviest of `make test-fast`'s
    "test_registry_production.py",
    "test_experiment_marts.py",
    "test_conversion_ml.py",
    "test_cli.py",
    "test_offpolicy.py",
    "test_offline_online.py",
)
_FILE_SECONDS: dict[str, float] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Heavy files first (a stable sort: each file's tests keep their order)."""
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    name = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[name] = _FILE_SECONDS.get(name, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    """The 15 costliest files (setup + call + teardown): the data to keep HEAVY_FIRST right."""
    if not _FILE_SECONDS:
        return
    terminalreporter.section("seconds per test file")
    for name, seconds in sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1])[:15]:
        terminalreporter.write_line(f"{seconds:8.1f}  {name}")


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
