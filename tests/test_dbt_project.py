"""The dbt project against a real DuckDB file: partitioned builds, reruns, invariants.

One module fixture lands two hand-built days into `raw`, each with its events and catalogue, and
runs real `dbt build`s (dbt-core's runner in this process, as the dbt step runs it) in order
(day 1, day 2, day 1 again, no vars, day 2 after it was re-ingested empty) and keeps a copy of
the warehouse after each, so the tests below only read. The marts' invariants are the
dbt project's own tests, run by every build; here a damaged copy of the tables shows that each
of them can fail.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from bench.conversion_examples import EXAMPLE_COLUMNS, examples_from_events

REPO = Path(__file__).resolve().parents[1]
DBT_PROJECT = REPO / "dbt_project"

DAY1, DAY2 = dt.date(2026, 1, 5), dt.date(2026, 1, 6)
T1 = 1_767_607_200_000  # 2026-01-05 10:00:00 UTC
T2 = 1_767_690_000_000  # 2026-01-06 09:00:00 UTC
MIN = 60_000

MODELS = (
    "stg_browsing_events",
    "stg_products",
    "int_events_sessionized",
    "sessions",
    "conversion_examples",
    "session_sequences",
)
# What a run over day 1 reads (column, first, last) and replaces (column, first, last): a visit
# belongs to the day it starts, so the run rewrites the session days before and of day 1 and
# reads the events one day around them.
EVENT_DAY_1 = ("event_day", "2026-01-05", "2026-01-05")
SESSION_DAYS = ("session_day", "2026-01-04", "2026-01-05")
INCREMENTAL = {
    "staging/stg_browsing_events.sql": (EVENT_DAY_1, EVENT_DAY_1),
    "intermediate/int_events_sessionized.sql": (
        ("event_day", "2026-01-03", "2026-01-06"),
        SESSION_DAYS,
    ),
    "marts/sessions.sql": (SESSION_DAYS, SESSION_DAYS),
    "marts/conversion_examples.sql": (SESSION_DAYS, SESSION_DAYS),
    "marts/session_sequences.sql": (SESSION_DAYS, SESSION_DAYS),
}
ORDER_KEYS = {
    "stg_browsing_events": ["session_id", "event_ms", "event_type", "url"],
    "stg_products": ["product_sku"],
    "int_events_sessionized": ["session_key", "event_index"],
    "sessions": ["session_key"],
    "conversion_examples": ["session_key", "prefix_length"],
    "session_sequences": ["session_key"],
}


def _pv(session: str, ms: int, url: str, day: dt.date) -> tuple:
    return (session, "pageview", None, None, ms, url, day)


def _product(session: str, action: str, sku: str, ms: int, url: str, day: dt.date) -> tuple:
    return (session, "event_product", action, sku, ms, url, day)


def _detail_with_twin(session: str, sku: str, ms: int, url: str, day: dt.date) -> list[tuple]:
    return [_product(session, "detail", sku, ms, url, day), _pv(session, ms, url, day)]


def raw_events() -> pd.DataFrame:
    rows = [
        # day 1, visit sa: duplicate pageview, two details with twins, purchase, one more page
        _pv("sa", T1, "u1", DAY1),
        _pv("sa", T1, "u1", DAY1),
        *_detail_with_twin("sa", "p1", T1 + 1 * MIN, "u2", DAY1),
        _product("sa", "add", "p1", T1 + 2 * MIN, "u2", DAY1),
        *_detail_with_twin("sa", "p2", T1 + 3 * MIN, "u3", DAY1),
        _product("sa", "purchase", "p1", T1 + 4 * MIN, "u4", DAY1),
        _pv("sa", T1 + 5 * MIN, "u5", DAY1),
        # day 1, sb: 45 minutes of silence split it into two visits
        _pv("sb", T1, "u1", DAY1),
        *_detail_with_twin("sb", "p3", T1 + 10 * MIN, "u6", DAY1),
        *_detail_with_twin("sb", "p1", T1 + 55 * MIN, "u2", DAY1),
        _pv("sb", T1 + 56 * MIN, "u7", DAY1),
        # day 1, sc: pageviews only
        _pv("sc", T1 + 60 * MIN, "u1", DAY1),
        _pv("sc", T1 + 65 * MIN, "u8", DAY1),
        # day 2, sa comes back (a new visit on a new day); duplicate purchase row
        *_detail_with_twin("sa", "p2", T2, "u3", DAY2),
        _product("sa", "add", "p2", T2 + MIN // 2, "u3", DAY2),
        _product("sa", "purchase", "p2", T2 + MIN, "u4", DAY2),
        _product("sa", "purchase", "p2", T2 + MIN, "u4", DAY2),
        # day 2, sd opens with a purchase: no conversion example
        _product("sd", "purchase", "p3", T2 + 5 * MIN, "u4", DAY2),
        _pv("sd", T2 + 6 * MIN, "u1", DAY2),
    ]
    frame = pd.DataFrame(
        rows,
        columns=[
            "session_id_hash",
            "event_type",
            "product_action",
            "product_sku_hash",
            "server_timestamp_epoch_ms",
            "hashed_url",
            "event_day",
        ],
    )
    return frame.sample(frac=1.0, random_state=7)  # landing rows come in no order


def raw_products() -> pd.DataFrame:
    rows = [
        ("p1", "c1/l1", 3, None, None, DAY1),
        ("p2", "c2/l2", 7, "0.1 0.2", None, DAY1),
        ("p3", None, None, None, None, DAY1),
        ("p1", "c1/l9", 4, None, None, DAY2),  # re-categorized and re-priced on day 2
        ("p2", "c2/l2", 8, "0.1 0.2", None, DAY2),  # re-priced on day 2
        ("p3", None, None, None, None, DAY2),
    ]
    return pd.DataFrame(
        rows,
        columns=[
            "product_sku_hash",
            "category_hash",
            "price_bucket",
            "description_vector",
            "image_vector",
            "snapshot_day",
        ],
    )


RAW_DDL = """
create schema raw;
create table raw.raw_browsing_events (
    session_id_hash varchar not null, event_type varchar not null, product_action varchar,
    product_sku_hash varchar, server_timestamp_epoch_ms bigint not null, hashed_url varchar,
    event_day date not null
);
create table raw.raw_products (
    product_sku_hash varchar not null, category_hash varchar, price_bucket integer,
    description_vector varchar, image_vector varchar, snapshot_day date not null
);
create table raw.raw_browsing_events_rejected (row_number bigint, reason varchar, event_day date);
create table raw.raw_products_rejected (row_number bigint, reason varchar, snapshot_day date);
"""


@dataclass
class Stage:
    """What one dbt invocation left behind."""

    warehouse: Path
    results: list[dict]
    target: Path
    log: str

    def query(self, sql: str) -> pd.DataFrame:
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            return con.sql(sql).df()

    def table(self, model: str) -> pd.DataFrame:
        frame = self.query(f"select * from main.{model}")
        return frame.sort_values(ORDER_KEYS[model]).reset_index(drop=True)

    def counts(self) -> dict[str, int]:
        return {m: int(self.query(f"select count(*) as n from main.{m}").n[0]) for m in MODELS}


@dataclass
class Ran:
    """One dbt invocation's outcome, as its command line would give it: the exit code
    (0 success, 1 failed nodes, 2 an error) and its log."""

    returncode: int
    stdout: str


def run_dbt(home: Path, name: str, *args: str, days: tuple[dt.date, dt.date] | None = None):
    """`dbt <args>` on `home`'s warehouse with dbt-core's own runner in this process, as the
    dbt step runs it (orchestration/dbt/inprocess.py): `days` go in the environment, where the
    step puts them, and each home keeps its partial-parse state from one invocation to the
    next, as the step's project does."""
    from orchestration.dbt.assets import END_DAY_VARIABLE, START_DAY_VARIABLE
    from orchestration.dbt.inprocess import invoke_dbt
    from orchestration.dbt.project import PARTIAL_PARSE_FILE

    target, logs = home / f"target_{name}", home / f"logs_{name}"
    env = {
        "SKIFF_HOME": str(home),
        "SKIFF_DBT_TARGET": "duckdb",
        "SKIFF_RAW_SCHEMA": "raw",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        START_DAY_VARIABLE: str(days[0]) if days else "",
        END_DAY_VARIABLE: str(days[1]) if days else "",
    }
    command = [*args, "--target-path", str(target), "--log-path", str(logs)]
    command += ["--project-dir", str(DBT_PROJECT), "--profiles-dir", str(DBT_PROJECT)]
    if args[0] in ("build", "run", "test"):
        # the serving log's models have raw tables of their own: tests/test_experiment_marts.py
        command += ["--exclude", "tag:experiments"]
    state = home / PARTIAL_PARSE_FILE
    if state.exists():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(state, target / PARTIAL_PARSE_FILE)
    result = invoke_dbt(command, project_dir=DBT_PROJECT, env=env)
    if (target / PARTIAL_PARSE_FILE).exists():
        shutil.copyfile(target / PARTIAL_PARSE_FILE, state)
    code = 0 if result.success else (2 if result.exception is not None else 1)
    log = logs / "dbt.log"
    return Ran(code, log.read_text() if log.exists() else repr(result.exception)), target, logs


