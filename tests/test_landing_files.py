"""Hand-damaged landing files through the real ingestion assets: every line is loaded or
quarantined with its line and reason, only what makes a whole file unreadable fails the day.

Rows in a file are counted here from its bytes (non-empty lines after the header), apart from
the loader and from the asset's own `rows_reconcile` count.
"""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from dagster import materialize

from ml import contract
from orchestration.ingestion.assets import build_ingestion_assets
from orchestration.ingestion.landing import count_file_rows
from orchestration.ingestion.sensors import LANDING_SETTLE_SECONDS, landing_days
from orchestration.resources import build_warehouse
from tests.conftest import DAY, ms, write_day
from tests.test_ingestion import PARTITIONS

HEADER = ",".join(contract.EVENT_COLUMNS)
GOOD = [
    f"s1,pageview,,,{ms(DAY, 10)},u1",
    f"s1,event_product,detail,p1,{ms(DAY, 20)},u2",
    f"s1,event_product,add,p1,{ms(DAY, 40)},u2",
    f"s2,pageview,,,{ms(DAY, 50)},u3",
]
PRODUCTS = [["p1", "c1/c11", "3", "", ""]]


def _events_file(settings, lines: list[str], name: str = contract.EVENTS_FILE) -> Path:
    folder = write_day(settings.landing, DAY, [], PRODUCTS)
    (folder / contract.EVENTS_FILE).unlink()
    path = folder / name
    path.write_bytes("\n".join(lines).encode() if isinstance(lines[0], str) else b"\n".join(lines))
    return path


def _rows_in(path: Path) -> int:
    data = path.read_bytes()
    data = gzip.decompress(data) if path.suffix == ".gz" else data
    # a row is a line (LF-ended, CR before it dropped); empty lines are none
    return len([line for line in data.split(b"\n")[1:] if line.removesuffix(b"\r")])


def _materialize(settings):
    return materialize(
        build_ingestion_assets(PARTITIONS, settings.landing),
        resources={"warehouse": build_warehouse(settings)},
        partition_key=DAY.isoformat(),
        raise_on_error=False,
    )


