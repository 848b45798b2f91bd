"""Benchmark the whole pipeline: generate -> ingest -> dbt, against a DuckDB scan floor.

For every size (DAYSxSESSIONS_PER_DAY) a fresh temporary SKIFF_HOME is made and, each in its own
process (so peak memory is the phase's own):

  generate   `ml.synthetic.generate` writes the landing days;
  run        the `daily_refresh` job over the whole day range in ONE Dagster run, as
             `skiff run` / `orchestration.runs.run_days` does it (persistent instance under
             SKIFF_HOME);
             ingest and dbt times are the steps' STEP_START -> STEP_SUCCESS times from the
             run's event log; peak RSS of the Dagster process (dbt runs in it);
  floor      one DuckDB scan-and-group of the same landing CSVs in a fresh in-memory database:
             about the least any pipeline could spend reading these events once; and one
             copy of them into a fresh DuckDB file (`create table as`, closed): the least
             each table holding every event costs (raw, staging and sessionized each do).

Then the nightly cost: one more day (ingest + dbt of a single new partition) on top of 7 and
of 28 days of history, with the same sessions per day; a history missing from --sizes is built
for it (and shown in the table). Two nights are run and the second is reported, the first
beside it: the first night after a range run pays a one-off cost (see measure_size). Last,
the time to load the Dagster definitions in a fresh process (manifest already parsed). Example:

    .venv/bin/python bench/pipeline.py --sizes 7x20000 14x52000 28x52000 --nightly-sessions 52000

With --json, progress goes to stderr and stdout holds one JSON object: per size `events`,
`ingest_s`, `dbt_s`, `floor_s`, `ratio_to_floor` ((ingest + dbt) / floor, the floor measured
in the same run), `copy_floor_s` and `ratio_to_copy_floor` (the same against one copy into a
DuckDB file), per nightly history `history_days`, `events`, `ingest_s`, `dbt_s`,
`ingest_dbt_s` (the second night), `first_night` (its `ingest_s`, `dbt_s`, `ingest_dbt_s`),
and the load average at start and end (other work on the machine slows every figure; the ratio
to the same-run floor much less).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START = dt.date(2026, 1, 5)  # first landing day (partitions start 2026-01-01)
SEED = 7
RESULT_PREFIX = "@@skiff-bench "
INGEST_STEPS = ("ingest_raw_browsing_events", "ingest_raw_products")
DBT_STEP = "skiff_dbt_models"
DEFS_SNIPPET = (
    "import time; t = time.perf_counter(); "
    "from orchestration.definitions import defs; defs(); "
    "print(time.perf_counter() - t)"
)


# --------------------------------------------------------------------------------------------
# Phases: each runs in a fresh `python bench/pipeline.py --phase NAME` process, SKIFF_HOME set.
# --------------------------------------------------------------------------------------------


def _peaks() -> dict[str, float]:
    """Peak RSS of this process, in MiB (Linux: KiB); dbt runs in it (the step's process)."""
    return {"peak_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _settings():
    from skiff.settings import ensure_home, load_settings

    return ensure_home(load_settings())


def phase_generate(days: int, sessions: int) -> dict:
    from ml.synthetic import GeneratorConfig, generate

    settings = _settings()
    config = GeneratorConfig(days=days, sessions_per_day=sessions, seed=SEED, start=START)
    result = generate(settings.landing, config)
    size = sum(p.stat().st_size for p in settings.landing.rglob("browsing_events.csv"))
    return {
        "events": result.events,
        "sessions": result.sessions,
        "seconds": result.seconds,
        "csv_bytes": size,
        "first": result.days[0].isoformat(),
        "last": result.days[-1].isoformat(),
        **_peaks(),
    }


def phase_add_day(days: int, sessions: int) -> dict:
    """Land day `days + 1` exactly as a `days + 1`-day generation would have written it."""
    from ml.synthetic import GeneratorConfig, generate

    settings = _settings()
    scratch = Path(tempfile.mkdtemp(prefix="next-day-", dir=settings.home))
    try:
        config = GeneratorConfig(
            days=days + 1, sessions_per_day=sessions, seed=SEED, start=START, write_truth=False
        )
        result = generate(scratch, config)
        day = result.days[-1]
        target = settings.landing / day.isoformat()
        if target.exists():
            shutil.rmtree(target)
        shutil.move(scratch / day.isoformat(), target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    with (target / "browsing_events.csv").open("rb") as handle:
        events = sum(1 for _ in handle) - 1  # unquoted CSV: one line per row, plus the header
    return {"day": day.isoformat(), "events": events}


def _metadata_seconds(metadata) -> float:
    value = metadata.get("Execution Duration") if metadata else None
    return float(getattr(value, "value", value) or 0.0)


def phase_run(first: str, last: str) -> dict:
    """`orchestration.runs.run_days`, replicated so the run's id, events and times are at hand."""
    settings = _settings()
    began = time.perf_counter()
    from dagster import DagsterEventType, DagsterInstance

    from orchestration.definitions import DAILY_REFRESH, build_definitions
    from orchestration.partitions import partition_range_tags

    job = build_definitions(settings).resolve_job_def(DAILY_REFRESH)
    defs_seconds = time.perf_counter() - began
    with DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
            tags=partition_range_tags(dt.date.fromisoformat(first), dt.date.fromisoformat(last)),
            raise_on_error=False,
        )
        records = instance.all_logs(result.run_id)
    wall = time.perf_counter() - began

    starts: dict[str, float] = {}
    steps: dict[str, float] = {}
    marks: dict[str, float] = {}
    for record in records:
        event = record.dagster_event
        if event is None:  # a log line
            continue
        kind = event.event_type
        if kind == DagsterEventType.STEP_START:
            starts[event.step_key] = record.timestamp
        elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            steps[event.step_key] = record.timestamp - starts.get(event.step_key, record.timestamp)
        elif kind == DagsterEventType.RUN_START:
            marks["run_start"] = record.timestamp
        elif kind in (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE):
            marks["run_end"] = record.timestamp

    failures = [
        f"{e.step_key}: {e.step_failure_data.error.message.strip()[:400]}"
        for e in result.all_events
        if e.is_step_failure and e.step_failure_data and e.step_failure_data.error
    ]
    models: dict[str, float] = {}
    checks: dict[str, float] = {}
    tests = 0.0
    rows_read = None
    for event in result.all_events:
        if event.step_key != DBT_STEP:
            if event.is_step_materialization and event.asset_key.path[-1] == "raw_browsing_events":
                value = event.step_materialization_data.materialization.metadata.get("rows_read")
                rows_read = int(value.value) if value is not None else None
            continue
        if event.is_step_materialization:
            metadata = event.step_materialization_data.materialization.metadata
            # the step's own records of the day it completed carry no duration: keep dbt's
            name = event.asset_key.to_user_string()
            models[name] = max(models.get(name, 0.0), _metadata_seconds(metadata))
        elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            check = event.asset_check_evaluation_data
            checks[check.check_name] = _metadata_seconds(check.metadata)
            tests += checks[check.check_name]
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "success": result.success,
        "failures": failures,
        "steps": steps,
        "run_seconds": marks.get("run_end", 0.0) - marks.get("run_start", 0.0),
        "wall": wall,
        "defs_seconds": defs_seconds,
        "rows_read": rows_read,
        "models": models,
        "checks": checks,
        "tests_seconds": tests,
        # CPU seconds (user + sys) of this process (definitions, ingestion, dbt, Dagster): on
        # a shared machine wall time alone says little
        "cpu_self_s": own.ru_utime + own.ru_stime,
        **_peaks(),
    }


def phase_floor() -> dict:
    import duckdb

    settings = _settings()
    pattern = str(settings.landing / "*" / "browsing_events.csv").replace("'", "''")
    con = duckdb.connect()  # in memory, fresh
    began = time.perf_counter()
    cpu = time.process_time()
    con.execute(
        "create temp table floor as select session_id_hash, count(*) as n,"
        " min(server_timestamp_epoch_ms) as lo, max(server_timestamp_epoch_ms) as hi"
        f" from read_csv('{pattern}', all_varchar = true, header = true) group by 1"
    )
    groups, rows = con.execute("select count(*), sum(n) from floor").fetchone()
    seconds = time.perf_counter() - began
    cpu = time.process_time() - cpu
    con.close()
    # One copy of the events into a DuckDB file, closed (its checkpoint written): what each
    # table that holds every event (raw, staging, sessionized) costs at the least.
    copy = settings.home / "floor-copy.duckdb"
    began = time.perf_counter()
    with duckdb.connect(str(copy)) as con:
        con.execute(f"create table events as select * from read_csv('{pattern}', header = true)")
    copy_seconds = time.perf_counter() - began
    copy.unlink()
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "copy_seconds": copy_seconds,
        "groups": int(groups),
        "rows": int(rows),
        **_peaks(),
    }