def build(
    home: Path, name: str, days: tuple[dt.date, dt.date] | None, *, as_vars: bool = False
) -> Stage:
    """A `dbt build` of `days` (None: every day), given in the environment as the dbt step
    gives them, or with `as_vars` as `--vars` (a person's command line)."""
    args = ["build"]
    if days is not None and as_vars:
        args += ["--vars", json.dumps({"start_day": str(days[0]), "end_day": str(days[1])})]
    proc, target, logs = run_dbt(home, name, *args, days=None if as_vars else days)
    assert proc.returncode == 0, f"dbt build ({name}) failed:\n{proc.stdout[-6000:]}"
    snapshot = home / f"warehouse_{name}.duckdb"
    shutil.copyfile(home / "warehouse.duckdb", snapshot)
    results = json.loads((target / "run_results.json").read_text())["results"]
    return Stage(snapshot, results, target, (logs / "dbt.log").read_text())


def land(
    home: Path,
    day: dt.date,
    events: pd.DataFrame | None = None,
    products: pd.DataFrame | None = None,
) -> None:
    """Replace one day in the raw tables by its rows of events and products (by default
    raw_events() and raw_products())."""
    events = raw_events() if events is None else events
    products = raw_products() if products is None else products
    events = events[events.event_day == day]  # read by duckdb below
    products = products[products.snapshot_day == day]
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:
        con.execute("delete from raw.raw_browsing_events where event_day = ?", [day])
        con.execute("insert into raw.raw_browsing_events select * from events")
        con.execute("delete from raw.raw_products where snapshot_day = ?", [day])
        con.execute("insert into raw.raw_products select * from products")


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stage]:
    home = tmp_path_factory.mktemp("skiff_home")
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:
        con.execute(RAW_DDL)
    # Each day's events and catalogue land with the day, as the ingestion assets write them:
    # day 1 is built before day 2's catalogue exists.
    land(home, DAY1)
    out = {"day1": build(home, "day1", (DAY1, DAY1))}
    land(home, DAY2)
    out["day2"] = build(home, "day2", (DAY2, DAY2))
    out["day1_again"] = build(home, "day1_again", (DAY1, DAY1), as_vars=True)
    out["full"] = build(home, "full", None)
    # Day 2 is re-ingested from an empty file: the ingestion asset replaces its rows by none.
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:
        con.execute("delete from raw.raw_browsing_events where event_day = ?", [DAY2])
    out["day2_emptied"] = build(home, "day2_emptied", (DAY2, DAY2))
    out["home"] = home  # type: ignore[assignment]
    return out


