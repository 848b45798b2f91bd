"""dbt in the step's own process: dbt-core's `dbtRunner`, its events turned into Dagster's.

dagster-dbt's `DbtCliResource.cli` always starts dbt as a process: a Python start-up and
dbt's imports (about 3 s here) on every run, before a day's models run in about 1.5 s. Here
dbt runs in a thread of the step's process instead. Each of dbt's result events (a model, a
seed, a snapshot, a test) arrives through a `dbtRunner` callback, becomes the dict dbt's JSON
log line would hold (`msg_to_dict`, what dbt's JSON logger prints), and goes through
dagster-dbt's own conversion (`DbtCoreCliEventMessage.to_default_asset_events`), so the step
yields the same materializations and check results, as they happen, as `cli(...).stream()`
would. The selection of the step's assets is computed by the two functions `cli` itself uses.

dbt keeps process-wide state (flags, its event manager, the adapter registry, the working
directory the relative paths of profiles.yml resolve against): one invocation at a time per
process (`_DBT_LOCK`), which both executors Skiff uses respect (steps run one after another in
process; multiprocess runs each step in its own). dbt-duckdb keeps the warehouse file open
after an invocation (`keep_open`); `_close_duckdb` lets go of it, so other processes and this
one's read-only reads can open it again. A failed build streams what succeeded, then raises
`DagsterDbtCliRuntimeError` with dbt's error lines and its log file; a step interrupted
(canceled from the UI) cancels dbt's open queries.
"""

import contextlib
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, DagsterExecutionInterruptedError
from dagster_dbt import DagsterDbtTranslator, DbtCliResource
from dagster_dbt.asset_utils import (
    extract_runtime_selection_from_args,
    get_updated_cli_invocation_params_for_context,
)
from dagster_dbt.core.dbt_cli_event import DbtCoreCliEventMessage
from dagster_dbt.errors import DagsterDbtCliRuntimeError

_DBT_LOCK = threading.Lock()
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # dbt colours its lines
_DONE = object()
# The events dagster-dbt turns into Dagster events (DbtCoreCliEventMessage.is_result_event);
# dbt fires hundreds of others per build, of which only the errors are kept, for the message.
RESULT_EVENTS = frozenset({"LogSeedResult", "LogModelResult", "LogSnapshotResult", "LogTestResult"})
# The DuckDB file's path as profiles.yml reads it, when set (see invoke_dbt's `warehouse`).
DUCKDB_PATH_VARIABLE = "SKIFF_DBT_DUCKDB_PATH"


