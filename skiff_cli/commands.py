"""What each `skiff` subcommand does: read the settings, call orchestration, serving or ml, print.

Heavy packages (Dagster, dbt, torch, FastAPI) are imported inside the command that needs them,
so `skiff --help` and `skiff generate` start at once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

from skiff.settings import REPO_ROOT, ConfigError, Settings, ensure_home, load_settings

UI_HINT = (
    "\nOpen the Dagster UI on this state:\n"
    "  .venv/bin/skiff ui        # = DAGSTER_HOME=$SKIFF_HOME/dagster dagster dev "
    "-w workspace.yaml -h 127.0.0.1 -p 3000\n"
    "  then browse http://127.0.0.1:3000 (Assets -> Lineage; Runs)"
)


def _start(args: argparse.Namespace, settings: Settings) -> dt.date:
    start = args.start or dt.datetime.now(dt.UTC).date() - dt.timedelta(days=args.days)
    if start < settings.partitions_start:
        raise ConfigError(
            f"--start {start} is before the first partition {settings.partitions_start} "
            "(set SKIFF_PARTITIONS_START to an earlier day)"
        )
    return start


def _generate(args: argparse.Namespace, settings: Settings, out: Path):
    from ml.synthetic import GeneratorConfig, generate

    config = GeneratorConfig(
        days=args.days,
        sessions_per_day=args.sessions_per_day,
        seed=args.seed,
        start=_start(args, settings),
        drift_from=args.drift_from,
        write_truth=not getattr(args, "no_truth", False),
    )
    result = generate(out, config, progress=lambda line: print(f"  {line}", flush=True))
    print(
        f"generated {result.events:,} events in {result.sessions:,} sessions over "
        f"{len(result.days)} days into {out} ({result.events_per_second:,.0f} events/s)"
    )
    return result


def cmd_generate(args: argparse.Namespace) -> int:
    settings = ensure_home(load_settings())
    _generate(args, settings, Path(args.out) if args.out else settings.landing)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from orchestration.runs import run_days_report

    settings = ensure_home(load_settings())
    last = args.end or args.start
    print(f"materializing {args.start} .. {last} (one run; see it in the UI under Runs)")
    report = run_days_report(settings, args.start, last)
    for line in report.lines():
        print(line)
    if not report.steps_ok:
        print("the run failed: a step failed (above); its logs are in the UI (`skiff ui`)")
    elif report.failed_errors:
        print("the run failed: an ERROR check failed (above); nothing after it can be trusted")
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from orchestration import demo
    from orchestration.runs import run_days, summarize
    from serving.demo import serve_hint

    settings = ensure_home(load_settings())
    began = time.perf_counter()
    print(f"SKIFF_HOME={settings.home}")
    days = _generate(args, settings, settings.landing).days
    models = not args.skip_models and len(days) >= demo.MIN_TRAINING_DAYS
    if models:
        demo.choose_test_day(days, args.drift_from)  # a bad --drift-from fails before the marts
    print(
        f"materializing {days[0]} .. {days[-1]} through the marts (one Dagster run)...", flush=True
    )
    if not run_days(settings, days[0], days[-1]):
        print("the run failed; open the UI (`skiff ui`) and look at the run's logs")
        return 1
    if args.skip_models:
        print("models skipped (--skip-models)")
    elif not models:
        print(
            f"\nmodels skipped: training needs at least {demo.MIN_TRAINING_DAYS} days "
            "(training window, validation day, test day)"
        )
    elif not demo.run_models(settings, days, args.drift_from, args.no_retrain):
        print("a run failed; open the UI (`skiff ui`) and look at the run's logs")
        return 1
    print()
    print(summarize(settings))
    if models and (boards := demo.leaderboards(settings)):
        print(boards)
    print(f"\ndemo finished in {time.perf_counter() - began:.0f} s")
    print(UI_HINT)
    print("\n" + serve_hint(settings))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from ml.recommend.importers import import_sessions

    settings = ensure_home(load_settings())
    out = Path(args.out) if args.out else settings.landing
    report = import_sessions(args.path, args.format, out, products=args.products)
    print(report.summary())
    if report.days:
        print(f"\nmaterialize them: skiff run --start {report.days[0]} --end {report.days[-1]}")
    return 0 if report.reconciles else 1


def cmd_evaluate_recs(args: argparse.Namespace) -> int:
    import json

    from ml.recommend.compare import compare, format_leaderboard

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        rows = compare(args.train, args.test, fmt=args.format, models=models)
    except (ValueError, FileNotFoundError) as exc:
        print(f"skiff evaluate-recs: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=2) if args.json else format_leaderboard(rows))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    ensure_home(load_settings())
    dagster = Path(sys.executable).parent / "dagster"
    argv = [
        str(dagster),
        "dev",
        "-w",
        str(REPO_ROOT / "workspace.yaml"),
        "-h",
        args.host,
        "-p",
        str(args.port),
    ]
    print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} {' '.join(argv)}", flush=True)
    os.chdir(REPO_ROOT)
    os.execv(argv[0], argv)
    return 0  # not reached


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.app import serve
    from serving.config import ServeConfig

    settings = ensure_home(load_settings())
    config = ServeConfig.from_env(
        host=args.host,
        port=args.port,
        experiments_file=args.experiments,
        max_body_bytes=args.max_body_bytes,
        max_events=args.max_events,
        reload_seconds=args.reload_seconds,
        challenger_traffic=args.challenger_traffic,
    )
    return serve(settings, config)