DAY1_COUNTS = {
    "stg_browsing_events": 12,
    "stg_products": 3,
    "int_events_sessionized": 12,
    "sessions": 4,
    "conversion_examples": 10,
    "session_sequences": 3,
}
BOTH_DAYS_COUNTS = {
    "stg_browsing_events": 17,
    "stg_products": 6,
    "int_events_sessionized": 17,
    "sessions": 6,
    "conversion_examples": 12,
    "session_sequences": 4,
}


@pytest.mark.slow
def test_every_build_passes_models_data_tests_and_unit_tests(stages: dict[str, Stage]) -> None:
    for name in ("day1", "day2", "day1_again", "full", "day2_emptied"):
        results = stages[name].results
        bad = [
            (r["unique_id"], r["status"]) for r in results if r["status"] not in ("success", "pass")
        ]
        assert not bad, f"{name}: {bad}"
        unit = [r for r in results if r["unique_id"].startswith("unit_test.")]
        assert len(unit) == 5, f"{name}: unit tests run: {[r['unique_id'] for r in unit]}"
        # every data test of the project ran, but the serving log's (excluded: see run_dbt)
        manifest = json.loads((stages[name].target / "manifest.json").read_text())
        expected = {
            uid
            for uid, node in manifest["nodes"].items()
            if node["resource_type"] == "test"
            and not any(
                "experiments" in manifest["nodes"].get(parent, {}).get("tags", [])
                for parent in node["depends_on"]["nodes"]
            )
        }
        ran = {r["unique_id"] for r in results if r["unique_id"].startswith("test.")}
        assert len(expected) >= 15 and ran == expected, f"{name}: {expected ^ ran}"


@pytest.mark.slow
def test_row_counts_are_exact_and_reruns_add_nothing(stages: dict[str, Stage]) -> None:
    assert stages["day1"].counts() == DAY1_COUNTS
    assert stages["day2"].counts() == BOTH_DAYS_COUNTS
    assert stages["day1_again"].counts() == BOTH_DAYS_COUNTS
    assert stages["full"].counts() == BOTH_DAYS_COUNTS


@pytest.mark.slow
def test_rerun_and_full_build_give_the_same_tables(stages: dict[str, Stage]) -> None:
    for model in MODELS:
        expected = stages["day2"].table(model)
        pd.testing.assert_frame_equal(stages["day1_again"].table(model), expected)
        pd.testing.assert_frame_equal(stages["full"].table(model), expected)


@pytest.mark.slow
def test_emptied_day_is_emptied_downstream(stages: dict[str, Stage]) -> None:
    emptied = stages["day2_emptied"]
    # only the events were emptied: day 2's catalogue stays
    assert emptied.counts() == {**DAY1_COUNTS, "stg_products": BOTH_DAYS_COUNTS["stg_products"]}
    for model in ("sessions", "conversion_examples", "session_sequences"):
        n = emptied.query(f"select count(*) as n from main.{model} where session_day = '{DAY2}'")
        assert n.n[0] == 0
        day1 = f"select * from main.{model} where session_day = '{DAY1}'"
        before = stages["full"].query(day1).sort_values(ORDER_KEYS[model]).reset_index(drop=True)
        after = emptied.query(day1).sort_values(ORDER_KEYS[model]).reset_index(drop=True)
        pd.testing.assert_frame_equal(after, before)


@pytest.mark.slow
def test_sessions_content(stages: dict[str, Stage]) -> None:
    sessions = stages["full"].table("sessions").set_index("session_key")
    assert list(sessions.index) == [
        "sa-20260105-1",
        "sa-20260106-1",
        "sb-20260105-1",
        "sb-20260105-2",
        "sc-20260105-1",
        "sd-20260106-1",
    ]
    sa = sessions.loc["sa-20260105-1"]
    assert (sa.n_events, sa.n_pageviews, sa.n_detail, sa.n_add, sa.n_purchase) == (6, 2, 2, 1, 1)
    assert sa.n_distinct_products == 2 and bool(sa.purchased)
    assert sa.duration_seconds == 300.0
    assert sa.first_purchase_at == pd.Timestamp("2026-01-05 10:04:00")
    assert sessions.loc["sa-20260106-1"].n_purchase == 1  # the duplicate row is gone
    assert sessions.loc[["sb-20260105-1", "sb-20260105-2"], "n_events"].tolist() == [2, 2]
    assert not sessions.loc["sc-20260105-1"].purchased
    assert pd.isna(sessions.loc["sc-20260105-1"].first_purchase_at)
    assert sessions.session_day.astype(str).tolist() == [
        "2026-01-05", "2026-01-06", "2026-01-05", "2026-01-05", "2026-01-05", "2026-01-06",
    ]  # fmt: skip


