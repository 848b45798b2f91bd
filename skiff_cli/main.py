"""The `skiff` command line: generate data, run days through the graph, the demo, the UI."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

from orchestration.runs import run_days, run_job, summarize
from skiff.settings import REPO_ROOT, ConfigError, Settings, ensure_home, load_settings


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a YYYY-MM-DD date") from exc


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_data_flags(parser: argparse.ArgumentParser, days: int, sessions: int) -> None:
    parser.add_argument("--days", type=_positive, default=days, help=f"days (default {days})")
    parser.add_argument(
        "--sessions-per-day",
        type=_positive,
        default=sessions,
        help=f"sessions per day (default {sessions})",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument(
        "--start",
        type=_date,
        default=None,
        help="first day, YYYY-MM-DD (default: so that the last day is yesterday, UTC)",
    )
    parser.add_argument(
        "--drift-from",
        type=_date,
        default=None,
        help="from this day on, behaviour changes (catalogue, category mix, conversion)",
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
    settings = ensure_home(load_settings())
    last = args.end or args.start
    print(f"materializing {args.start} .. {last} (one run; see it in the UI under Runs)")
    return 0 if run_days(settings, args.start, last) else 1


MIN_TRAINING_DAYS = 4


def _published(settings: Settings, problem: str) -> bool:
    from ml.registry import ArtifactError, load_published

    try:
        load_published(settings.published, problem)
    except ArtifactError:
        return False
    return True


def _demo_test_day(args: argparse.Namespace, days: list[dt.date]) -> dt.date:
    """The last day the demo trains on: the day before the drift, or a few days before the
    end, so that the days after it are monitored against the champion."""
    if args.drift_from is not None and days[0] < args.drift_from <= days[-1]:
        test_day = args.drift_from - dt.timedelta(days=1)
        if (test_day - days[0]).days + 1 < MIN_TRAINING_DAYS:
            raise ConfigError(
                f"--drift-from {args.drift_from} leaves fewer than {MIN_TRAINING_DAYS} days "
                "before it to train on: move it later or start earlier"
            )
        return test_day
    return days[-1] - dt.timedelta(days=min(MONITORED_DAYS, len(days) - MIN_TRAINING_DAYS))


def _demo_models(args: argparse.Namespace, settings: Settings, days: list[dt.date]) -> bool:
    """Train on the days up to the test day, score every day, monitor the days after it, and
    run the retraining the drift sensor asks for."""
    from orchestration.definitions import MONITOR_DAYS, SCORE_DAYS, TRAIN_MODELS

    first, last = days[0], days[-1]
    test_day = _demo_test_day(args, days)
    train_days = min(14, (test_day - first).days - 1)
    windows = {
        "conversion_training_set": {
            "config": {"train_days": train_days, "test_day": test_day.isoformat()}
        },
        "recommender_training_set": {
            "config": {"train_days": train_days, "end_day": test_day.isoformat()}
        },
    }
    print(
        f"training on {first} .. {test_day} (test day {test_day}), evaluating and promoting the "
        "models (one Dagster run)...",
        flush=True,
    )
    if not run_job(settings, TRAIN_MODELS, ops=windows):
        return False
    if not (_published(settings, "conversion") and _published(settings, "recommender")):
        print("no champion for both problems (their gates did not pass): scoring skipped")
        return True
    print(f"scoring {first} .. {last} with the champion (one Dagster run)...", flush=True)
    if not run_job(settings, SCORE_DAYS, first, last):
        return False
    watched = [d for d in days if d > test_day]
    if not watched:
        return True
    print(f"monitoring {watched[0]} .. {watched[-1]} against the champions (a run per day)...")
    for day in watched:
        if not run_job(settings, MONITOR_DAYS, partition=day):
            return False
    print("\n" + monitoring_summary(settings, watched))
    for request in drift_requests(settings):
        print(
            f"\nretraining requested by drift_retrain_sensor: job {request.job_name}, "
            f"drift since {request.tags['skiff/drift_first_day']} "
            f"({request.tags['skiff/drift_asset']}: {request.tags['skiff/drift_scores']})"
        )
        if args.no_retrain:
            print("  not run (--no-retrain): turn on drift_retrain_sensor in the UI to run it")
            continue
        print("  running it as the sensor's run would (one Dagster run)...", flush=True)
        if not run_job(
            settings,
            request.job_name,
            ops=request.run_config["ops"],
            tags={**request.tags, "dagster/run_key": request.run_key},
        ):
            return False
        print("  " + _champion_line(settings, request.job_name))
    return True


MONITORED_DAYS = 3
MONITORING_COLUMNS = (
    ("conversion_feature_drift", "drift_share", "input drift share", "{:.2f}"),
    ("conversion_prediction_drift", "drift_score", "score drift", "{:.3f}"),
    ("conversion_quality", "roc_auc", "ROC AUC", "{:.3f}"),
    ("conversion_quality", "calibration_ratio", "pred/obs rate", "{:.2f}"),
    ("recommender_monitoring", "hr_at_20", "HR@20", "{:.3f}"),
    ("recommender_monitoring", "unseen_request_share", "unseen requests", "{:.1%}"),
)


def monitoring_summary(settings: Settings, days: list[dt.date]) -> str:
    """One line per monitored day from the monitoring assets' latest materializations."""
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

    from ml.monitoring import worst

    header = ["day", *(label for _, _, label, _ in MONITORING_COLUMNS), "severity"]
    rows = []
    with DagsterInstance.get() as instance:
        for day in days:
            row, severities = [day.isoformat()], []
            cache: dict[str, dict] = {}
            for asset_name, key, _, fmt in MONITORING_COLUMNS:
                if asset_name not in cache:
                    records = instance.fetch_materializations(
                        AssetRecordsFilter(
                            asset_key=AssetKey(asset_name), asset_partitions=[day.isoformat()]
                        ),
                        limit=1,
                    ).records
                    meta = records[0].asset_materialization.metadata if records else {}
                    cache[asset_name] = {k: v.value for k, v in meta.items()}
                    severities.append(cache[asset_name].get("severity", "ok"))
                value = cache[asset_name].get(key)
                row.append(fmt.format(value) if isinstance(value, int | float) else "-")
            row.append(worst(*severities))
            rows.append(row)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    return "monitoring (reports: $SKIFF_HOME/reports/monitoring/):\n" + "\n".join(lines)


