"""Production orchestration: Dagster's instance on a real PostgreSQL server on 127.0.0.1
(deploy/dagster.yaml), the webserver and the daemon as separate processes, a materialization
launched through GraphQL, and its run found in PostgreSQL."""

from __future__ import annotations

import datetime as dt
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import pytest
from dagster_graphql import DagsterGraphQLClient

from ml.synthetic import GeneratorConfig, generate
from skiff.settings import REPO_ROOT, ensure_home, load_settings
from tests.servers import free_port, running, wait_for_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

START = dt.date(2026, 1, 5)


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None
    )
    if not found:
        pytest.skip(f"PostgreSQL's {name} is not installed (.ci/run installs it)")
    return found


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@pytest.fixture
def postgres():
    # not under tmp_path: pytest makes its folders private to root, out of postgres' reach
    root = Path(tempfile.mkdtemp(prefix="skiff-pg-"))
    root.chmod(0o755)
    data, sockets = root / "data", root / "sockets"
    for folder in (data, sockets):
        folder.mkdir()
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
    subprocess.run(
        _as_postgres([_pg_bin("initdb"), "-D", str(data), "-U", "skiff", "-A", "trust"]),
        check=True,
        capture_output=True,
    )
    port = free_port()
    pg_ctl = _pg_bin("pg_ctl")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1"
    subprocess.run(
        _as_postgres(
            [pg_ctl, "-D", str(data), "-o", options, "-w", "-l", str(data / "log"), "start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        con = psycopg2.connect(host="127.0.0.1", port=port, user="skiff", dbname="postgres")
        con.autocommit = True  # create database cannot run in a transaction
        con.cursor().execute("create database dagster")
        con.close()
        yield port
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


def test_instance_on_postgres_runs_a_materialization(postgres, tmp_path, monkeypatch):
    instance_home = tmp_path / "dagster_home"
    instance_home.mkdir()
    shutil.copy(REPO_ROOT / "deploy" / "dagster.yaml", instance_home / "dagster.yaml")
    for name, value in {
        "SKIFF_DAGSTER_HOME": str(instance_home),
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres),
        "DAGSTER_PG_DB": "dagster",
        "DAGSTER_PG_USER": "skiff",
        "DAGSTER_PG_PASSWORD": "",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SKIFF_HOME", str(tmp_path / "skiff"))
    settings = ensure_home(load_settings())
    assert os.environ["DAGSTER_HOME"] == str(instance_home)
    generate(settings.landing, GeneratorConfig(days=1, sessions_per_day=60, seed=5, start=START))

    bin_dir = Path(sys.executable).parent
    port = free_port()
    webserver = [
        str(bin_dir / "dagster-webserver"),
        "-w",
        "workspace.yaml",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    daemon = [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"]
    with (
        running(webserver, tmp_path / "webserver.log", f"http://127.0.0.1:{port}/server_info"),
        running(daemon, tmp_path / "daemon.log"),
    ):
        client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=30)
        run_id = client.submit_job_execution(
            "daily_refresh", tags={"dagster/partition": START.isoformat()}
        )
        status = wait_for_run(client, run_id)
        assert status == "SUCCESS", (tmp_path / "daemon.log").read_text()[-3000:]

    with psycopg2.connect(host="127.0.0.1", port=postgres, user="skiff", dbname="dagster") as con:
        cur = con.cursor()
        cur.execute("select status from runs where run_id = %s", (run_id,))
        assert cur.fetchone() == ("SUCCESS",)
        cur.execute(
            "select count(*) from event_logs where run_id = %s"
            " and dagster_event_type = 'ASSET_MATERIALIZATION'",
            (run_id,),
        )
        assert cur.fetchone()[0] >= 10  # every asset of the graph, for the day
    assert not (instance_home / "history").exists()  # nothing went to SQLite