@pytest.mark.slow
def test_conversion_examples_and_sequences_content(stages: dict[str, Stage]) -> None:
    full = stages["full"]
    examples = full.table("conversion_examples")
    sa = examples[examples.session_key == "sa-20260105-1"]
    assert sa.prefix_length.tolist() == [1, 2, 3, 4]
    assert sa.product_action.tolist()[1:] == ["detail", "add", "detail"]
    assert sa.will_purchase.all()
    assert sa.category.tolist()[1:] == ["c1/l1", "c1/l1", "c2/l2"]  # day 1's catalogue
    assert "sd-20260106-1" not in set(examples.session_key)
    assert not examples[examples.session_key.str.startswith("sb")].will_purchase.any()

    sequences = full.table("session_sequences").set_index("session_key")
    assert sequences.product_skus.to_dict() == {
        "sa-20260105-1": "p1 p2",
        "sa-20260106-1": "p2",
        "sb-20260105-1": "p3",
        "sb-20260105-2": "p1",
    }


@pytest.mark.slow
def test_a_later_catalogue_changes_no_past_day(stages: dict[str, Stage]) -> None:
    """Day 2's catalogue re-categorizes p1 and re-prices p2. Day 1, built before it landed, is
    the same after day 2's build, a rerun of day 1 and a full rebuild; day 2 sees it."""
    day1 = {
        "int_events_sessionized": f"event_day = '{DAY1}'",
        "sessions": f"session_day = '{DAY1}'",
        "conversion_examples": f"session_day = '{DAY1}'",
        "session_sequences": f"session_day = '{DAY1}'",
    }
    for model, where in day1.items():
        before = stages["day1"].query(f"select * from main.{model} where {where}")
        before = before.sort_values(ORDER_KEYS[model]).reset_index(drop=True)
        assert len(before) > 0
        for name in ("day2", "day1_again", "full"):
            after = stages[name].query(f"select * from main.{model} where {where}")
            after = after.sort_values(ORDER_KEYS[model]).reset_index(drop=True)
            pd.testing.assert_frame_equal(after, before, obj=f"{model} of day 1 after {name}")

    catalogue = stages["full"].query(
        "select distinct cast(event_day as varchar), product_sku, category, price_bucket"
        " from main.int_events_sessionized where product_sku in ('p1', 'p2') order by all"
    )
    assert list(catalogue.itertuples(index=False, name=None)) == [
        (str(DAY1), "p1", "c1/l1", 3),
        (str(DAY1), "p2", "c2/l2", 7),
        (str(DAY2), "p2", "c2/l2", 8),
    ]


@pytest.mark.slow
def test_the_pandas_twin_gives_the_mart(stages: dict[str, Stage]) -> None:
    """bench/conversion_examples.py, the mart in pandas for benchmarks, on the same raw rows."""
    local = examples_from_events(raw_events(), raw_products())
    mart = stages["full"].table("conversion_examples")
    assert len(local) == len(mart) == BOTH_DAYS_COUNTS["conversion_examples"]
    for column in EXAMPLE_COLUMNS:
        assert _text(local[column]) == _text(mart[column]), column


def _text(values: pd.Series) -> list[str]:
    """Values as text, missing as '', dates and timestamps alike ('2026-01-05 10:00:00')."""
    if pd.api.types.is_datetime64_any_dtype(values):
        values = values.dt.strftime("%Y-%m-%d %H:%M:%S")
    elif values.map(lambda v: isinstance(v, dt.date)).any():
        values = pd.to_datetime(values).dt.strftime("%Y-%m-%d %H:%M:%S")
    return values.astype(object).where(values.notna(), "").astype(str).tolist()


@dataclass(frozen=True)
class Damage:
    """One fault a model bug could leave in a built table, and the dbt tests that state the
    invariant it breaks (each fails on one row per damage)."""

    sql: str
    caught_by: tuple[str, ...]