def drift_requests(settings: Settings) -> list:
    """What drift_retrain_sensor asks for now, evaluated in process on the instance."""
    from dagster import DagsterInstance, build_sensor_context

    from orchestration.definitions import build_definitions

    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def("drift_retrain_sensor")
    with DagsterInstance.get() as instance:
        result = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
    return list(result.run_requests or [])


def _champion_line(settings: Settings, job_name: str) -> str:
    from ml.registry import Registry

    problem = "conversion" if job_name.endswith("conversion") else "recommender"
    history = Registry(settings.registry).history(problem)
    last = history[-1] if history else None
    if last and last["role"] == "champion":
        return f"{problem} champion now {last['version']}: {last['reason']}"
    champion = Registry(settings.registry).role(problem, "champion")
    return f"{problem} champion kept ({champion.version if champion else 'none'}): see the run"


def cmd_demo(args: argparse.Namespace) -> int:
    settings = ensure_home(load_settings())
    began = time.perf_counter()
    print(f"SKIFF_HOME={settings.home}")
    result = _generate(args, settings, settings.landing)
    first, last = result.days[0], result.days[-1]
    if not args.skip_models and len(result.days) >= MIN_TRAINING_DAYS:
        _demo_test_day(args, result.days)  # a --drift-from too early fails now, not after the marts
    print(f"materializing {first} .. {last} through the marts (one Dagster run)...", flush=True)
    if not run_days(settings, first, last):
        print("the run failed; open the UI (`skiff ui`) and look at the run's logs")
        return 1
    if args.skip_models:
        print("models skipped (--skip-models)")
    elif len(result.days) < MIN_TRAINING_DAYS:
        print(
            f"\nmodels skipped: training needs at least {MIN_TRAINING_DAYS} days "
            "(training window, validation day, test day)"
        )
    elif not _demo_models(args, settings, result.days):
        print("a run failed; open the UI (`skiff ui`) and look at the run's logs")
        return 1
    print()
    print(summarize(settings))
    for problem in ("conversion", "recommender"):
        board = settings.reports / problem / "leaderboard.md"
        if board.exists() and not args.skip_models and len(result.days) >= MIN_TRAINING_DAYS:
            print(f"\n{problem} leaderboard (test day(s) of the time split):\n")
            print(board.read_text().strip())
    print(f"\ndemo finished in {time.perf_counter() - began:.0f} s")
    print(
        "\nOpen the Dagster UI on this state:\n"
        "  .venv/bin/skiff ui        # = DAGSTER_HOME=$SKIFF_HOME/dagster dagster dev "
        "-w workspace.yaml -h 127.0.0.1 -p 3000\n"
        "  then browse http://127.0.0.1:3000 (Assets -> Lineage; Runs)"
    )
    from serving.demo import serve_hint

    print("\n" + serve_hint(settings))
    return 0


