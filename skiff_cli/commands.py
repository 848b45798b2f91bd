"""What each `skiff` subcommand does: read the settings, call orchestration, serving or ml, print.

Heavy packages (Dagster, dbt, torch, FastAPI) are imported inside the command that needs them,
so `skiff --help` and `skiff generate` start at once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from skiff.settings import ConfigError, Settings, ensure_home, load_settings

MAX_ERROR_SHARE = 0.01  # `skiff simulate` fails above this share of failed requests


def ui_hint() -> str:
    """How to open the UI on this state, and where its report links point (`skiff ui` serves
    them when that is a local address; plain `dagster dev` serves no reports)."""
    from skiff.urls import reports_base_url
    from skiff_cli.ui import serves_reports

    base = reports_base_url()
    reports = (
        f"and serves the reports its links point at, {base}/"
        if serves_reports(base)
        else f"its report links point at {base}/ (served there)"
    )
    return (
        "\nOpen the Dagster UI on this state:\n"
        "  .venv/bin/skiff ui        # dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000 with\n"
        "                            # DAGSTER_HOME=$SKIFF_HOME/dagster; " + reports + "\n"
        "  then browse http://127.0.0.1:3000 (Assets -> Lineage; Runs)"
    )


def _start(args: argparse.Namespace, settings: Settings) -> dt.date:
    start = args.start or dt.datetime.now(dt.UTC).date() - dt.timedelta(days=args.days)
    # an explicit first partition refuses earlier days; else earlier days move the start back
    explicit = settings.partitions_start_source == "SKIFF_PARTITIONS_START"
    if explicit and start < settings.partitions_start:
        raise ConfigError(
            f"--start {start} is before the first partition {settings.partitions_start} "
            "(set SKIFF_PARTITIONS_START to an earlier day)"
        )
    return start


def _config(args: argparse.Namespace, settings: Settings):
    """The generator's configuration from the data flags (the simulator's world uses it too)."""
    from ml.synthetic import GeneratorConfig

    return GeneratorConfig(
        days=args.days,
        sessions_per_day=args.sessions_per_day,
        seed=args.seed,
        start=_start(args, settings),
        drift_from=args.drift_from,
        write_truth=not getattr(args, "no_truth", False),
    )


def _generate(args: argparse.Namespace, settings: Settings, out: Path):
    from ml.synthetic import generate

    config = _config(args, settings)
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
    elif (
        not demo.run_models(settings, days, args.drift_from, args.no_retrain, args.bad_challenger)
        or not (args.no_release or _release(args, settings))
        or not (args.no_offline_online or _offline_online(args, settings))
    ):
        print("a run failed; open the UI (`skiff ui`) and look at the run's logs")
        return 1
    print()
    print(summarize(settings))
    if models and (boards := demo.leaderboards(settings)):
        print(boards)
    print(f"\ndemo finished in {time.perf_counter() - began:.0f} s")
    print(ui_hint())
    print("\n" + serve_hint(settings))
    return 0


def _release(args: argparse.Namespace, settings: Settings) -> bool:
    """The demo's release loop on the data's world (same generator config as the data)."""
    from ml.simulate import world
    from ml.synthetic import regime_of
    from orchestration.demo_release import run_release

    config = _config(args, settings)
    last = config.start + dt.timedelta(days=config.days - 1)
    print()
    return run_release(settings, world(config, regime_of(last, config)), seed=args.seed)


def _offline_online(args: argparse.Namespace, settings: Settings) -> bool:
    """The offline-vs-online table on the data's world, if both champions were published."""
    from ml.synthetic import regime_of
    from orchestration import demo

    if not demo.champions_published(settings):
        return True
    config = _config(args, settings)
    last = config.start + dt.timedelta(days=config.days - 1)
    return demo.offline_vs_online(settings, config.seed, config.n_products, regime_of(last, config))