DAMAGES = (
    Damage(  # the first purchase leaks into its visit's examples
        """insert into main.conversion_examples (session_key, session_id, session_day,
               prefix_length, event_type, product_action, product_sku, event_at, will_purchase)
           values ('sa-20260106-1', 'sa', '2026-01-06', 3, 'event_product', 'purchase', 'p2',
               '2026-01-06 09:01:00', true)""",
        (
            "assert_conversion_examples_before_first_purchase",
            "conversion_examples_row_conditions",
        ),
    ),
    Damage(  # a duplicate example key; prefixes 1, 1, 3, 4 still count up to their maximum
        """update main.conversion_examples set prefix_length = 1
           where session_key = 'sa-20260105-1' and prefix_length = 2""",
        ("unique_combination_of_columns_conversion_examples_session_key__prefix_length",),
    ),
    Damage(  # a visit's examples no longer start at its first event
        """delete from main.conversion_examples
           where session_key = 'sb-20260105-2' and prefix_length = 1""",
        ("assert_conversion_prefixes_are_contiguous",),
    ),
    Damage(  # a visit crosses its gap: 31 minutes between two of its events
        """update main.int_events_sessionized
           set event_ms = event_ms + 26 * 60000, seconds_since_prev = seconds_since_prev + 26 * 60
           where session_key = 'sc-20260105-1' and event_index = 2""",
        ("assert_visits_split_on_session_gap",),
    ),
    Damage(  # a visit split off although only 15 minutes passed since the previous one
        """update main.int_events_sessionized set event_ms = event_ms - 30 * 60000
           where session_key = 'sb-20260105-2'""",
        ("assert_visits_split_on_session_gap",),
    ),
    Damage(  # sessions counts an event the sessionized events no longer have
        """delete from main.int_events_sessionized
           where session_key = 'sd-20260106-1' and event_index = 2""",
        ("assert_sessions_n_events_match_events",),
    ),
    Damage(
        """update main.sessions set duration_seconds = -duration_seconds
           where session_key = 'sa-20260105-1'""",
        ("sessions_row_conditions",),
    ),
    Damage(  # an event of the visit a day before the visit's day
        """update main.int_events_sessionized set event_at = event_at - interval 1 day
           where session_key = 'sb-20260105-1' and event_index = 1""",
        ("assert_session_events_on_session_day",),
    ),
    Damage(  # two catalogue rows for one SKU and day: its events would be doubled
        """insert into main.stg_products select * from main.stg_products
           where product_sku = 'p3' and valid_from = '2026-01-05'""",
        ("unique_combination_of_columns_stg_products_product_sku__valid_from",),
    ),
    Damage(  # a catalogue row that ends before it starts
        """update main.stg_products set valid_to = valid_from - 1
           where product_sku = 'p2' and valid_to is not null""",
        ("stg_products_row_conditions",),
    ),
    Damage(
        "insert into main.sessions select * from main.sessions where session_key = 'sc-20260105-1'",
        ("unique_sessions_session_key",),
    ),
    Damage(
        "update main.sessions set purchased = false where session_key = 'sd-20260106-1'",
        ("sessions_row_conditions",),
    ),
    Damage(  # a sequence of a visit that does not exist
        """insert into main.session_sequences
           select 'sz-20260105-1', session_id, session_day, n_views, product_skus, first_view_at,
               last_view_at
           from main.session_sequences where session_key = 'sb-20260105-1'""",
        (
            "relationships_session_sequences_session_key__session_key__ref_sessions_",
            "assert_session_sequences_match_detail_views",
        ),
    ),
    Damage(  # a viewed SKU dropped from its sequence
        "update main.session_sequences set product_skus = 'p1' where session_key = 'sa-20260105-1'",
        ("assert_session_sequences_match_detail_views",),
    ),
    Damage(  # an event counted twice among the pageviews: the counts no longer add up
        """update main.sessions set n_pageviews = n_pageviews + 1
           where session_key = 'sb-20260105-1'""",
        ("sessions_row_conditions",),
    ),
    Damage(  # an event type outside the contract, on one staged row
        """update main.stg_browsing_events set event_type = 'click'
           where rowid = (select min(rowid) from main.stg_browsing_events)""",
        ("stg_browsing_events_row_conditions",),
    ),
    Damage(  # a label lost
        """update main.conversion_examples set will_purchase = null
           where session_key = 'sb-20260105-1' and prefix_length = 1""",
        ("conversion_examples_row_conditions",),
    ),
)


@pytest.mark.slow
def test_damaged_tables_fail_exactly_the_dbt_tests_that_state_the_invariant(
    stages: dict[str, Stage],
) -> None:
    """The marts' invariants are stated once, as dbt tests, and run in every build above; this
    shows they read the built tables and can fail."""
    home, full = stages["home"], stages["full"]
    shutil.copyfile(full.warehouse, home / "warehouse.duckdb")
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:
        for damage in DAMAGES:
            con.execute(damage.sql)
    # same project, vars and profile as the full build: dbt can reuse its parse
    (home / "target_damaged").mkdir()
    partial_parse = "partial_parse.msgpack"
    shutil.copyfile(full.target / partial_parse, home / "target_damaged" / partial_parse)

    proc, target, _ = run_dbt(home, "damaged", "test", "--select", "test_type:data")
    assert proc.returncode == 1, proc.stdout[-6000:]
    results = json.loads((target / "run_results.json").read_text())["results"]
    assert {r["unique_id"] for r in results} == {
        r["unique_id"] for r in full.results if r["unique_id"].startswith("test.")
    }
    failed = {r["unique_id"].split(".")[2]: r["failures"] for r in results if r["status"] != "pass"}
    assert failed == Counter(name for damage in DAMAGES for name in damage.caught_by)