def _rows(settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(sql).fetchall()


def _failure(result) -> str:
    assert not result.success
    return str(next(e for e in result.all_events if e.is_step_failure).event_specific_data.error)


def _checks(result) -> dict[str, bool]:
    return {
        c.check_name: c.passed
        for c in result.get_asset_check_evaluations()
        if c.asset_key.to_user_string() == "raw_browsing_events"
    }


def _assert_loaded_and_quarantined(settings, result, paths: list[Path], quarantined: dict):
    """`quarantined` is {row_number: reason}; every other row of the files is loaded."""
    assert result.success
    # the asset's own count of the files, apart from its loader, must catch a lost row
    assert _checks(result)["rows_reconcile"] is True
    in_files = sum(_rows_in(p) for p in paths)
    loaded = _rows(settings, "select count(*) from raw.raw_browsing_events")[0][0]
    rejected = dict(
        _rows(settings, "select row_number, reason from raw.raw_browsing_events_rejected")
    )
    assert rejected == quarantined
    assert loaded == in_files - len(quarantined)
    meta = result.asset_materializations_for_node("ingest_raw_browsing_events")[0].metadata
    assert meta["rows_by_day"].value[DAY.isoformat()]["rows_in_files"] == in_files


BAD_LINES = {
    "wrong_field_count": [
        f"s3,pageview,,{ms(DAY, 1)},u1",
        f"s3,pageview,,,,{ms(DAY, 1)},u1",
        f's3,page"vi,ew",,,{ms(DAY, 1)},u1',  # a quote inside a value is no quoting
    ],
    "unterminated_quote": [f's3,"pageview,,,{ms(DAY, 1)},u1'],
    "line_too_long": [f"s3,pageview,,,{ms(DAY, 1)}," + "u" * (10 << 20)],
    "control_characters": [
        f"s\x003,pageview,,,{ms(DAY, 1)},u1",  # NUL inside the session id
        f"s4,event_product,add,p\x1b1,{ms(DAY, 1)},u1",  # ESC inside the sku
        f"s5\r,pageview,,,{ms(DAY, 1)},u1",  # a bare CR, which readers take for a line end
    ],
}


@pytest.mark.parametrize("reason", list(BAD_LINES))
def test_a_line_that_is_no_row_is_quarantined_and_the_day_loads(settings, reason):
    bad = BAD_LINES[reason]
    path = _events_file(settings, [HEADER, GOOD[0], *bad, *GOOD[1:]])
    result = _materialize(settings)
    # row n is line n+1 of the file: the bad lines follow the first good row
    _assert_loaded_and_quarantined(
        settings, result, [path], {2 + i: reason for i in range(len(bad))}
    )
    # no spurious session from a damaged id
    sessions = {
        r[0] for r in _rows(settings, "select session_id_hash from raw.raw_browsing_events")
    }
    assert sessions == {"s1", "s2"}


def test_a_last_line_cut_mid_row_is_quarantined(settings):
    path = _events_file(settings, [HEADER, *GOOD, "s9,event_pro"])  # no final line break
    result = _materialize(settings)
    _assert_loaded_and_quarantined(settings, result, [path], {len(GOOD) + 1: "wrong_field_count"})


def test_line_checks_and_row_checks_together_keep_file_order(settings):
    lines = [HEADER, GOOD[0], "", f",pageview,,,{ms(DAY, 1)},u", "x,y", *GOOD[1:], "", ""]
    path = _events_file(settings, lines)
    result = _materialize(settings)
    # an empty line is no row but still a line: numbering follows the file
    _assert_loaded_and_quarantined(
        settings, result, [path], {3: "missing_session_id", 4: "wrong_field_count"}
    )


def test_a_damaged_catalogue_line_is_quarantined_too(settings):
    folder = write_day(settings.landing, DAY, [GOOD[0].split(",")], PRODUCTS)
    products = folder / contract.PRODUCTS_FILE
    products.write_text(products.read_text() + "p2,c1,4\np3,c2,5,,\n")
    assert _materialize(settings).success
    assert _rows(settings, "select product_sku_hash from raw.raw_products order by 1") == [
        ("p1",),
        ("p3",),
    ]
    assert _rows(settings, "select row_number, reason from raw.raw_products_rejected") == [
        (2, "wrong_field_count")
    ]


def test_every_allowed_file_of_the_day_is_read(settings):
    first = _events_file(settings, [HEADER, *GOOD[:2]])
    folder = first.parent
    part = folder / "browsing_events-part2.csv"
    part.write_text("\n".join([HEADER, *GOOD[2:]]) + "\n")
    zipped = folder / "browsing_events-part3.csv.gz"
    zipped.write_bytes(gzip.compress(("\n".join([HEADER, GOOD[0]]) + "\n").encode()))
    result = _materialize(settings)
    _assert_loaded_and_quarantined(settings, result, [first, part, zipped], {})
    assert _rows(settings, "select count(*) from raw.raw_browsing_events")[0][0] == len(GOOD) + 1


@pytest.mark.parametrize("stray", ["browsing_events_old.csv", "events.csv", "browsing_events.tsv"])
def test_a_file_the_day_may_not_hold_fails_the_day_naming_it(settings, stray):
    path = _events_file(settings, [HEADER, *GOOD])
    (path.parent / stray).write_text("\n".join([HEADER, *GOOD]))
    message = _failure(_materialize(settings))
    assert f"unexpected file(s) ['{stray}']" in message
    assert "browsing_events-<part>.csv[.gz]" in message  # the rule, told


def test_a_gzip_day_is_read_and_a_misnamed_one_is_named(settings):
    text = ("\n".join([HEADER, *GOOD]) + "\n").encode()
    path = _events_file(settings, [b"x"], contract.EVENTS_FILE + ".gz")
    path.write_bytes(gzip.compress(text))
    _assert_loaded_and_quarantined(settings, _materialize(settings), [path], {})

    misnamed = path.with_name(contract.EVENTS_FILE)
    path.rename(misnamed)
    message = _failure(_materialize(settings))
    assert f"{misnamed}: gzip-compressed but named .csv" in message


def test_a_byte_order_mark_is_accepted(settings):
    path = _events_file(settings, [b"\xef\xbb\xbf" + HEADER.encode(), *(g.encode() for g in GOOD)])
    _assert_loaded_and_quarantined(settings, _materialize(settings), [path], {})


def test_a_wrong_delimiter_gets_a_hint_and_a_wrong_header_names_the_column(settings):
    _events_file(settings, [HEADER.replace(",", ";"), *(g.replace(",", ";") for g in GOOD)])
    assert "the header looks `;`-separated" in _failure(_materialize(settings))

    _events_file(settings, [HEADER.replace("hashed_url", "url"), *GOOD])
    message = _failure(_materialize(settings))
    assert "missing column(s) ['hashed_url']" in message
    assert "unexpected column(s) ['url']" in message


SKIFF = str(Path(sys.executable).parent / "skiff")


def _skiff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SKIFF, *args], env=os.environ.copy(), capture_output=True, text=True, timeout=600
    )


