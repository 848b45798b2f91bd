"""Where the daily partitions start: SKIFF_PARTITIONS_START when set, else the earliest landing
day, else 2026-01-01 — so a state shows the days its data has, not months of missing ones."""

from __future__ import annotations

import datetime as dt

import pytest

from orchestration.partitions import daily_partitions
from skiff.settings import ConfigError, load_settings


def test_partitions_start_at_the_earliest_landing_day(settings):
    assert load_settings().partitions_start == dt.date(2026, 1, 1)  # nothing landed yet
    assert load_settings().partitions_start_source == "default"
    for name in ("2026-03-04", "2026-03-02", "2026-03-09"):
        (settings.landing / name).mkdir()
    # not days: ignored, whatever they are called
    (settings.landing / "2026-02-30").mkdir()
    (settings.landing / "notes").mkdir()
    (settings.landing / "2026-01-01.csv").write_text("a file, not a day folder")
    found = load_settings()
    assert found.partitions_start == dt.date(2026, 3, 2)
    assert found.partitions_start_source == "landing"
    keys = daily_partitions(found).get_partition_keys(
        current_time=dt.datetime(2026, 3, 10, tzinfo=dt.UTC)
    )
    assert keys[0] == "2026-03-02" and len(keys) == 8  # no empty months before the data


def test_the_environment_variable_wins_over_the_landing_folder(settings, monkeypatch):
    (settings.landing / "2026-03-02").mkdir()
    monkeypatch.setenv("SKIFF_PARTITIONS_START", "2025-12-01")
    chosen = load_settings()
    assert chosen.partitions_start == dt.date(2025, 12, 1)
    assert chosen.partitions_start_source == "SKIFF_PARTITIONS_START"
    monkeypatch.setenv("SKIFF_PARTITIONS_START", "2025-13-01")
    with pytest.raises(ConfigError, match="SKIFF_PARTITIONS_START='2025-13-01'"):
        load_settings()
