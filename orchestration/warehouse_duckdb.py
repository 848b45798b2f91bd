"""The embedded DuckDB warehouse: `DuckDBWarehouse`, with its lock retry and read-only reads.

`lock_timeout_s` reads SKIFF_DUCKDB_LOCK_TIMEOUT_S, how long a connection waits for another
process's lock on the file; `WarehouseLockTimeout` is raised when the wait runs out.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from orchestration.warehouse import Warehouse
from skiff.settings import ConfigError

# How long a DuckDB connection waits for another process's lock on the file before failing.
LOCK_TIMEOUT_VARIABLE = "SKIFF_DUCKDB_LOCK_TIMEOUT_S"
DEFAULT_LOCK_TIMEOUT_S = 60.0


class WarehouseLockTimeout(RuntimeError):
    """Another process held the DuckDB file longer than the lock timeout."""


class DuckDBWarehouse(Warehouse):
    """The embedded default: one DuckDB file under SKIFF_HOME.

    A connection lives only as long as one call, because DuckDB locks the file per process: one
    process writing, or any number of processes reading (read-only), never both. `query` opens
    the file read-only, so readers in other processes (a notebook, a BI tool using this class,
    another step) share the file with each other; writes open it read-write.

    A connection that meets another process's lock waits and retries with backoff (50 ms
    doubling to 1 s, jittered) for up to `lock_timeout_s` (SKIFF_DUCKDB_LOCK_TIMEOUT_S, default
    60 s): short readers and writers take turns instead of failing. A connection held open
    longer than that (a notebook that never closes its connection) still fails the run, with
    an error that says so.

    Within one process DuckDB refuses a read-only and a read-write connection to the same file
    at once ("different configuration"). When this process already holds the file read-write
    (a test or another connection of the in-process executor), `query` shares that read-write
    database instead; a write that finds this process holding the file read-only retries as
    for a lock.
    """

    path: str
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S

    @property
    def kind(self) -> str:
        return "duckdb"

    def _connect(self, *, read_only: bool = False):
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                return self._open(read_only)
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                if not _lock_conflict(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    mode = "read" if read_only else "write"
                    raise WarehouseLockTimeout(
                        f"could not open the DuckDB warehouse {self.path} to {mode}: another"
                        f" connection held it for more than {self.lock_timeout_s:g} s"
                        f" ({LOCK_TIMEOUT_VARIABLE}). DuckDB allows one writing process or"
                        " many reading ones; close long-lived connections (read a copy of"
                        f" the file instead) or use Snowflake. Last error: {exc}"
                    ) from exc
                time.sleep(min(left, delay * random.uniform(0.5, 1.5)))
                delay = min(delay * 2, 1.0)

    def _open(self, read_only: bool):
        if not read_only or not Path(self.path).exists():
            # a missing file is created (read-write), as before: `exists` on a fresh home
            return duckdb.connect(self.path)
        try:
            return duckdb.connect(self.path, read_only=True)
        except duckdb.ConnectionException as exc:
            if not _same_process_conflict(exc):
                raise
            return duckdb.connect(self.path)  # this process holds it read-write: share that

    def _replace(
        self,
        setup: list[str],
        delete: str,
        schema: str,
        table: str,
        frame: pd.DataFrame | pa.Table,
        columns: dict[str, str],
    ) -> None:
        with self._connect() as con:
            if len(frame):  # an empty frame's columns may have no type to insert
                con.register("incoming", frame)
            _swap(
                con, setup, delete, f"{schema}.{table}", "incoming" if len(frame) else None, columns
            )

    @contextlib.contextmanager
    def staging(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the warehouse file itself (held, so other processes wait for it,
        until the block ends): rows checked on it load without leaving DuckDB."""
        with self._connect() as con:
            yield con

    def _replace_from(
        self,
        con: duckdb.DuckDBPyConnection,
        setup: list[str],
        delete: str,
        schema: str,
        table: str,
        relation: str,
        columns: dict[str, str],
    ) -> None:
        _swap(con, setup, delete, f"{schema}.{table}", relation, columns)

    def query(self, sql: str) -> pd.DataFrame:
        with self._connect(read_only=True) as con:
            return con.execute(sql).fetchdf()

    def publish_read_copy(self) -> Path | None:
        """Copy the warehouse, as one snapshot, to `read_copy_path` (`warehouse.read.duckdb`)
        for readers that keep a connection open (a notebook, a BI tool): a reader of the copy
        never blocks a run. Built under a temporary name, then renamed into place, so a reader
        holding the previous copy keeps reading it (its open file) until it reconnects. Reads
        the warehouse read-only, waiting for a writer as `query` does. None when there is no
        warehouse yet."""
        source = Path(self.path)
        if not source.exists():
            return None
        target = read_copy_path(source)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
        deadline = time.monotonic() + self.lock_timeout_s
        try:
            while True:
                try:
                    with duckdb.connect() as con:
                        con.execute(f"attach '{source}' as source (read_only)")
                        con.execute(f"attach '{tmp}' as read_copy")
                        con.execute("copy from database source to read_copy")
                        con.execute("detach read_copy")
                    break
                except (duckdb.IOException, duckdb.ConnectionException) as exc:
                    if not _lock_conflict(exc) or time.monotonic() > deadline:
                        raise
                    tmp.unlink(missing_ok=True)
                    time.sleep(random.uniform(0.1, 0.5))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target


def _swap(
    con: duckdb.DuckDBPyConnection,
    setup: list[str],
    delete: str,
    table: str,
    relation: str | None,
    columns: dict[str, str],
) -> None:
    """Run `setup`, then in one transaction `delete` and insert the rows of `relation`."""
    names = ", ".join(columns)
    for sql in setup:
        con.execute(sql)
    con.execute("begin transaction")
    try:
        con.execute(delete)
        if relation is not None:
            con.execute(f"insert into {table} ({names}) select {names} from {relation}")
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise


def read_copy_path(warehouse: str | Path) -> Path:
    """Where `publish_read_copy` puts the copy: `<name>.read.duckdb` beside the warehouse."""
    warehouse = Path(warehouse)
    return warehouse.with_name(f"{warehouse.stem}.read.duckdb")


def _same_process_conflict(exc: Exception) -> bool:
    return "different configuration" in str(exc)


def _lock_conflict(exc: Exception) -> bool:
    """DuckDB's error for a file another process holds ("Could not set lock on file"), or for
    one this process holds with the other read-only/read-write setting."""
    return "Could not set lock" in str(exc) or _same_process_conflict(exc)


def lock_timeout_s() -> float:
    """SKIFF_DUCKDB_LOCK_TIMEOUT_S: seconds a DuckDB connection waits for another process's lock."""
    text = os.environ.get(LOCK_TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ConfigError(f"{LOCK_TIMEOUT_VARIABLE}={text!r} is not a number of seconds (>= 0)")
    return seconds