def test_skiff_run_refuses_a_day_before_the_first_partition_before_writing(settings):
    done = _skiff("run", "--start", "2025-12-31")  # the first partition is 2026-01-01
    assert done.returncode == 2, done.stdout + done.stderr
    assert "SKIFF_PARTITIONS_START" in done.stderr and "2025-12-31" in done.stderr
    assert not settings.warehouse_path.exists()


@pytest.mark.slow
def test_skiff_run_prints_counts_and_warnings_and_documents_its_exit_status(settings):
    path = _events_file(settings, [HEADER, *GOOD, "s9,cut"])  # 1 of 5 rows bad: past 5 %
    done = _skiff("run", "--start", DAY.isoformat())
    assert done.returncode == 0, done.stdout + done.stderr  # a WARN check does not fail the run
    assert _rows_in(path) == len(GOOD) + 1
    assert f"raw_browsing_events {DAY}: loaded {len(GOOD)}, quarantined 1 (rows in files 5)" in (
        done.stdout
    )
    assert f"raw_products {DAY}: loaded 1, quarantined 0 (rows in files 1)" in done.stdout
    assert "check raw_browsing_events:quarantine_share warned" in done.stdout
    assert "FAILED" not in done.stdout

    help_text = _skiff("run", "--help").stdout
    assert "exit status:" in help_text and "ERROR check failed" in help_text


def test_the_landing_sensor_sees_a_day_landed_as_gzip_parts(settings):
    folder = write_day(settings.landing, DAY, [GOOD[0].split(",")], PRODUCTS)
    events = folder / contract.EVENTS_FILE
    (folder / "browsing_events-a.csv.gz").write_bytes(gzip.compress(events.read_bytes()))
    events.unlink()
    later = time.time() + LANDING_SETTLE_SECONDS + 1
    assert list(landing_days(settings, DAY + dt.timedelta(days=1), later)) == [DAY]
    (folder / contract.PRODUCTS_FILE).unlink()  # no catalogue yet: not complete
    assert landing_days(settings, DAY + dt.timedelta(days=1), later) == {}


# --- The SQL checks give what the contract's pandas checks give, on both read paths -----------

# Every reason, and what cleaning must get right: spaces around values, upper case enums, a
# whitespace-only value (missing), an action on a pageview, 16 digits, a negative timestamp.
ROW_CASES = [
    f"s1,pageview,,,{ms(DAY, 1)},u1",
    f" s2 , PageView ,,, {ms(DAY, 2)} , u2 ",
    f"s3,EVENT_PRODUCT, Detail ,p1,{ms(DAY, 3)},u3",
    f"s3,event_product,PURCHASE, p2 ,{ms(DAY, 4)},",
    f"   ,pageview,,,{ms(DAY, 5)},u1",  # missing_session_id
    f"s4,click,,,{ms(DAY, 6)},u1",  # bad_event_type
    "s4, ,,,1767571200000,u1",  # bad_event_type (blank)
    "s4,pageview,,,17e9,u1",  # bad_timestamp
    "s4,pageview,,,1767571200000000,u1",  # bad_timestamp (16 digits)
    "s4,pageview,,,-5,u1",  # bad_timestamp
    f"s4,pageview,,,{ms(DAY, 86_400)},u1",  # timestamp_outside_day
    f"s4,pageview,,,{ms(DAY, -1)},u1",  # timestamp_outside_day
    f"s4,event_product,wish,p1,{ms(DAY, 7)},u1",  # bad_product_action
    f"s4,event_product,,p1,{ms(DAY, 7)},u1",  # bad_product_action (none)
    f"s4,pageview,detail,,{ms(DAY, 7)},u1",  # bad_product_action (on a pageview)
    f"s4,event_product,add, ,{ms(DAY, 8)},u1",  # missing_product_sku
    f",click,,,{ms(DAY, 9)},u1",  # missing_session_id wins over bad_event_type
]
# The same rows in a file the fast reader refuses (a quoted value, non-ASCII whitespace and
# case): the contract's line reader, then the same SQL checks.
NOT_PLAIN = [
    f'"s5",pageview,,,{ms(DAY, 10)},u5',
    f"\u00a0s6\u2003,PAGEVIEW,,,{ms(DAY, 11)},u6",
    f"s7,\u00a0Event_Product ,ADD,p\u00e9,{ms(DAY, 12)},u7",
    f"s8,pageview,,,{ms(DAY, 13)}",  # wrong_field_count: a line, not a row
]