IMPORT_FORMATS = ("coveo", "sessions", "diginetica")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiff", description="Skiff: an ML data platform for e-commerce browsing sessions."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write synthetic landing days (raw contract)")
    _add_data_flags(gen, days=21, sessions=2000)
    gen.add_argument("--out", help="folder to write into (default $SKIFF_HOME/landing)")
    gen.add_argument("--no-truth", action="store_true", help="do not write the ground truth")
    gen.set_defaults(func=cmd_generate)

    run = sub.add_parser("run", help="materialize landing days end to end in one run")
    run.add_argument("--start", type=_date, required=True, help="first day, YYYY-MM-DD")
    run.add_argument("--end", type=_date, default=None, help="last day (default: --start)")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="generate data and run it all on the local DuckDB")
    _add_data_flags(demo, days=21, sessions=5000)
    demo.add_argument(
        "--skip-models", action="store_true", help="stop after the marts (no training)"
    )
    demo.add_argument(
        "--no-retrain",
        action="store_true",
        help="print the retraining the drift sensor requests instead of running it",
    )
    demo.set_defaults(func=cmd_demo)

    imp = sub.add_parser(
        "import", help="map public session data into landing days (the raw contract)"
    )
    imp.add_argument("--format", required=True, choices=IMPORT_FORMATS)
    imp.add_argument("path", help="the data file (Coveo browsing_train.csv, a session file, ...)")
    imp.add_argument("--products", help="Coveo sku_to_content.csv (optional)")
    imp.add_argument("--out", help="landing folder (default $SKIFF_HOME/landing)")
    imp.set_defaults(func=cmd_import)

    recs = sub.add_parser(
        "evaluate-recs", help="train recommenders on one session file, evaluate on another"
    )
    recs.add_argument("--train", required=True, help="training sessions file")
    recs.add_argument("--test", required=True, help="test sessions file (later sessions)")
    recs.add_argument("--format", default="sessions", choices=IMPORT_FORMATS)
    recs.add_argument("--models", default="pop,sknn,gru", help="comma-separated (default all)")
    recs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    recs.set_defaults(func=cmd_evaluate_recs)

    ui = sub.add_parser("ui", help="start the Dagster UI (dagster dev) on the local state")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)

    serve = sub.add_parser(
        "serve", help="serve the published models over HTTP (FastAPI; docs at /docs)"
    )
    serve.add_argument("--host", help="default SKIFF_SERVE_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default SKIFF_SERVE_PORT or 8000")
    serve.add_argument(
        "--experiments", type=Path, help="experiment JSON file (default SKIFF_EXPERIMENTS)"
    )
    serve.add_argument("--max-body-bytes", type=_positive, help="default 65536")
    serve.add_argument("--max-events", type=_positive, help="events per request, default 500")
    serve.add_argument("--reload-seconds", type=float, help="pointer check interval, default 2")
    serve.add_argument(
        "--challenger-traffic", type=float, help="challenger share (0 = shadow), default 0"
    )
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"skiff: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