PHASES = {
    "generate": phase_generate,
    "add_day": phase_add_day,
    "run": phase_run,
    "floor": phase_floor,
}


def _phase_main(name: str, arguments: str) -> None:
    sys.path.insert(0, str(REPO))
    result = PHASES[name](*json.loads(arguments))
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# The driver: stdlib only, so its own memory stays out of the way.
# --------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, root: Path, keep: bool, quiet: bool = False) -> None:
        self.root = root
        self.keep = keep
        self.out = sys.stderr if quiet else sys.stdout
        self.began = time.perf_counter()

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.began:6.0f} s] {text}", file=self.out, flush=True)

    def env(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("SKIFF_DBT_TARGET", "SKIFF_RAW_SCHEMA", "DAGSTER_HOME"):
            env.pop(name, None)
        env.update(SKIFF_HOME=str(home), SKIFF_ENV="local", PYTHONUNBUFFERED="1")
        return env

    def phase(self, home: Path, name: str, *arguments) -> dict:
        logs = home.parent / f"{home.name}-logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}-{len(list(logs.iterdir()))}.log"
        argv = [sys.executable, str(Path(__file__).resolve()), "--phase", name]
        argv += ["--phase-args", json.dumps(arguments)]
        with log.open("w") as err:
            proc = subprocess.run(
                argv, cwd=REPO, env=self.env(home), stdout=subprocess.PIPE, stderr=err, text=True
            )
        lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
        if proc.returncode != 0 or not lines:
            tail = "\n".join(log.read_text().splitlines()[-30:])
            raise RuntimeError(f"phase {name} failed (exit {proc.returncode}); log {log}:\n{tail}")
        return json.loads(lines[-1][len(RESULT_PREFIX) :])

    def run(self, home: Path, label: str, first: str, last: str) -> dict:
        run = self.phase(home, "run", first, last)
        if not run["success"]:
            raise RuntimeError(f"{label}: run failed: " + "; ".join(run["failures"]))
        steps = run["steps"]
        run["ingest"] = sum(steps.get(k, 0.0) for k in INGEST_STEPS)
        run["dbt"] = steps.get(DBT_STEP, 0.0)
        return run


def _size(text: str) -> tuple[int, int]:
    days, _, sessions = text.lower().partition("x")
    return int(days), int(sessions)


def _rate(events: int, seconds: float) -> str:
    return f"{events / seconds:,.0f}" if seconds > 0 else "-"


def _dbt_breakdown(run: dict) -> str:
    models = run["models"]
    top = sorted(models.items(), key=lambda item: -item[1])[:4]
    nodes = sum(models.values()) + run["tests_seconds"]
    return (
        f"dbt step {run['dbt']:.1f} s = models {sum(models.values()):.1f} s + tests "
        f"{run['tests_seconds']:.1f} s + fixed cost {run['dbt'] - nodes:.1f} s (dbt in the "
        "step's process: its warm-up, parse check, adapter; Dagster's events); slowest: "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in top)
    )