@pytest.mark.slow
def test_partition_vars_filter_the_upstream_scan(stages: dict[str, Stage]) -> None:
    stage = stages["day1_again"]  # the first day-1 build created the tables: nothing to delete
    compiled = stage.target / "compiled" / "skiff" / "models"
    for path, ((column, first, last), (partition, start, end)) in INCREMENTAL.items():
        sql = (compiled / path).read_text()
        # the filter sits right on the import CTE, before any window or join
        assert re.search(
            rf"from \S+\s+where\s+{column} between cast\('{first}' as date\) "
            rf"and cast\('{last}' as date\)",
            sql,
        ), f"{path} does not filter its upstream scan:\n{sql}"
        table = Path(path).stem
        assert re.search(
            rf'delete from "warehouse"."main"."{table}"\s+where\s+{partition} between '
            rf"cast\('{start}' as date\) and cast\('{end}' as date\)",
            stage.log,
        ), f"no partition delete for {table}"
    # Of the session day before the run's (2026-01-04), only the sessions with an event in its
    # last 30 minutes (from 23:30 UTC) are read before the run's first day, and deleted and
    # written again by every session-grain model: the other visits of that day are final.
    late_edge = int(dt.datetime(2026, 1, 4, 23, 30, tzinfo=dt.UTC).timestamp() * 1000)

    def late(day_column: str) -> str:
        return (
            rf"session_id in \(select session_id from \S+\s+where\s+{day_column} = "
            rf"cast\('2026-01-04' as date\)\s+and event_ms >= {late_edge}\)"
        )

    sessionized = (compiled / "intermediate/int_events_sessionized.sql").read_text()
    assert re.search(
        rf"event_day >= cast\('2026-01-05' as date\)\s+or {late('event_day')}", sessionized
    )
    for table, day_column in [
        ("int_events_sessionized", "event_day"),
        *(
            (mart, "session_day")
            for mart in ("sessions", "conversion_examples", "session_sequences")
        ),
    ]:
        rewritten = rf"session_day >= cast\('2026-01-05' as date\)\s+or {late(day_column)}"
        assert re.search(
            rf'delete from "warehouse"."main"."{table}"\s+where [^;]*?{rewritten}', stage.log
        ), f"{table} deletes more of 2026-01-04 than its late sessions"
        if table != "int_events_sessionized":
            assert re.search(rewritten, (compiled / f"marts/{table}.sql").read_text()), table
    # of its first scanned day, the sessionization reads only the last 30 minutes before the
    # first session day's midnight (2026-01-04 00:00 UTC for a run over 2026-01-05)
    first_session_day = dt.datetime(2026, 1, 4, tzinfo=dt.UTC)
    edge = int(first_session_day.timestamp() * 1000) - 30 * MIN
    sessionized = (compiled / "intermediate/int_events_sessionized.sql").read_text()
    assert f"and event_ms >= {edge}" in sessionized, sessionized[:1500]
    # data tests check the days of the run too
    test_sql = (compiled / "marts/_marts.yml/unique_sessions_session_key.sql").read_text()
    assert "where session_day between cast('2026-01-04' as date)" in test_sql
    no_vars = (stages["full"].target / "compiled/skiff/models/marts/sessions.sql").read_text()
    assert "between cast(" not in no_vars and "1 = 1" in no_vars


@pytest.mark.slow
@pytest.mark.parametrize(
    ("partition_vars", "message"),
    [
        ({"start_day": "2026-01-05"}, "pass both start_day and end_day"),
        ({"start_day": "2026-01-07", "end_day": "2026-01-05"}, "is after end_day"),
        ({"start_day": "2026-01-05' or 1=1 --", "end_day": "2026-01-05"}, "not an ISO date"),
    ],
)
def test_bad_partition_vars_fail_before_touching_data(
    stages: dict[str, Stage], partition_vars: dict, message: str
) -> None:
    home = stages["home"]
    proc, _, _ = run_dbt(
        home, "bad_vars", "compile", "--select", "stg_browsing_events",
        "--vars", json.dumps(partition_vars),
    )  # fmt: skip
    assert proc.returncode != 0
    assert message in proc.stdout


# Visits that cross midnight UTC, in a warehouse of their own: three days, landed and built
# day by day (with a rerun of day 2 after day 3), and the same three days in one range run.
DAY3 = dt.date(2026, 1, 7)
MIDNIGHT_2 = 1_767_657_600_000  # 2026-01-06 00:00:00 UTC
MIDNIGHT_3 = MIDNIGHT_2 + 24 * 60 * MIN


def midnight_events() -> pd.DataFrame:
    rows = [
        # la: a visit in the evening, then one that adds before midnight and buys after it
        _pv("la", MIDNIGHT_2 - 240 * MIN, "u1", DAY1),
        _pv("la", MIDNIGHT_2 - 10 * MIN, "u1", DAY1),
        _product("la", "add", "p1", MIDNIGHT_2 - 5 * MIN, "u2", DAY1),
        _product("la", "purchase", "p1", MIDNIGHT_2 + 5 * MIN, "u4", DAY2),
        _pv("la", MIDNIGHT_2 + 6 * MIN, "u5", DAY2),
        # la comes back in the morning: the first visit that starts on day 2
        _pv("la", MIDNIGHT_2 + 600 * MIN, "u1", DAY2),
        # lc: views before the second midnight, buys 25 minutes later, on day 3
        *_detail_with_twin("lc", "p2", MIDNIGHT_3 - 15 * MIN, "u3", DAY2),
        _product("lc", "purchase", "p2", MIDNIGHT_3 + 10 * MIN, "u4", DAY3),
        # ld: 40 minutes of silence across the midnight: two visits, one per day
        _pv("ld", MIDNIGHT_3 - 20 * MIN, "u1", DAY2),
        _pv("ld", MIDNIGHT_3 + 20 * MIN, "u6", DAY3),
        # le: exactly the 30-minute gap across the first midnight: one visit; lf: a millisecond
        # more, two visits; lg: an evening visit an hour before it, final once day 1 lands
        _pv("le", MIDNIGHT_2 - 30 * MIN, "u1", DAY1),
        _pv("le", MIDNIGHT_2, "u2", DAY2),
        _pv("lf", MIDNIGHT_2 - 30 * MIN - 1, "u1", DAY1),
        _pv("lf", MIDNIGHT_2, "u2", DAY2),
        _pv("lg", MIDNIGHT_2 - 90 * MIN, "u1", DAY1),
        _pv("lg", MIDNIGHT_2 - 80 * MIN, "u3", DAY1),
    ]
    frame = pd.DataFrame(rows, columns=raw_events().columns)
    return frame.sample(frac=1.0, random_state=3)