def _as_contract_gives(path: Path) -> tuple[list[tuple], list[tuple]]:
    landed = contract.read_landing_file(path, contract.EVENT_COLUMNS)
    checked = contract.validate_events(landed.rows, DAY, landed.row_numbers)
    rejected = checked.rejected.astype(object).where(checked.rejected.notna(), None)
    good = checked.good.astype(object).where(checked.good.notna(), None)
    return [tuple(r) for r in good.itertuples(index=False)], [
        tuple(r) for r in rejected.itertuples(index=False)
    ]


def _table_rows(table) -> list[tuple]:
    return [tuple(r.values()) for r in table.to_pylist()]


@pytest.mark.parametrize("extra", [[], NOT_PLAIN], ids=["plain", "not-plain"])
def test_the_sql_checks_give_the_contracts_rows_on_both_read_paths(settings, extra):
    import pyarrow as pa

    from orchestration.ingestion.validate import check_events, is_plain, stage_plain_events

    path = _events_file(settings, [HEADER, *ROW_CASES, *extra])
    good, rejected = _as_contract_gives(path)
    plain = None
    if is_plain(path, contract.file_bytes(path)):
        con = duckdb.connect()
        good_sql, rejected_sql = stage_plain_events(con, "events", [(0, path, HEADER)], DAY)
        rejected_sql = f"(select * exclude (file_index) from {rejected_sql})"
        plain = tuple(con.sql(sql).to_arrow_table() for sql in (good_sql, rejected_sql))
    if extra:
        assert plain is None, "a file with quotes and non-ASCII text went the fast path"
        landed = contract.read_landing_file(path, contract.EVENT_COLUMNS)
        rows = pa.Table.from_pandas(landed.rows, preserve_index=False)
        plain = check_events(rows, landed.row_numbers, DAY)
        assert len(landed.rejected) == 1  # the short line: the contract's, not the SQL's
    else:  # DuckDB read the file itself: the fast path was taken
        assert plain is not None, "a plain ASCII file without quotes went the slower path"
    sql_good, sql_rejected = plain
    assert _table_rows(sql_good) == good
    assert sorted(_table_rows(sql_rejected)) == sorted(rejected)
    reasons = {r[-2] for r in rejected}
    assert reasons == set(contract.REJECT_REASONS)
    assert len(good) == 4 + (3 if extra else 0)


def _on(day: dt.date, lines: list[str]) -> list[str]:
    """`lines` (of DAY) moved to `day`: every epoch-ms timestamp shifted by whole days."""
    shift = (day - DAY).days * 86_400_000
    return [re.sub(r"\b1\d{12}\b", lambda m: str(int(m.group()) + shift), x) for x in lines]


# Three days: plain files (one needing trims, one not), part files, a file for the contract's
# reader and, with `short`, a plain file with a short line (its day's query fails, so each of
# its files is read on its own).
def _range_files(short: bool) -> dict[int, dict[str, list[str]]]:
    last = [*GOOD, f"s9,pageview,,,{ms(DAY, 60)}"] if short else GOOD
    return {
        0: {"browsing_events.csv": ROW_CASES, "browsing_events-part2.csv": GOOD},
        1: {"browsing_events.csv": [*ROW_CASES, *NOT_PLAIN]},
        2: {"browsing_events.csv": last, "browsing_events-p3.csv": ROW_CASES},
    }