def _fixed(run: dict) -> float:
    """The dbt step's time beside its models' and tests' own (dbt's fixed cost)."""
    return run["dbt"] - sum(run["models"].values()) - run["tests_seconds"]


def measure_size(bench: Bench, days: int, sessions: int, nightly: bool) -> dict:
    label = f"{days}x{sessions}"
    home = bench.root / label
    bench.say(f"{label}: generating {days} days x {sessions:,} sessions into {home}")
    gen = bench.phase(home, "generate", days, sessions)
    bench.say(
        f"{label}: generated {gen['events']:,} events ({gen['csv_bytes'] / 2**20:,.0f} MiB CSV)"
        f" in {gen['seconds']:.1f} s; running {gen['first']} .. {gen['last']} in one Dagster run"
    )
    run = bench.run(home, label, gen["first"], gen["last"])
    bench.say(
        f"{label}: ingest {run['ingest']:.1f} s ("
        + ", ".join(f"{k} {run['steps'].get(k, 0):.1f} s" for k in INGEST_STEPS)
        + f"), dbt {run['dbt']:.1f} s, run {run['run_seconds']:.1f} s, process {run['wall']:.1f} s"
        f" (definitions {run['defs_seconds']:.1f} s); peak RSS {run['peak_self_mib']:,.0f} MiB"
        " (dbt included: it runs in the step's process)"
    )
    bench.say(f"{label}: {_dbt_breakdown(run)}")
    if run["rows_read"] != gen["events"]:
        bench.say(
            f"{label}: WARNING ingestion read {run['rows_read']} rows, generator wrote "
            f"{gen['events']}"
        )
    floor = bench.phase(home, "floor")
    bench.say(
        f"{label}: floor (DuckDB scan+group of the landing CSVs) {floor['seconds']:.1f} s,"
        f" {floor['rows']:,} rows, {floor['groups']:,} sessions; one copy of them into a"
        f" DuckDB file {floor['copy_seconds']:.1f} s"
    )
    row = {"label": label, "days": days, "sessions": sessions, "gen": gen, "run": run}
    row["floor"] = floor
    if nightly:
        # Two nights: the first after the range run pays DuckDB's one-off re-compression of the
        # range's last day (its late sessions' rows, which that night deletes, are spread through
        # it: a table's first build is a plain `create table`); from the second on, every night
        # finds them in a block at the table's end (the late_sessions_last strategy).
        nights = []
        for extra in (0, 1):
            added = bench.phase(home, "add_day", days + extra, sessions)
            bench.say(f"{label}: landed {added['day']} ({added['events']:,} events); nightly run")
            night = bench.run(home, f"{label} nightly", added["day"], added["day"])
            night["events"] = added["events"]
            bench.say(
                f"{label}: night {extra + 1} on {days + extra} days of history: ingest "
                f"{night['ingest']:.1f} s, dbt {night['dbt']:.1f} s, process {night['wall']:.1f} s"
            )
            bench.say(f"{label} night {extra + 1}: {_dbt_breakdown(night)}")
            nights.append(night)
        row["first_night"], row["nightly"] = nights
    if not bench.keep:
        shutil.rmtree(home, ignore_errors=True)
    return row