def midnight_products() -> pd.DataFrame:
    products = raw_products()
    day3 = products[products.snapshot_day == DAY2].assign(snapshot_day=DAY3)
    return pd.concat([products, day3], ignore_index=True)


@pytest.fixture(scope="module")
def midnight(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stage]:
    daily, ranged = tmp_path_factory.mktemp("daily"), tmp_path_factory.mktemp("ranged")
    out = {}
    for home in (daily, ranged):
        with duckdb.connect(str(home / "warehouse.duckdb")) as con:
            con.execute(RAW_DDL)
    events, products = midnight_events(), midnight_products()
    for day in (DAY1, DAY2, DAY3):
        land(daily, day, events, products)
        out[f"day{day.day - 4}"] = build(daily, f"m{day}", (day, day))
        land(ranged, day, events, products)
    out["day2_again"] = build(daily, "m_day2_again", (DAY2, DAY2))
    out["range"] = build(ranged, "m_range", (DAY1, DAY3))
    return out


@pytest.mark.slow
def test_a_purchase_after_midnight_makes_the_visit_a_buyer(midnight: dict[str, Stage]) -> None:
    final = midnight["day3"]
    sessions = final.table("sessions").set_index("session_key")
    assert sorted(sessions.index[sessions.session_id == "la"]) == [
        "la-20260105-1",
        "la-20260105-2",
        "la-20260106-1",
    ]
    late = sessions.loc["la-20260105-2"]
    assert str(late.session_day.date()) == str(DAY1)
    assert (late.n_events, late.n_add, late.n_purchase, bool(late.purchased)) == (4, 1, 1, True)
    assert late.ended_at == pd.Timestamp("2026-01-06 00:06:00")
    examples = final.table("conversion_examples")
    bought = examples[examples.session_key == "la-20260105-2"]
    assert bought.prefix_length.tolist() == [1, 2]
    assert bought.product_action.tolist() == [None, "add"] and bought.will_purchase.all()
    # 40 minutes of silence are two visits, whichever day they fall on
    assert sessions.loc[["ld-20260106-1", "ld-20260107-1"], "n_events"].tolist() == [1, 1]
    # the purchase, on day 2, is an event of day 1's visit; day 2's own visits are the rest
    events = final.table("int_events_sessionized")
    purchase = events[(events.session_id == "la") & (events.product_action == "purchase")]
    assert purchase[["session_key", "event_index", "seconds_since_prev"]].values.tolist() == [
        ["la-20260105-2", 3, 600.0]
    ]
    assert str(purchase.event_day.iloc[0].date()) == str(DAY2)


@pytest.mark.slow
def test_the_next_day_rewrites_the_visits_of_the_day_before_it_can_continue(
    midnight: dict[str, Stage],
) -> None:
    """Day 2's run rewrites, of day 1, only the sessions with an event in its last 30 minutes
    (macros/partitions.sql, in_rewritten_sessions): at the edge of that window too."""
    for stage in ("day2", "day3", "range"):
        sessions = midnight[stage].table("sessions").set_index("session_key")
        counts = sessions.n_events.to_dict()
        assert counts["le-20260105-1"] == 2 and "le-20260106-1" not in counts, stage
        assert counts["lf-20260105-1"] == 1 and counts["lf-20260106-1"] == 1, stage
        assert counts["lg-20260105-1"] == 2, stage
        assert sessions.loc["le-20260105-1", "ended_at"] == pd.Timestamp("2026-01-06"), stage
    # Day 2's run wrote its own late sessions (lc, ld: events after 23:30) after every other
    # row, so day 3's run deletes a block at the end of each table, not rows all through it.
    for model in ("int_events_sessionized", "sessions", "conversion_examples"):
        late = "session_day = '2026-01-06' and session_id in ('lc', 'ld')"
        order = midnight["day2"].query(
            f"select min(rowid) filter ({late}) as first_late,"
            f" max(rowid) filter (not ({late})) as last_other,"
            f" count(*) filter ({late}) as n_late from main.{model}"
        )
        assert order.n_late[0] >= 2 and order.first_late[0] > order.last_other[0], model


@pytest.mark.slow
def test_a_visit_into_a_day_not_yet_landed_is_completed_when_it_lands(
    midnight: dict[str, Stage],
) -> None:
    before, after = midnight["day2"], midnight["day3"]
    key = "lc-20260106-1"
    provisional = before.table("sessions").set_index("session_key").loc[key]
    assert (provisional.n_events, bool(provisional.purchased)) == (1, False)
    examples = before.table("conversion_examples")
    assert examples[examples.session_key == key].will_purchase.tolist() == [False]

    final = after.table("sessions").set_index("session_key").loc[key]
    assert (final.n_events, bool(final.purchased)) == (2, True)
    assert final.first_purchase_at == pd.Timestamp("2026-01-07 00:10:00")
    examples = after.table("conversion_examples")
    assert examples[examples.session_key == key].will_purchase.tolist() == [True]
    # day 1 was final once day 2 had landed: day 3 does not change it
    for model in ("sessions", "conversion_examples", "session_sequences"):
        day1 = f"select * from main.{model} where session_day = '{DAY1}'"
        frames = [
            s.query(day1).sort_values(ORDER_KEYS[model]).reset_index(drop=True)
            for s in (before, after)
        ]
        pd.testing.assert_frame_equal(frames[1], frames[0], obj=model)


