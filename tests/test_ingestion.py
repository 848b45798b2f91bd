"""Ingestion through real Dagster materializations into a real DuckDB file."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest
from dagster import DagsterInstance, DailyPartitionsDefinition, materialize

from ml import contract
from orchestration.ingestion.assets import build_ingestion_assets
from orchestration.resources import build_warehouse
from tests.conftest import DAY, ms, write_day

PARTITIONS = DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC")

GOOD = [
    ["s1", "pageview", "", "", ms(DAY, 10), "u1"],
    ["s1", "pageview", "", "", ms(DAY, 20), "u2"],
    ["s1", "event_product", "detail", "p1", ms(DAY, 20), "u2"],
    ["s1", "event_product", " ADD ", "p1", ms(DAY, 40), "u2"],
    ["s1", "event_product", "purchase", "p1", ms(DAY, 90), "u3"],
]
BAD = [
    ["", "pageview", "", "", ms(DAY, 5), "u1"],  # missing_session_id
    ["s2", "click_stream", "", "", ms(DAY, 5), "u1"],  # bad_event_type
    ["s2", "pageview", "", "", "17e9", "u1"],  # bad_timestamp
    ["s2", "pageview", "", "", ms(DAY, 86_400), "u1"],  # timestamp_outside_day
    ["s2", "event_product", "wishlist", "p1", ms(DAY, 5), "u1"],  # bad_product_action
    ["s2", "event_product", "add", "", ms(DAY, 5), "u1"],  # missing_product_sku
]
PRODUCTS = [["p1", "c1/c11", "3", "", ""], ["p2", "", "", "", ""], ["", "c1/c12", "2", "", ""]]


def _materialize(settings, day: dt.date = DAY, instance=None):
    assets = build_ingestion_assets(PARTITIONS, settings.landing)
    return materialize(
        assets,
        resources={"warehouse": build_warehouse(settings)},
        partition_key=day.isoformat(),
        instance=instance,
        raise_on_error=False,
    )


def _count(settings, table: str, where: str = "") -> int:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(f"select count(*) from raw.{table} {where}").fetchone()[0]


def test_reconciles_and_quarantines_every_reason(settings):
    write_day(settings.landing, DAY, GOOD + BAD, PRODUCTS)
    result = _materialize(settings)
    assert result.success

    assert _count(settings, "raw_browsing_events") == len(GOOD)
    assert _count(settings, "raw_browsing_events_rejected") == len(BAD)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        reasons = dict(
            con.execute(
                "select row_number, reason from raw.raw_browsing_events_rejected"
            ).fetchall()
        )
        actions = {
            r[0]
            for r in con.execute("select product_action from raw.raw_browsing_events").fetchall()
        }
    # row numbers point at the file's lines (1-based, header excluded)
    assert reasons == {len(GOOD) + i + 1: r for i, r in enumerate(contract.REJECT_REASONS)}
    assert actions == {None, "detail", "add", "purchase"}  # normalized, empty -> null

    meta = result.asset_materializations_for_node("ingest_raw_browsing_events")[0].metadata
    assert meta["rows_read"].value == meta["rows_loaded"].value + meta["rows_quarantined"].value
    assert (meta["rows_loaded"].value, meta["rows_quarantined"].value) == (len(GOOD), len(BAD))
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    # 6 bad rows out of 11 is far past the warning share; the counts still reconcile
    assert checks["rows_reconcile"] is True and checks["quarantine_share"] is False

    assert _count(settings, "raw_products") == 2
    assert _count(settings, "raw_products_rejected") == 1


def test_rerun_replaces_the_day(settings):
    instance = DagsterInstance.ephemeral()
    write_day(settings.landing, DAY, GOOD, PRODUCTS)
    other = DAY + dt.timedelta(days=1)
    write_day(settings.landing, other, [["s9", "pageview", "", "", ms(other, 1), "u"]], PRODUCTS)
    assert _materialize(settings, DAY, instance).success
    assert _materialize(settings, other, instance).success
    assert _materialize(settings, DAY, instance).success
    assert _count(settings, "raw_browsing_events") == len(GOOD) + 1

    # the day lands again with fewer rows: the old ones go, the other day stays
    write_day(settings.landing, DAY, GOOD[:2], PRODUCTS)
    assert _materialize(settings, DAY, instance).success
    assert _count(settings, "raw_browsing_events", f"where event_day = '{DAY}'") == 2
    assert _count(settings, "raw_browsing_events", f"where event_day = '{other}'") == 1


def test_wrong_columns_fail_naming_them(settings):
    columns = [*contract.EVENT_COLUMNS[:-1], "page_url"]  # hashed_url renamed
    write_day(settings.landing, DAY, GOOD, PRODUCTS, event_columns=columns)
    result = _materialize(settings)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = str(failure.event_specific_data.error)
    assert "missing column(s) ['hashed_url']" in message
    assert "unexpected column(s) ['page_url']" in message


@pytest.mark.parametrize("content", ["", ",".join(contract.EVENT_COLUMNS) + "\n"])
def test_empty_day_is_fine(settings, content):
    folder = write_day(settings.landing, DAY, [], PRODUCTS)
    (folder / contract.EVENTS_FILE).write_text(content)
    result = _materialize(settings)
    assert result.success
    assert _count(settings, "raw_browsing_events") == 0
    meta = result.asset_materializations_for_node("ingest_raw_browsing_events")[0].metadata
    assert meta["rows_read"].value == 0


def test_missing_day_folder_fails_clearly(settings):
    result = _materialize(settings)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert f"No landing folder for {DAY}" in str(failure.event_specific_data.error)
    # the step retries on other errors (orchestration/policy.py), not on this permanent one
    assert failure.step_key and not [e for e in result.all_events if e.is_step_up_for_retry]


def test_a_range_run_reads_per_day_and_its_checks_name_their_days(settings):
    """A single-run backfill of two days: the totals are the run's, the `by_day` table gives
    each day its own row, and each check says which days it judged."""
    other = DAY + dt.timedelta(days=1)
    write_day(settings.landing, DAY, GOOD + BAD[:1], PRODUCTS)
    write_day(settings.landing, other, [["s9", "pageview", "", "", ms(other, 1), "u"]], PRODUCTS)
    result = materialize(
        build_ingestion_assets(PARTITIONS, settings.landing),
        resources={"warehouse": build_warehouse(settings)},
        tags={
            "dagster/asset_partition_range_start": DAY.isoformat(),
            "dagster/asset_partition_range_end": other.isoformat(),
        },
        raise_on_error=False,
    )
    assert result.success
    meta = result.asset_materializations_for_node("ingest_raw_browsing_events")[0].metadata
    assert meta["rows_loaded"].value == len(GOOD) + 1  # the run's total
    rows = [line for line in meta["by_day"].value.splitlines() if line.startswith("| 2026")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert cells == [
        [DAY.isoformat(), str(len(GOOD) + 1), str(len(GOOD)), "1"],
        [other.isoformat(), "1", "1", "0"],
    ]
    days = f"{DAY} .. {other}"
    events = [
        c
        for c in result.get_asset_check_evaluations()
        if c.asset_key.path == ["raw_browsing_events"]
    ]
    assert {c.check_name for c in events} == {
        "rows_reconcile",
        "quarantine_share",
        "worst_recent_day",
    }
    for check in events:
        if check.check_name != "worst_recent_day":  # that one names its window of 7 days
            assert check.description.startswith(f"{days}:") and check.metadata["days"].text == days


def test_an_earlier_days_warning_stays_in_sight_behind_a_later_pass(settings):
    """Day 1 quarantines too many rows (quarantine_share warns); day 2, run on its own, is
    clean: its quarantine_share passes, and worst_recent_day fails naming day 1."""
    instance = DagsterInstance.ephemeral()
    other = DAY + dt.timedelta(days=1)
    write_day(settings.landing, DAY, GOOD + BAD, PRODUCTS)
    clean = [[*row[:4], ms(other, 10 + i), row[5]] for i, row in enumerate(GOOD)]
    write_day(settings.landing, other, clean, PRODUCTS)
    first = _materialize(settings, DAY, instance)
    second = _materialize(settings, other, instance)

    def events_checks(result) -> dict:
        return {
            c.check_name: c
            for c in result.get_asset_check_evaluations()
            if c.asset_key.path == ["raw_browsing_events"]
        }

    assert events_checks(first)["worst_recent_day"].passed is False
    later = events_checks(second)
    assert later["quarantine_share"].passed is True
    summary = later["worst_recent_day"]
    assert summary.passed is False and summary.metadata["worst_day"].text == DAY.isoformat()
    assert f"worst warn on {DAY}" in summary.description
    assert events_checks(second)["rows_reconcile"].passed is True
