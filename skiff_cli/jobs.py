"""`skiff train`, `skiff score`, `skiff monitor` and `skiff release-step`: the code location's
jobs on the user's own marts, one command each.

Each launches the same Dagster job the UI, the schedules and the sensors launch (a run of the
`skiff` code location, listed under its job in the UI), prints what it did and every check that
warned or failed, and exits non-zero when a step or an ERROR check failed. The marts come first:
`skiff run --start .. --end ..` (or `skiff import` then `skiff run` for public data).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import textwrap
from pathlib import Path

from skiff.settings import ConfigError, Settings, ensure_home, load_settings

PROBLEMS = ("conversion", "recommender")
BOOTSTRAPS = ("baseline", "best")


def _session_days(settings: Settings) -> tuple[dt.date, dt.date]:
    """The first and last day of the sessions mart, or a ConfigError naming the fix."""
    from orchestration.resources import build_warehouse

    warehouse = build_warehouse(settings)
    try:
        found = warehouse.query(
            "select min(session_day) as first, max(session_day) as last"
            f" from {settings.models_schema}.sessions"
        ).iloc[0]
    except Exception as exc:  # the table does not exist yet: no run built the marts
        raise ConfigError(
            f"no sessions mart in the warehouse ({exc.__class__.__name__}): build it first "
            "with `skiff run --start YYYY-MM-DD --end YYYY-MM-DD`"
        ) from exc
    if found["first"] is None or str(found["first"]) in ("NaT", "None"):
        raise ConfigError("the sessions mart is empty: `skiff run` some landing days first")
    return _as_date(found["first"]), _as_date(found["last"])


def _as_date(value) -> dt.date:
    return value if type(value) is dt.date else dt.date.fromisoformat(str(value)[:10])


def _days(args: argparse.Namespace, settings: Settings) -> tuple[dt.date, dt.date]:
    """--start .. --end, each defaulting to the marts' first and last day."""
    if args.start is not None and args.end is not None:
        first, last = args.start, args.end
    else:
        have_first, have_last = _session_days(settings)
        first, last = args.start or have_first, args.end or have_last
    if last < first:
        raise ConfigError(f"--end {last} is before --start {first}")
    return first, last


def _finish(report, what: str, checks_fail: bool = True) -> int:
    """Print the run's lines (counts, checks that warned or failed, step failures) and the
    verdict; 0 when no step failed and (`checks_fail`) no ERROR check failed."""
    for line in report.lines():
        print(f"  {line.rstrip()}")
    if not report.steps_ok:
        print(f"{what} failed: a step failed (above); its logs are in the UI (`skiff ui`)")
        return 1
    if report.failed_errors and checks_fail:
        print(f"{what} failed: an ERROR check failed (above)")
        return 1
    return 0


def _ops_file(path) -> dict:
    """The `ops:` of a run-config file as the Launchpad shows it (YAML or JSON):
    `ops: {asset_name: {config: {...}}}`."""
    if path is None:
        return {}
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--config {path}: {exc}") from exc
    ops = loaded.get("ops") if isinstance(loaded, dict) else None
    if not isinstance(ops, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("config"), dict) for v in ops.values()
    ):
        raise ConfigError(
            f"--config {path}: expected `ops: {{<asset>: {{config: {{...}}}}}}` as in the Launchpad"
        )
    return ops


def _report(settings: Settings, job_name: str, **kwargs):
    """`run_job_report`; a run configuration Dagster refuses (an asset or a field that is not
    in the job, from --config) is refused before anything ran, with Dagster's reasons."""
    from dagster import DagsterInvalidConfigError

    from orchestration.runs import run_job_report

    try:
        return run_job_report(settings, job_name, **kwargs)
    except DagsterInvalidConfigError as exc:
        reasons = "; ".join(e.message.split(" Expected:")[0] for e in exc.errors)
        raise ConfigError(f"the run configuration of {job_name} is refused: {reasons}") from exc


def _run(func, *args) -> int:
    try:
        return func(*args)
    except ConfigError as exc:
        print(f"skiff: {exc}", file=sys.stderr)
        return 2


def cmd_train(args: argparse.Namespace) -> int:
    return _run(_train, args)


