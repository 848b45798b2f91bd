"""The warehouse as production meets it.

- Snowflake (fakesnow's server on 127.0.0.1): a day replacement whose load fails leaves the
  day's previous rows, through both load paths; a good one replaces them; no staging table is
  left behind. The stand-in is DuckDB, where DDL inside a transaction does not commit it;
  Snowflake commits the open transaction before every DDL statement, so the tests make the
  stand-in's client do the same (`ddl_commits`): a delete issued before a load's DDL is then
  committed, as in production.
- Secrets: the Dagster UI (a real webserver's GraphQL API) shows the Snowflake password's
  variable name, never its value.
- DuckDB: a reader in another process (short queries in a loop, through `Warehouse.query`)
  and this process's writes and dbt build take turns instead of failing; a reader that holds
  the file open shares it with `Warehouse.query`, and a write waits for it only up to
  SKIFF_DUCKDB_LOCK_TIMEOUT_S, then fails saying so.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import httpx
import pandas as pd
import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    build_run_status_sensor_context,
)

from ml.synthetic import GeneratorConfig, generate
from orchestration.definitions import build_definitions
from orchestration.resources import (
    SnowflakeWarehouse,
    WarehouseLockTimeout,
    build_warehouse,
)
from orchestration.runs import run_days
from skiff.settings import REPO_ROOT, ConfigError, Settings
from tests.servers import fakesnow_server, free_port, running

DAY = dt.date(2026, 1, 5)
OTHER_DAY = DAY + dt.timedelta(days=1)
COLUMNS = {"session_id_hash": "varchar", "server_timestamp_epoch_ms": "bigint", "event_day": "date"}
SECRET = "s3cr3t-XYZ"


def _frame(day: dt.date, sessions: list[str], stamps: list) -> pd.DataFrame:
    return pd.DataFrame(
        {"session_id_hash": sessions, "server_timestamp_epoch_ms": stamps, "event_day": day}
    )


# --- Snowflake: atomic day replacement -------------------------------------------------------


@pytest.fixture
def fakesnow_port(tmp_path: Path):
    with fakesnow_server(tmp_path / "fakesnow.log") as port:
        yield port


DDL = re.compile(r"\s*(create|drop|alter|truncate|grant|revoke)\b", re.IGNORECASE)


@pytest.fixture
def ddl_commits(monkeypatch):
    """Snowflake's rule on the stand-in's client: a DDL statement first commits the session's
    open transaction (https://docs.snowflake.com/en/sql-reference/transactions#ddl)."""
    from snowflake.connector.cursor import SnowflakeCursor

    execute = SnowflakeCursor.execute
    commits: list[str] = []

    def commit_then_execute(self, command, *args, **kwargs):
        if isinstance(command, str) and DDL.match(command):
            self.connection.commit()
            commits.append(command.split("(")[0].strip()[:80])
        return execute(self, command, *args, **kwargs)

    monkeypatch.setattr(SnowflakeCursor, "execute", commit_then_execute)
    return commits


def _standin(port: int, load_method: str) -> SnowflakeWarehouse:
    return SnowflakeWarehouse(
        account="standin",
        user="skiff",
        password="not-a-secret",
        role="transformer",
        warehouse="transforming",
        database="skiff",
        host="127.0.0.1",
        port=port,
        protocol="http",
        load_method=load_method,
        schema_name="raw",
    )


def _within(seconds: float, call) -> BaseException | None:
    """Run `call` in a daemon thread; what it raised (None if nothing). Fails the test if it
    has not returned after `seconds` (the connector retries some server errors for minutes)."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"the replacement had not returned after {seconds:.0f} s"
    return outcome[0]


def _rows(warehouse: SnowflakeWarehouse) -> dict[str, list[str]]:
    found = warehouse.query(
        "select session_id_hash, event_day from raw.events order by session_id_hash"
    )
    days = pd.to_datetime(found["event_day"]).dt.date
    return {
        day.isoformat(): list(found.loc[days == day, "session_id_hash"]) for day in (DAY, OTHER_DAY)
    }


@pytest.mark.slow
def test_a_failing_load_leaves_the_snowflake_day_in_place(fakesnow_port, ddl_commits):
    inserts = _standin(fakesnow_port, "insert")
    with inserts._resource().get_connection() as con:  # a real account has its database
        con.cursor().execute("create database if not exists skiff")
    for day, sessions in ((DAY, ["a", "b", "c"]), (OTHER_DAY, ["z"])):
        frame = _frame(day, sessions, [1, 2, 3][: len(sessions)])
        inserts.replace_days("events", "event_day", [day], frame, columns=COLUMNS)
    before = {DAY.isoformat(): ["a", "b", "c"], OTHER_DAY.isoformat(): ["z"]}
    assert _rows(inserts) == before

    # a value the bigint column refuses: the load into the staging table fails for real
    bad = _frame(DAY, ["d", "e"], [4, "not-a-number"])
    with pytest.raises(Exception, match="not-a-number"):
        inserts.replace_days("events", "event_day", [DAY], bad, columns=COLUMNS)
    assert _rows(inserts) == before

    # write_pandas: its stage and file-format DDL commit an open transaction, so they must run
    # before the day's delete. On the stand-in the load fails (its PUT is not served, and the
    # value is refused anyway); the previous rows must survive it.
    staged = _standin(fakesnow_port, "write_pandas")
    raised = _within(
        90, lambda: staged.replace_days("events", "event_day", [DAY], bad, columns=COLUMNS)
    )
    assert raised is not None, "the stand-in accepted a load it cannot take"
    assert any("stage" in c.lower() for c in ddl_commits), "write_pandas issued no stage DDL"
    assert _rows(inserts) == before

    good = _frame(DAY, ["f", "g"], [5, 6])
    inserts.replace_days("events", "event_day", [DAY], good, columns=COLUMNS)
    assert _rows(inserts) == {DAY.isoformat(): ["f", "g"], OTHER_DAY.isoformat(): ["z"]}

    tables = inserts.query("select lower(table_name) as name from information_schema.tables")
    assert "events" in set(tables["name"])
    assert [n for n in tables["name"] if "__load_" in n] == [], "a staging table was left"


# --- Secrets: what the Dagster UI shows -----------------------------------------------------

RESOURCES = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
    name allTopLevelResourceDetails { name configuredValues { key value type } } } } } }
"""


@pytest.mark.e2e
@pytest.mark.slow
def test_the_ui_shows_the_snowflake_password_variable_never_its_value(
    settings, tmp_path, monkeypatch
):
    for name, value in {
        "SKIFF_ENV": "prod",
        "SKIFF_HOME": str(tmp_path / "prod"),
        "SKIFF_REPORTS_URL": "https://reports.skiff.example/reports",
        "SKIFF_MANIFEST_KEY": "manifest-key-for-the-test",
        "SNOWFLAKE_ACCOUNT": "standin",
        "SNOWFLAKE_USER": "skiff",
        "SNOWFLAKE_PASSWORD": SECRET,
        "SNOWFLAKE_ROLE": "transformer",
        "SNOWFLAKE_WAREHOUSE": "transforming",
        "SNOWFLAKE_DATABASE": "skiff",
        "SNOWFLAKE_SCHEMA": "analytics",
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SNOWFLAKE_PRIVATE_KEY_PATH", raising=False)
    (tmp_path / "dagster").mkdir()
    port = free_port()
    webserver = str(Path(sys.executable).parent / "dagster-webserver")
    argv = [webserver, "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with running(argv, tmp_path / "webserver.log", f"http://127.0.0.1:{port}/server_info"):
        deadline = time.monotonic() + 120
        while True:  # the code location loads after the server answers
            response = httpx.post(
                f"http://127.0.0.1:{port}/graphql", json={"query": RESOURCES}, timeout=30
            )
            response.raise_for_status()
            nodes = response.json()["data"]["repositoriesOrError"].get("nodes")
            if nodes or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert nodes, f"no code location loaded: {response.text[:2000]}"
    assert SECRET not in response.text
    shown = {
        resource["name"]: {v["key"]: (v["type"], v["value"]) for v in resource["configuredValues"]}
        for node in nodes
        for resource in node["allTopLevelResourceDetails"]
    }
    assert shown["warehouse"]["password"] == ("ENV_VAR", "SNOWFLAKE_PASSWORD"), shown
    assert "private_key_path" not in shown["warehouse"], "an unset secret is configured"
    assert shown["warehouse"]["account"] == ("VALUE", '"standin"')  # values as JSON


# --- DuckDB: readers and writers take turns --------------------------------------------------

READER = """
import json, sys, time
from pathlib import Path
from orchestration.resources import build_warehouse
from skiff.settings import load_settings

ready, stop, out = (Path(p) for p in sys.argv[1:4])
warehouse = build_warehouse(load_settings())
times, errors = [], []
while not stop.exists():
    try:
        warehouse.query("select count(*) as n from raw.lock_probe")
        times.append(time.time())
        ready.touch()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    time.sleep(0.25)  # a dashboard polling; each query holds the file about 0.1 s
out.write_text(json.dumps({"times": times, "errors": errors[:3], "failures": len(errors)}))
"""

HOLDER = """
import sys, time
from pathlib import Path
import duckdb

path, ready, stop = sys.argv[1:4]
with duckdb.connect(path, read_only=True) as con:
    con.execute("select count(*) from raw.lock_probe").fetchall()
    Path(ready).touch()
    while not Path(stop).exists():
        time.sleep(0.05)
"""


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, f"the helper process exited: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"{path.name} did not appear in {seconds:.0f} s"
        time.sleep(0.05)


def _start(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True
    )


def _probe(warehouse, n: int) -> None:
    frame = pd.DataFrame({"day": [DAY] * n, "n": range(n)})
    warehouse.replace_days(
        "lock_probe", "day", [DAY], frame, columns={"day": "date", "n": "bigint"}
    )


@pytest.mark.slow
def test_a_reader_in_another_process_does_not_break_writes_or_dbt(settings: Settings, tmp_path):
    generate(settings.landing, GeneratorConfig(days=1, sessions_per_day=40, seed=5, start=DAY))
    warehouse = build_warehouse(settings)
    _probe(warehouse, 1)
    ready, stop, out = (tmp_path / name for name in ("ready", "stop", "reader.json"))
    reader = _start(READER, str(ready), str(stop), str(out))
    try:
        _wait_for(ready, reader)
        began = started = time.time()
        for n in range(2, 32):
            _probe(warehouse, n)
        writes_s = time.time() - started
        started = time.time()
        assert run_days(settings, DAY, DAY), "ingestion and dbt failed beside a reader"
        run_s = time.time() - started
        ended = time.time()
    finally:
        stop.touch()
        reader.wait(timeout=120)
    seen = json.loads(out.read_text())
    assert seen["failures"] == 0, seen
    # the reader took turns with the writers (not one read before and one after): about three
    # reads a second when it gets the file, over the 2.5-6 s of writes and the run
    beside = [t for t in seen["times"] if began <= t <= ended]
    assert len(beside) >= 3, (len(beside), f"{ended - began:.1f} s", seen["errors"])
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        assert con.execute("select count(*) from raw.lock_probe").fetchone() == (31,)
        assert con.execute("select count(*) from main.sessions").fetchone()[0] > 0
    print(f"30 writes in {writes_s:.1f} s, a daily run in {run_s:.1f} s beside {len(beside)} reads")


@pytest.mark.slow
def test_a_reader_holding_the_read_copy_does_not_break_a_run(settings: Settings, tmp_path):
    """A notebook holding `warehouse.read.duckdb` open through a daily run: the run writes and
    succeeds, the sensor publishes a new copy beside the held one, the holder still reads its
    snapshot and a new reader sees the run's tables."""
    generate(settings.landing, GeneratorConfig(days=1, sessions_per_day=40, seed=5, start=DAY))
    warehouse = build_warehouse(settings)
    _probe(warehouse, 3)
    sensor = next(s for s in build_definitions(settings).sensors if s.name == "warehouse_read_copy")
    copy = warehouse.publish_read_copy()
    assert copy == settings.warehouse_path.with_name("warehouse.read.duckdb")
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    holder = _start(HOLDER, str(copy), str(ready), str(stop))
    try:
        _wait_for(ready, holder)
        assert run_days(settings, DAY, DAY), "a run failed beside a reader of the read copy"
        with DagsterInstance.get() as instance:
            run = instance.get_runs(limit=1)[0]
            assert run.status == DagsterRunStatus.SUCCESS
            event = (
                instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_SUCCESS)
                .records[0]
                .event_log_entry.dagster_event
            )
            sensor(
                build_run_status_sensor_context(
                    sensor_name=sensor.name,
                    dagster_instance=instance,
                    dagster_run=run,
                    dagster_event=event,
                )
            )
        assert holder.poll() is None, "the holder lost its copy"
    finally:
        stop.touch()
        holder.wait(timeout=30)
    assert holder.returncode == 0, holder.stderr.read()
    check = "select count(*) from information_schema.tables where table_name = 'sessions'"
    reader = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import duckdb; print(duckdb.connect({str(copy)!r},"
            f" read_only=True).execute({check!r}).fetchone()[0])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert reader.stdout.strip() == "1", "the published copy lacks the run's tables"
    assert not list(copy.parent.glob(".warehouse.read.duckdb.tmp-*"))


@pytest.mark.slow
def test_a_reader_holding_the_file_shares_it_and_a_writer_waits_then_says_why(
    settings: Settings, tmp_path, monkeypatch
):
    monkeypatch.setenv("SKIFF_DUCKDB_LOCK_TIMEOUT_S", "1.5")
    warehouse = build_warehouse(settings)
    _probe(warehouse, 3)
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    holder = _start(HOLDER, str(settings.warehouse_path), str(ready), str(stop))
    try:
        _wait_for(ready, holder)
        # a notebook's read-only connection: reads share the file with it
        assert int(warehouse.query("select count(*) as n from raw.lock_probe")["n"].iloc[0]) == 3
        started = time.monotonic()
        with pytest.raises(WarehouseLockTimeout, match="SKIFF_DUCKDB_LOCK_TIMEOUT_S"):
            _probe(warehouse, 4)
        waited = time.monotonic() - started
        assert 1.5 <= waited < 10, waited
    finally:
        stop.touch()
        holder.wait(timeout=30)
    _probe(warehouse, 5)  # once it let go

    # this process holding the file read-write (a test, another connection of the in-process
    # executor): DuckDB refuses a read-only connection beside it; `query` shares it instead
    with duckdb.connect(str(settings.warehouse_path)) as con:
        assert int(warehouse.query("select count(*) as n from raw.lock_probe")["n"].iloc[0]) == 5
        assert con.execute("select count(*) from raw.lock_probe").fetchone() == (5,)

    monkeypatch.setenv("SKIFF_DUCKDB_LOCK_TIMEOUT_S", "soon")
    with pytest.raises(ConfigError, match="SKIFF_DUCKDB_LOCK_TIMEOUT_S='soon'"):
        build_warehouse(settings)