def cmd_promote(args: argparse.Namespace) -> int:
    from ml import release
    from ml.registry import ArtifactError, Registry

    settings = ensure_home(load_settings())
    registry = Registry(settings.registry)
    try:
        registry.manifest(args.problem, args.version)
        state = release.promote(
            registry, str(settings.published), args.problem, args.version, args.reason
        )
    except (release.ReleaseError, ArtifactError) as exc:
        print(f"skiff promote: {exc}", file=sys.stderr)
        return 2
    print(f"{args.problem} champion now {state.champion} (decided by operator: {args.reason})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from ml import release
    from ml.registry import ArtifactError, Registry

    settings = ensure_home(load_settings())
    try:
        state = release.rollback(
            Registry(settings.registry), str(settings.published), args.problem, args.reason
        )
    except (release.ReleaseError, ArtifactError) as exc:
        print(f"skiff rollback: {exc}", file=sys.stderr)
        return 2
    print(f"{args.problem}: challenger rolled back; {state.champion} serves alone")
    return 0


def cmd_resign(args: argparse.Namespace) -> int:
    from ml.registry import ArtifactError, Registry

    settings = ensure_home(load_settings())
    registry = Registry(settings.registry)
    try:
        result = registry.resign(args.problem, accept_unsigned=args.accept_unsigned)
    except ArtifactError as exc:  # no key to sign with
        print(f"skiff resign: {exc}", file=sys.stderr)
        return 2
    for why in result.refused.values():  # each names its version
        print(f"skiff resign: refused {why}", file=sys.stderr)
    try:
        published = registry.publish(args.problem, str(settings.published))
    except ArtifactError as exc:  # a role points at a refused version
        print(f"skiff resign: not republished: {exc}", file=sys.stderr)
        return 2
    roles = ", ".join(f"{role} {version}" for role, version in published.items()) or "none"
    print(
        f"{args.problem}: {len(result.resigned)} version(s) re-signed,"
        f" {len(result.refused)} refused; republished {roles}"
    )
    return 2 if result.refused else 0


def cmd_history(args: argparse.Namespace) -> int:
    import json

    from ml.registry import Registry
    from orchestration.demo_release import history_table

    settings = ensure_home(load_settings())
    entries = Registry(settings.registry).history(args.problem)
    if args.limit:
        entries = entries[-args.limit :]
    if args.json:
        print(json.dumps(entries, indent=2, default=str))
    elif not entries:
        print(f"no history for {args.problem} yet: train models first (`skiff demo`)")
    else:
        print(history_table(entries))
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
        params = json.loads(args.params) if args.params else None
    except json.JSONDecodeError as exc:
        print(f"skiff evaluate-recs: --params is not JSON: {exc}", file=sys.stderr)
        return 2
    if params is not None and not (
        isinstance(params, dict) and all(isinstance(v, dict) for v in params.values())
    ):
        print(
            "skiff evaluate-recs: --params must map a model to its parameters, e.g. "
            '{"gru": {"epochs": 30}}',
            file=sys.stderr,
        )
        return 2
    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if args.progress else None
    try:
        rows = compare(
            args.train, args.test, fmt=args.format, models=models, params=params, progress=progress
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"skiff evaluate-recs: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=2) if args.json else format_leaderboard(rows))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.app import serve
    from serving.config import ServeConfig

    settings = ensure_home(load_settings(serve_only=True))  # no warehouse, no report links
    config = ServeConfig.from_env(
        host=args.host,
        port=args.port,
        experiments_file=args.experiments,
        max_body_bytes=args.max_body_bytes,
        max_events=args.max_events,
        reload_seconds=args.reload_seconds,
        challenger_traffic=args.challenger_traffic,
        explore=args.explore,
        explore_pool=args.explore_pool,
        exclude_viewed=args.exclude_viewed,
        catalogue=args.catalogue,
        max_per_category=args.max_per_category,
    )
    return serve(settings, config)


def cmd_simulate(args: argparse.Namespace) -> int:
    import secrets

    from ml.simulate import ready, simulate, world
    from ml.synthetic import GeneratorConfig, regime_of
    from skiff.urls import serve_url

    url = (args.url or serve_url()).rstrip("/")
    ok, said = ready(url)
    if not ok:
        print(f"skiff simulate: the server at {url} is not ready: {said}", file=sys.stderr)
        return 1
    config = GeneratorConfig(seed=args.seed, drift_from=args.drift_from)
    regime = regime_of(dt.datetime.now(dt.UTC).date(), config)
    seed = secrets.randbelow(2**31) if args.traffic_seed is None else args.traffic_seed
    print(
        f"simulating {args.sessions:,} sessions against {url} (world seed {args.seed}, "
        f"regime {regime}, --traffic-seed {seed})",
        file=sys.stderr,
        flush=True,
    )
    report = simulate(
        url,
        world(config, regime),
        args.sessions,
        seed,
        rate=args.rate,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
    )
    print(report.to_json() if args.json else report.table())
    if report.error_share > MAX_ERROR_SHARE:
        print(
            f"skiff simulate: {report.error_share:.1%} of the requests failed "
            f"(more than {MAX_ERROR_SHARE:.0%}); see the errors above and the server's log",
            file=sys.stderr,
        )
        return 1
    return 0