def _train(args: argparse.Namespace) -> int:
    from ml.registry import ROLES, Registry
    from orchestration import demo
    from orchestration.definitions import TRAIN_MODELS

    settings = ensure_home(load_settings())
    have_first, have_last = _session_days(settings)
    test_day = args.test_day or have_last
    first = args.start or max(have_first, test_day - dt.timedelta(days=demo.MAX_TRAIN_DAYS + 1))
    if (test_day - first).days + 1 < demo.MIN_TRAINING_DAYS:
        raise ConfigError(
            f"{first} .. {test_day} holds fewer than {demo.MIN_TRAINING_DAYS} days: training "
            "needs training days, a validation day and the test day"
        )
    ops = demo.training_windows(first, test_day)
    if args.bootstrap is not None:  # else the job's own default, as the UI runs it
        for name in ("conversion_champion", "recommender_champion"):
            ops[name] = {"config": {"bootstrap": args.bootstrap}}
    for name, config in _ops_file(args.config).items():  # the file's config wins, merged
        ops[name] = {"config": {**ops.get(name, {}).get("config", {}), **config["config"]}}
    print(
        f"training on {first} .. {test_day} (validation {test_day - dt.timedelta(days=1)}, "
        f"test day {test_day}): every candidate, gates, champions (one run of {TRAIN_MODELS})",
        flush=True,
    )
    # a gate that refuses a candidate is the gates doing their job: told, not a failure
    code = _finish(_report(settings, TRAIN_MODELS, ops=ops), "training", checks_fail=False)
    if code == 0 and (boards := demo.leaderboards(settings)):  # else an older run's boards
        print(boards)
    registry = Registry(settings.registry)
    for problem in PROBLEMS:
        roles = registry.roles(problem)
        said = ", ".join(f"{role} {roles[role]}" for role in ROLES if role in roles)
        print(f"{problem}: {said or 'no champion (no candidate passed its gates)'}")
    return code


def cmd_score(args: argparse.Namespace) -> int:
    return _run(_score, args)


def _score(args: argparse.Namespace) -> int:
    from orchestration import demo
    from orchestration.definitions import SCORE_DAYS

    settings = ensure_home(load_settings())
    first, last = _days(args, settings)
    if not demo.champions_published(settings):
        raise ConfigError("scoring needs a published champion for both problems: `skiff train`")
    print(f"scoring {first} .. {last} with the champions (one run of {SCORE_DAYS})", flush=True)
    report = _report(settings, SCORE_DAYS, first=first, last=last)
    for asset, partition in report.materialized:
        print(f"  materialized {asset} {partition or ''}".rstrip())
    return _finish(report, "scoring")


def cmd_monitor(args: argparse.Namespace) -> int:
    return _run(_monitor, args)


def _monitor(args: argparse.Namespace) -> int:
    from orchestration import demo
    from orchestration.definitions import MONITOR_DAYS

    settings = ensure_home(load_settings())
    first, last = _days(args, settings)
    ops = _ops_file(args.config)
    if not demo.champions_published(settings):
        raise ConfigError("monitoring needs a published champion for both problems: `skiff train`")
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    print(
        f"monitoring {first} .. {last} against the champions ({len(days)} run(s) of "
        f"{MONITOR_DAYS}, one per day)",
        flush=True,
    )
    code, failed = 0, []
    for day in days:
        print(f"{day}:", flush=True)
        report = _report(settings, MONITOR_DAYS, ops=ops, partition=day)
        code = max(code, _finish(report, str(day)))
        failed += [] if report.steps_ok else [day.isoformat()]
    print("\n" + demo.monitoring_summary(settings, days))
    if failed:  # the table reads each day's latest materializations
        print(f"a step failed on {', '.join(failed)}: the table shows an earlier run's, if any")
    return code


def cmd_release_step(args: argparse.Namespace) -> int:
    return _run(_release_step, args)


def _release_step(args: argparse.Namespace) -> int:
    from orchestration.definitions import RELEASE_LOOP
    from orchestration.demo_release import PROBLEMS as RAMPED
    from orchestration.demo_release import latest_look, look_line
    from orchestration.experiments.sensors import log_days_to_read

    settings = ensure_home(load_settings())
    first, last = log_days_to_read(dt.datetime.now(dt.UTC))
    first, last = args.start or first, args.end or last
    if last < first:
        raise ConfigError(f"--end {last} is before --start {first}")
    print(
        f"one look of the rollout controllers at the server's log {first} .. {last} "
        f"(one run of {RELEASE_LOOP})",
        flush=True,
    )
    code = _finish(_report(settings, RELEASE_LOOP, first=first, last=last), "the release step")
    for problem in RAMPED:
        print(look_line(problem, latest_look(problem)))
    return code