@pytest.mark.parametrize("short", [False, True], ids=["parts-in-one-query", "with-a-short-line"])
def test_a_range_loads_what_the_contract_reads_file_by_file(settings, short):
    """A day's plain files are read in one query; the tables hold what the contract reads
    and checks of each file alone: the same rows loaded, and the rows quarantined with their
    own file's row numbers and reasons, in file order."""
    landed_files = _range_files(short)
    days = [DAY + dt.timedelta(days=n) for n in landed_files]
    good, rejected = [], []
    for n, files in landed_files.items():
        folder = write_day(settings.landing, days[n], [], PRODUCTS)
        (folder / contract.EVENTS_FILE).unlink()
        for name, lines in files.items():
            path = folder / name
            path.write_text("\n".join([HEADER, *_on(days[n], lines)]) + "\n")
        for path in contract.day_files(folder, contract.EVENTS_FILE):  # the loader's order
            landed = contract.read_landing_file(path, contract.EVENT_COLUMNS)
            checked = contract.validate_events(landed.rows, days[n], landed.row_numbers)
            good += [tuple(r) for r in checked.good.astype(object).itertuples(index=False)]
            lines = landed.rejected.assign(event_day=days[n])
            both = pd.concat([lines, checked.rejected]).sort_values("row_number")
            rejected += [
                (r.row_number, r.reason, r.event_day) for r in both.itertuples(index=False)
            ]
    result = materialize(
        build_ingestion_assets(PARTITIONS, settings.landing),
        resources={"warehouse": build_warehouse(settings)},
        tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[-1].isoformat(),
        },
        raise_on_error=False,
    )
    assert result.success and _checks(result)["rows_reconcile"] is True
    loaded = _rows(settings, "select * from raw.raw_browsing_events")
    assert sorted(loaded, key=repr) == sorted(
        [tuple(None if pd.isna(v) else v for v in r) for r in good], key=repr
    )
    quarantined = _rows(
        settings, "select row_number, reason, event_day from raw.raw_browsing_events_rejected"
    )
    assert quarantined == rejected
    assert {r[1] for r in rejected} >= {*contract.REJECT_REASONS, "wrong_field_count"}


def test_parts_with_their_columns_in_another_order_each_load_by_their_own_header(settings):
    first = _events_file(settings, [HEADER, *GOOD[:2]])
    order = list(reversed(contract.EVENT_COLUMNS))
    swapped = [",".join(reversed(line.split(","))) for line in [*GOOD[2:], ROW_CASES[-1]]]
    (first.parent / "browsing_events-part2.csv").write_text("\n".join([",".join(order), *swapped]))
    result = _materialize(settings)
    assert result.success
    loaded = _rows(settings, "select session_id_hash, event_type from raw.raw_browsing_events")
    assert sorted(loaded) == sorted((line.split(",")[0], line.split(",")[1]) for line in GOOD)
    rejected = _rows(settings, "select row_number, reason from raw.raw_browsing_events_rejected")
    assert rejected == [(len(GOOD) - 1, "missing_session_id")]


def test_a_plain_file_with_a_short_line_goes_through_the_contracts_reader(settings):
    from orchestration.ingestion.validate import is_plain, stage_plain_events

    path = _events_file(settings, [HEADER, *GOOD, f"s9,pageview,,,{ms(DAY, 60)}"])
    assert is_plain(path, contract.file_bytes(path))  # its bytes are; its field counts are not
    assert stage_plain_events(duckdb.connect(), "events", [(0, path, HEADER)], DAY) is None
    folder = path.parent
    result = materialize(
        build_ingestion_assets(PARTITIONS, settings.landing),
        resources={"warehouse": build_warehouse(settings)},
        partition_key=DAY.isoformat(),
    )
    assert result.success and folder.is_dir()
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        rejected = con.execute(
            "select row_number, reason from raw.raw_browsing_events_rejected"
        ).fetchall()
    assert rejected == [(len(GOOD) + 1, "wrong_field_count")]


def test_the_file_row_count_is_the_non_empty_lines_after_the_header():
    """Every text of up to 7 bytes of a, comma, carriage return and line break: the count (its
    plain-text shortcut and its line-by-line path) is the lines after the first that are
    neither empty nor a lone carriage return."""
    for size in range(8):
        for parts in itertools.product([b"a", b",", b"\r", b"\n"], repeat=size):
            data = b"".join(parts)
            lines = data.split(b"\n")[1:]
            expected = sum(line not in (b"", b"\r") for line in lines) if data else 0
            assert count_file_rows(data) == expected, data