def measure_definitions(bench: Bench) -> dict:
    """`defs()` in a fresh process, median of 3 after a warm-up that prepares the manifest."""
    home = bench.root / "definitions"
    env = bench.env(home)
    inside, whole = [], []
    for attempt in range(4):
        began = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", DEFS_SNIPPET],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        if attempt:  # the first one is the warm-up
            whole.append(time.perf_counter() - began)
            inside.append(float(proc.stdout.strip().splitlines()[-1]))
    return {"import_and_build": statistics.median(inside), "process": statistics.median(whole)}


def _machine() -> list[str]:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f"{pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        memory = "RAM unknown"
    versions = []
    for module in ("dagster", "dagster_dbt", "dbt.version", "duckdb", "pandas", "pyarrow"):
        try:
            versions.append(
                subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        f"import {module} as m; print(getattr(m, '__version__', None) "
                        "or m.get_installed_version())",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
            )
        except subprocess.CalledProcessError:
            versions.append("?")
    names = ("dagster", "dagster-dbt", "dbt-core", "duckdb", "pandas", "pyarrow")
    return [
        f"- {os.cpu_count()} cores, {memory}, {platform.platform()}",
        f"- Python {platform.python_version()}; "
        + ", ".join(f"{n} {v}" for n, v in zip(names, versions, strict=True)),
    ]