REFUSED = """  2  refused before anything ran (e.g. no marts yet, a bad setting, --end before
     --start, a --config that names what the job's assets do not take)"""
TRAIN_EXIT_STATUS = f"""exit status:
  0  every step succeeded. A gate that refused a candidate (e.g.
     beats_logistic_pr_auc) is printed as a FAILED check, but exits 0:
     refusing is the gates' job
  1  a step failed (e.g. a training window without rows); its error is printed
{REFUSED}"""


def _exit_status(errors: str) -> str:
    """The exit status of a job whose ERROR checks fail the command (`errors`: which)."""
    return f"""exit status:
  0  every step succeeded and no ERROR check failed (a failed WARN check is
     printed as warned)
  1  a step failed, or an ERROR check failed{errors}; each is printed
{REFUSED}"""


def add_parsers(sub, date_type) -> None:
    """The four subcommands, on the `skiff` parser's subparsers."""

    def parser(name: str, help_text: str, description: str, epilog: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=textwrap.fill(description, 88),
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def days(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--start", type=date_type, help=f"first day (default: {what})")
        p.add_argument("--end", type=date_type, help="last day (default: the marts' last day)")

    train = parser(
        "train",
        "train, evaluate and gate every candidate; choose or challenge the champions",
        "One run of train_models on the marts: both problems' candidates are trained on the "
        "days before the validation day, chosen on it, gated and reported on the test day; "
        "the winners are admitted as challengers (or become the first champions). A gate "
        "that refuses a candidate is printed as a FAILED check but exits 0; a failed step "
        "exits 1.",
        TRAIN_EXIT_STATUS,
    )
    train.add_argument(
        "--test-day", type=date_type, help="the day reported on (default: the marts' last day)"
    )
    train.add_argument(
        "--start",
        type=date_type,
        help="first training day (default: up to 14 training days before the validation day)",
    )
    train.add_argument(
        "--config",
        type=Path,
        help="a run-config file (YAML or JSON) as in the Launchpad, `ops: {asset: {config: "
        "{...}}}`, e.g. a model's parameters; merged over the windows above",
    )
    train.add_argument(
        "--bootstrap",
        choices=BOOTSTRAPS,
        help="with no champion yet: make the best candidate champion at once (best, the "
        "job's default, as the UI runs it), or start on the baseline and let the best "
        "candidate earn traffic as challenger (baseline, what the demo does)",
    )
    train.set_defaults(func=cmd_train)

    score = parser(
        "score",
        "the champions' predictions for days (one run)",
        "One run of score_days for --start .. --end: the conversion champion's scores and the "
        "recommender champion's lists for every session of those days.",
        _exit_status(""),
    )
    days(score, "the marts' first day")
    score.set_defaults(func=cmd_score)

    monitor = parser(
        "monitor",
        "drift and quality of days against the champions (one run per day)",
        "A run of monitor_days per day of --start .. --end: input and score drift, quality "
        "against the day's outcomes, each with an Evidently report; then a table of the days.",
        _exit_status(
            " (a day past an error_*\n     threshold: feature_drift, prediction_drift, auc_drop, "
            "calibration, hr_drop,\n     unseen_requests)"
        ),
    )
    days(monitor, "the marts' first day")
    monitor.add_argument(
        "--config",
        type=Path,
        help="a run-config file (YAML or JSON) as in the Launchpad, `ops: {asset: {config: "
        "{...}}}`: monitoring's thresholds, e.g. `ops: {conversion_prediction_drift: "
        "{config: {warn_score: 0.1}}}`; applied to every day's run",
    )
    monitor.set_defaults(func=cmd_monitor)

    step = parser(
        "release-step",
        "one look of the rollout controllers at the server's log (one run)",
        "One run of release_loop over the serving log's days: the log's raw tables, the "
        "experiment marts and results, then each problem's rollout step (grow, hold, promote "
        "or roll back the challenger), as the hourly schedule runs it.",
        _exit_status(
            " (not_rolled_back: the look rolled\n     the challenger back; "
            "sample_ratio_matches; lines_reconcile)"
        ),
    )
    step.add_argument("--start", type=date_type, help="first log day (default: yesterday, UTC)")
    step.add_argument("--end", type=date_type, help="last log day (default: today, UTC)")
    step.set_defaults(func=cmd_release_step)