@pytest.mark.slow
def test_day_by_day_a_rerun_and_one_range_run_give_the_same_tables(
    midnight: dict[str, Stage],
) -> None:
    for name in ("day1", "day2", "day3", "day2_again", "range"):
        bad = [
            r["unique_id"] for r in midnight[name].results if r["status"] not in ("success", "pass")
        ]
        assert not bad, f"{name}: {bad}"
    for model in MODELS:
        expected = midnight["day3"].table(model)
        for name in ("day2_again", "range"):
            pd.testing.assert_frame_equal(
                midnight[name].table(model), expected, obj=f"{model} {name}"
            )
    # the pandas twin of the mart crosses midnight the same way
    local = examples_from_events(midnight_events(), midnight_products())
    mart = midnight["range"].table("conversion_examples")
    for column in EXAMPLE_COLUMNS:
        assert _text(local[column]) == _text(mart[column]), column


# --- dbt's fixed cost per run ----------------------------------------------------------------


def _project_copy(tmp_path: Path):
    from dagster_dbt import DbtProject

    from skiff.settings import DBT_PROJECT_DIR

    copy = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, copy, ignore=shutil.ignore_patterns("target", "logs"))
    return DbtProject(project_dir=copy, profiles_dir=copy, target="duckdb")


def test_a_dbt_invocation_runs_no_version_check(tmp_path, monkeypatch):
    """dagster-dbt's `dbt --version` asks the package index for the latest releases."""
    from orchestration.dbt.project import dbt_cli

    calls = tmp_path / "calls.txt"
    real = Path(sys.executable).parent / "dbt"
    wrapper = tmp_path / "dbt"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("SKIFF_HOME", str(tmp_path / "home"))
    dbt = dbt_cli(_project_copy(tmp_path)).model_copy(update={"dbt_executable": str(wrapper)})
    dbt.cli(["debug", "--config-dir"], raise_on_error=False).wait()
    assert calls.read_text().splitlines() == ["debug --config-dir --target duckdb"]


def _invoke_logged(project, dbt, args: list[str], env: dict, warehouse: Path | None = None):
    """One invocation as the dbt step makes it (its own target folder, the shared parse state
    kept afterwards), running no node; dbt's log of it."""
    from orchestration.dbt.assets import TRANSLATOR
    from orchestration.dbt.inprocess import dbt_in_process
    from orchestration.dbt.project import dbt_invocation, keep_partial_parse

    target, env = dbt_invocation(project.project_dir, env)
    events = dbt_in_process(
        dbt,
        args,
        context=None,
        target_path=target,
        env=env,
        translator=TRANSLATOR,
        warehouse=warehouse,
    )
    assert list(events) == []  # `ls` and `show` run no node
    log = (target / "dbt.log").read_text()
    keep_partial_parse(target)
    return log


def test_a_new_day_range_keeps_dbts_partial_parse(tmp_path, monkeypatch):
    from orchestration.dbt.assets import END_DAY_VARIABLE, START_DAY_VARIABLE
    from orchestration.dbt.project import dbt_cli

    monkeypatch.setenv("SKIFF_HOME", str(tmp_path / "home"))
    project = _project_copy(tmp_path)
    dbt = dbt_cli(project)
    ls = ["ls", "--select", "sessions"]
    logs = [
        _invoke_logged(project, dbt, ls, {START_DAY_VARIABLE: day, END_DAY_VARIABLE: day})
        for day in ("2026-01-05", "2026-01-06", "2026-01-07")
    ]
    assert "Unable to do partial parsing" in logs[0] or "Starting full parse" in logs[0]
    for log in logs[1:]:
        assert "Partial parsing enabled, no changes found" in log, log[-2000:]
    assert os.environ.get(START_DAY_VARIABLE) is None  # the range does not outlive the call


def test_another_skiff_home_keeps_dbts_partial_parse(tmp_path, monkeypatch):
    """The step names its DuckDB file relative to the file's folder (invoke_dbt's
    `warehouse`), so dbt's saved parse state, which records the connection's path, stays valid
    when homes take turns (each test's own, two benches' sizes); each home's queries still go
    to its own file."""
    from orchestration.dbt.project import dbt_cli

    project = _project_copy(tmp_path)
    dbt = dbt_cli(project)
    logs = []
    for name in ("a", "b", "a", "b"):
        home = tmp_path / name
        home.mkdir(exist_ok=True)
        monkeypatch.setenv("SKIFF_HOME", str(home))
        show = ["show", "--inline", "select 1 as x"]
        logs.append(_invoke_logged(project, dbt, show, {}, warehouse=home / "warehouse.duckdb"))
        assert (home / "warehouse.duckdb").exists()  # the connection went to this home's file
    for log in logs[1:]:
        assert "Partial parsing enabled, no changes found" in log, log[-2000:]
    assert not list(project.project_dir.glob("*.duckdb"))  # nothing opened beside the project