def dbt_in_process(
    dbt: DbtCliResource,
    args: Sequence[str],
    *,
    context: AssetExecutionContext | None,
    target_path: Path,
    env: Mapping[str, str],
    translator: DagsterDbtTranslator,
    manifest: Mapping[str, Any] | None = None,
    warehouse: Path | None = None,
) -> Iterator:
    """Run `dbt <args>` in this process, for the step's selected assets when `context` is a
    dbt asset step's (else as `args` select), and yield the Dagster events of its results.
    `env` is in the environment for the invocation (dbt reads it as it starts). `manifest`
    (the parsed manifest.json) is needed without a `context` only, which holds it otherwise;
    `warehouse`: the duckdb target's file (see `invoke_dbt`)."""
    from dbt_common.events.functions import msg_to_dict

    cleaned, selects, excludes = extract_runtime_selection_from_args(list(args))
    params = get_updated_cli_invocation_params_for_context(
        context=context,
        manifest=manifest or {},
        dagster_dbt_translator=translator,
        runtime_selects=selects,
        runtime_excludes=excludes,
    )
    project_dir = Path(params.dbt_project.project_dir if params.dbt_project else dbt.project_dir)
    command = [
        *dbt.global_config_flags,
        # what dagster-dbt sets in the environment of the process it starts
        "--no-send-anonymous-usage-stats",
        "--log-format-file",
        "json",
        "--log-path",
        os.fspath(target_path),
        *(["--indirect-selection", params.indirect_selection] if params.indirect_selection else []),
        *cleaned,
        "--project-dir",
        os.fspath(project_dir),
        "--profiles-dir",
        os.fspath(dbt.profiles_dir or project_dir),
        "--target-path",
        os.fspath(target_path),
        *(["--profile", dbt.profile] if dbt.profile else []),
        *(["--target", dbt.target] if dbt.target else []),
        *params.selection_args,
    ]
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def keep(msg: Any) -> None:  # in dbt's threads: a cheap filter, the conversion comes later
        if msg.info.name in RESULT_EVENTS or msg.info.level == "error":
            events.put(msg)

    def run() -> None:
        try:
            outcome["result"] = invoke_dbt(
                command, project_dir=project_dir, env=env, keep=keep, warehouse=warehouse
            )
        except BaseException as exc:  # handed to the step's thread, raised there
            outcome["exception"] = exc
        finally:
            events.put(_DONE)

    worker = threading.Thread(target=run, name="dbt-in-process", daemon=True)
    worker.start()
    errors: list[str] = []
    try:
        while (msg := events.get()) is not _DONE:
            raw = msg_to_dict(msg)
            if raw["info"]["level"] == "error":
                errors.append(_ANSI.sub("", raw["info"]["msg"]))
            if raw["info"]["name"] not in RESULT_EVENTS:
                continue
            yield from DbtCoreCliEventMessage(
                raw_event=raw, event_history_metadata={}
            ).to_default_asset_events(
                manifest=params.manifest,
                dagster_dbt_translator=params.dagster_dbt_translator,
                context=context,
                target_path=target_path,
                project=params.dbt_project,
            )
    except DagsterExecutionInterruptedError:
        _cancel_queries()
        worker.join(timeout=25)
        raise
    worker.join()
    result = outcome.get("result")
    failure = outcome.get("exception") or (result.exception if result is not None else None)
    if isinstance(failure, (DagsterExecutionInterruptedError, KeyboardInterrupt)):
        raise failure
    if result is None or not result.success or errors:
        said = "".join(f"\n  {line}" for line in errors)
        raise DagsterDbtCliRuntimeError(
            description=f"dbt {' '.join(args)} failed"
            + (f" ({failure!r})" if failure else "")
            + f"; dbt's log: {target_path / 'dbt.log'}"
            + (f"\nErrors from dbt:{said}" if said else "")
        )


def invoke_dbt(
    command: Sequence[str],
    *,
    project_dir: Path,
    env: Mapping[str, str],
    keep: Callable[[Any], None] | None = None,
    warehouse: Path | None = None,
) -> Any:
    """dbt-core's `dbtRunner` on `command` (what follows `dbt` on a command line) in this
    process: one invocation at a time, with `env` in the environment and the project's folder
    as the working directory for the call, DuckDB's file let go after it. `keep` receives each
    of dbt's events (in dbt's threads). Returns dbt's `dbtRunnerResult`.

    With `warehouse` (the DuckDB file of the duckdb target) the working directory is the
    file's folder and the profile names the file by its name alone (DUCKDB_PATH_VARIABLE):
    dbt's partial-parse state records the connection's path and re-parses the whole project
    (about 1.5 s) when it differs, so with absolute paths every other SKIFF_HOME (each test's,
    each bench size, two homes used in turn) threw the saved state away."""
    from dbt.cli.main import dbtRunner

    if warehouse is not None:
        env = {**env, DUCKDB_PATH_VARIABLE: warehouse.name}
    folder = warehouse.parent if warehouse is not None else project_dir
    with _DBT_LOCK, _environment(env), contextlib.chdir(folder):
        try:
            return dbtRunner(callbacks=[keep] if keep else []).invoke(list(command))
        finally:
            _close_duckdb()


class _environment:
    """`env` in os.environ for the block, as it was after (dbt reads os.environ as it starts)."""

    def __init__(self, env: Mapping[str, str]):
        self.env = dict(env)

    def __enter__(self) -> None:
        self.saved = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)

    def __exit__(self, *exc: object) -> None:
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _close_duckdb() -> None:
    """Close dbt-duckdb's DuckDB database, which it keeps open between invocations."""
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager as manager
    except ImportError:  # the Snowflake image has no dbt-duckdb
        return
    with manager._LOCK:
        if manager._ENV is not None:
            manager._ENV.close()
            manager._ENV = None


def _cancel_queries() -> None:
    """Cancel dbt's open queries, as dbt does itself on an interrupt."""
    from dbt.adapters.factory import FACTORY

    for adapter in list(FACTORY.adapters.values()):
        with contextlib.suppress(Exception):  # best effort while the step stops
            adapter.cancel_open_connections()