def _cpu(run: dict) -> dict:
    """CPU seconds of the run's process (definitions, ingestion, dbt, Dagster)."""
    return {"run_cpu_s": round(run["cpu_self_s"], 2)}


def _nodes(run: dict) -> dict[str, float]:
    """dbt's own execution time of each model and test, slowest first."""
    nodes = {**run["models"], **run["checks"]}
    return {name: round(s, 2) for name, s in sorted(nodes.items(), key=lambda item: -item[1])}


def _summary(
    rows: list[dict], definitions: dict, load_before: float, load_after: float, total: float
) -> dict:
    sizes = []
    for row in rows:
        run, floor = row["run"], row["floor"]
        sizes.append(
            {
                "size": row["label"],
                "events": row["gen"]["events"],
                "ingest_s": round(run["ingest"], 2),
                "dbt_s": round(run["dbt"], 2),
                "floor_s": round(floor["seconds"], 3),
                "ratio_to_floor": round((run["ingest"] + run["dbt"]) / floor["seconds"], 2),
                "copy_floor_s": round(floor["copy_seconds"], 3),
                "ratio_to_copy_floor": round(
                    (run["ingest"] + run["dbt"]) / floor["copy_seconds"], 2
                ),
                "peak_rss_dagster_mib": round(run["peak_self_mib"]),
                "dbt_fixed_s": round(_fixed(run), 2),
                **_cpu(run),
                "floor_cpu_s": round(floor["cpu_s"], 3),
                "dbt_nodes": _nodes(run),
            }
        )
    nightly = [
        {
            "history_days": row["days"],
            "sessions_per_day": row["sessions"],
            "events": row["nightly"]["events"],
            "ingest_s": round(row["nightly"]["ingest"], 2),
            "dbt_s": round(row["nightly"]["dbt"], 2),
            "ingest_dbt_s": round(row["nightly"]["ingest"] + row["nightly"]["dbt"], 2),
            "dbt_fixed_s": round(_fixed(row["nightly"]), 2),
            **_cpu(row["nightly"]),
            "dbt_nodes": _nodes(row["nightly"]),
            "first_night": {
                "ingest_s": round(row["first_night"]["ingest"], 2),
                "dbt_s": round(row["first_night"]["dbt"], 2),
                "ingest_dbt_s": round(row["first_night"]["ingest"] + row["first_night"]["dbt"], 2),
            },
        }
        for row in sorted((r for r in rows if "nightly" in r), key=lambda r: r["days"])
    ]
    return {
        "sizes": sizes,
        "nightly": nightly,
        "definitions_s": round(definitions["import_and_build"], 2),
        "load_average": {"start": round(load_before, 2), "end": round(load_after, 2)},
        "cores": os.cpu_count(),
        "minutes": round(total / 60, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=_size,
        default=[(7, 20000), (14, 52000), (28, 52000)],
        help="DAYSxSESSIONS_PER_DAY (default 7x20000 14x52000 28x52000: 10.1M events at the "
        "largest; ~6.9 events a session)",
    )
    parser.add_argument(
        "--nightly-sessions",
        type=int,
        default=52000,
        help="sessions of the one new nightly day, and per day of its history (default 52000)",
    )
    parser.add_argument(
        "--nightly-history",
        nargs="*",
        type=int,
        default=[7, 28],
        help="days of history under the nightly day (default 7 28; none: skip)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary SKIFF_HOMEs")
    parser.add_argument(
        "--json", action="store_true", help="one JSON object on stdout (progress on stderr)"
    )
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--phase-args", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        _phase_main(args.phase, args.phase_args)
        return

    root = Path(tempfile.mkdtemp(prefix="skiff-bench-pipeline-"))
    bench = Bench(root, args.keep, quiet=args.json)
    load_before = os.getloadavg()
    plan = [(d, s, d in args.nightly_history and s == args.nightly_sessions) for d, s in args.sizes]
    extra = sorted(set(args.nightly_history) - {d for d, s, nightly in plan if nightly})
    plan += [(d, args.nightly_sessions, True) for d in extra]
    bench.say(
        f"temporary SKIFF_HOMEs under {root}; load average {load_before[0]:.2f}"
        + (
            f"; added history size(s) {', '.join(f'{d}x{args.nightly_sessions}' for d in extra)}"
            " for the nightly cost"
            if extra
            else ""
        )
    )
    rows = []
    try:
        bench.say("definitions load time (fresh process, median of 3)...")
        definitions = measure_definitions(bench)
        bench.say(
            f"definitions: defs() import+build {definitions['import_and_build']:.2f} s, whole "
            f"process {definitions['process']:.2f} s"
        )
        for days, sessions, nightly in plan:
            rows.append(measure_size(bench, days, sessions, nightly))
    finally:
        if args.keep:
            bench.say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()
    total = time.perf_counter() - bench.began
    if args.json:
        print(json.dumps(_summary(rows, definitions, load_before[0], load_after[0], total)))
        return

    print("\n## Pipeline benchmark (`bench/pipeline.py`)\n")
    print(
        "| size | events | generate s | gen ev/s | ingest s | ingest ev/s | dbt s | dbt ev/s "
        "| dbt fixed s | peak RSS | floor s | (ingest+dbt) / floor | copy floor s "
        "| (ingest+dbt) / copy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        gen, run, floor = row["gen"], row["run"], row["floor"]
        events = gen["events"]
        mark = "" if (row["days"], row["sessions"]) in args.sizes else " (history)"
        print(
            f"| {row['label']}{mark} | {events:,} | {gen['seconds']:.1f} | "
            f"{_rate(events, gen['seconds'])} | {run['ingest']:.1f} | "
            f"{_rate(events, run['ingest'])} | {run['dbt']:.1f} | {_rate(events, run['dbt'])} | "
            f"{_fixed(run):.1f} | {run['peak_self_mib']:,.0f} MiB | "
            f"{floor['seconds']:.2f} | {(run['ingest'] + run['dbt']) / floor['seconds']:.0f}x | "
            f"{floor['copy_seconds']:.2f} | "
            f"{(run['ingest'] + run['dbt']) / floor['copy_seconds']:.1f}x |"
        )
    nightly_rows = sorted((r for r in rows if "nightly" in r), key=lambda r: r["days"])
    if nightly_rows:
        print(
            "\nA nightly day (a single new partition) on N days of history: the second of two"
            " nights after the range run (the first beside it, see measure_size):\n"
        )
        print(
            "| history | new day's events | ingest s | dbt s | of which dbt fixed s | ingest+dbt s "
            "| first night ingest+dbt s | whole process s | peak RSS |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in nightly_rows:
            night, first = row["nightly"], row["first_night"]
            print(
                f"| {row['days']} days x {row['sessions']:,} | {night['events']:,} | "
                f"{night['ingest']:.1f} | {night['dbt']:.1f} | {_fixed(night):.1f} | "
                f"{night['ingest'] + night['dbt']:.1f} | {first['ingest'] + first['dbt']:.1f} | "
                f"{night['wall']:.1f} | {night['peak_self_mib']:,.0f} MiB |"
            )
    print(
        f"\nDefinitions load (`from orchestration.definitions import defs; defs()`, fresh "
        f"process, manifest parsed, median of 3): {definitions['import_and_build']:.2f} s "
        f"in-process, {definitions['process']:.2f} s for the whole `python -c`."
    )
    print(
        "\nIngest = both landing assets' steps, dbt = the `skiff_dbt_models` step (one "
        "`dbt build` of the range), STEP_START to STEP_SUCCESS in the run's event log; one "
        "Dagster run per size, as `skiff run`. Events = rows written (duplicates and malformed "
        "included). Floor = one DuckDB `read_csv` scan-and-group of the same CSVs, in memory. "
        "dbt runs in the step's process: peak RSS is the run's process, dbt included; dbt fixed "
        "= the dbt step's time beside its models' and tests' own execution times."
    )
    print("\nMachine:\n")
    for line in _machine():
        print(line)
    print(
        f"- load average {load_before[0]:.2f} at start, {load_after[0]:.2f} at end; "
        f"benchmark took {total / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
