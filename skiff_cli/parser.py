"""The `skiff` command's arguments: one subcommand each, bound to its function in `commands`."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from skiff_cli import commands, jobs
from skiff_cli import ui as ui_command

IMPORT_FORMATS = ("coveo", "sessions", "diginetica")
RUN_EXIT_STATUS = """exit status:
  0  every step succeeded and no ERROR check failed (a WARN check, such as
     quarantine_share, is printed but does not fail the run)
  1  a step failed (e.g. a day's folder, file name or header is wrong), or an
     ERROR check failed (e.g. rows_reconcile: rows in the files differ from rows
     loaded + quarantined)
  2  the command was refused before anything ran (a bad setting, or a day before
     SKIFF_PARTITIONS_START)"""


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


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiff", description="Skiff: an ML data platform for e-commerce browsing sessions."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write synthetic landing days (raw contract)")
    _add_data_flags(gen, days=21, sessions=2000)
    gen.add_argument("--out", help="folder to write into (default $SKIFF_HOME/landing)")
    gen.add_argument("--no-truth", action="store_true", help="do not write the ground truth")
    gen.set_defaults(func=commands.cmd_generate)

    run = sub.add_parser(
        "run",
        help="materialize landing days end to end in one run",
        description="Materialize landing days [--start, --end] through the marts in one "
        "Dagster run, then print each day's rows loaded and quarantined and every check that "
        "warned or failed.",
        epilog=RUN_EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--start", type=_date, required=True, help="first day, YYYY-MM-DD")
    run.add_argument("--end", type=_date, default=None, help="last day (default: --start)")
    run.set_defaults(func=commands.cmd_run)

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
    demo.add_argument(
        "--bad-challenger",
        action="store_true",
        help="start on the best recommender and admit POP as challenger by override: the "
        "replay gate rolls it back before any shopper sees it",
    )
    demo.add_argument(
        "--no-release",
        action="store_true",
        help="skip the release loop (server + simulated shoppers + rollout controllers)",
    )
    demo.add_argument(
        "--no-offline-online",
        action="store_true",
        help="skip the offline-vs-online table (offline metrics beside replay, interleaving, "
        "A/B and the simulator's truth)",
    )
    demo.set_defaults(func=commands.cmd_demo)

    imp = sub.add_parser(
        "import", help="map public session data into landing days (the raw contract)"
    )
    imp.add_argument("--format", required=True, choices=IMPORT_FORMATS)
    imp.add_argument("path", help="the data file (Coveo browsing_train.csv, a session file, ...)")
    imp.add_argument("--products", help="Coveo sku_to_content.csv (optional)")
    imp.add_argument("--out", help="landing folder (default $SKIFF_HOME/landing)")
    imp.set_defaults(func=commands.cmd_import)

    recs = sub.add_parser(
        "evaluate-recs", help="train recommenders on one session file, evaluate on another"
    )
    recs.add_argument("--train", required=True, help="training sessions file")
    recs.add_argument("--test", required=True, help="test sessions file (later sessions)")
    recs.add_argument("--format", default="sessions", choices=IMPORT_FORMATS)
    recs.add_argument(
        "--models",
        default="pop,sknn,gru",
        help="comma-separated, of pop (popularity), sknn (session-kNN), gru (GRU4Rec-style "
        "torch model), sasrec (self-attention torch model); default pop,sknn,gru",
    )
    recs.add_argument(
        "--params",
        metavar="JSON",
        help='constructor parameters per model over the defaults, e.g. \'{"gru": {"epochs": 30, '
        '"lr": 0.005}, "sknn": {"k_neighbors": 200}}\'',
    )
    recs.add_argument(
        "--progress", action="store_true", help="print the torch models' epochs on stderr"
    )
    recs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    recs.set_defaults(func=commands.cmd_evaluate_recs)

    jobs.add_parsers(sub, _date)

    ui = sub.add_parser(
        "ui",
        help="start the Dagster UI (dagster dev) on the local state, with its reports on 3001",
        description="`dagster dev` on the local state (DAGSTER_HOME=$SKIFF_HOME/dagster), and "
        "the reports its links point at: by default http://127.0.0.1:3001/reports/ (served "
        "read-only from $SKIFF_HOME/reports, or the bucket's reports/), which plain `dagster "
        "dev` does not serve. SKIFF_REPORTS_URL=http://127.0.0.1:<port>/reports moves them "
        "to another port; a base elsewhere, or SKIFF_SERVE_URL (whose /reports/ `skiff "
        "serve` serves), leaves them to that server.",
    )
    ui.add_argument("--host", default="127.0.0.1", help="the UI's address (default 127.0.0.1)")
    ui.add_argument(
        "--port", type=int, default=3000, help="the UI's port (default 3000; reports: 3001)"
    )
    ui.set_defaults(func=ui_command.cmd_ui)

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
    serve.add_argument(
        "--explore",
        type=_share,
        metavar="SHARE",
        help="share of recommender answers shuffled to log propensities (0 = off), "
        "default SKIFF_SERVE_EXPLORE or 0.05",
    )
    serve.add_argument(
        "--explore-pool",
        type=_positive,
        metavar="N",
        help="explored answers shuffle the top max(N, k), default SKIFF_SERVE_EXPLORE_POOL or 20",
    )
    serve.add_argument(
        "--exclude-viewed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="never recommend a product the session viewed (default SKIFF_SERVE_EXCLUDE_VIEWED "
        "or on)",
    )
    serve.add_argument(
        "--catalogue",
        help="products file (landing contract) of what can be shown, and its categories "
        "(default SKIFF_SERVE_CATALOGUE)",
    )
    serve.add_argument(
        "--max-per-category",
        type=int,
        help="at most N products of a category per answer, 0 = no cap (needs a catalogue; "
        "default SKIFF_SERVE_MAX_PER_CATEGORY or 0)",
    )
    serve.set_defaults(func=commands.cmd_serve)

    problems = ("conversion", "recommender")
    promote = sub.add_parser(
        "promote",
        help="make a registered version champion now (an operator's decision, recorded)",
        description="Make VERSION the PROBLEM champion at once, bypassing the ramp; the old "
        "champion is recorded as retired, a running challenger other than VERSION as rolled "
        "back. Recorded in the history with --reason and decided_by operator.",
        epilog="exit status: 0 promoted; 2 refused (unknown version, already champion)",
    )
    promote.add_argument("problem", choices=problems)
    promote.add_argument("version", help="a version in the registry (see `skiff history`)")
    promote.add_argument("--reason", required=True, help="why: kept in the history")
    promote.set_defaults(func=commands.cmd_promote)

    back = sub.add_parser(
        "rollback",
        help="end the running challenger's ramp now (an operator's decision, recorded)",
        epilog="exit status: 0 rolled back; 2 refused (no challenger)",
    )
    back.add_argument("problem", choices=problems)
    back.add_argument("--reason", required=True, help="why: kept in the history")
    back.set_defaults(func=commands.cmd_rollback)

    resign = sub.add_parser(
        "resign",
        help="re-sign a problem's registered versions with SKIFF_MANIFEST_KEY and republish",
        description="Sign every version of PROBLEM with the current SKIFF_MANIFEST_KEY (the "
        "rotation step: versions signed by a key in SKIFF_MANIFEST_KEYS_PREVIOUS are verified "
        "first), then republish the roles so the served pointers carry the new signature. "
        "docs/production.md#signed-artifacts.",
        epilog="exit status: 0 every version re-signed; 2 refused (no key), or some versions "
        "refused (each named on stderr; the others are re-signed and republished)",
    )
    resign.add_argument("problem", choices=problems)
    resign.add_argument(
        "--accept-unsigned",
        action="store_true",
        help="also sign versions that carry no signature (adopting signing on an old registry: "
        "trust on first use; their files are still checked against their sha256)",
    )
    resign.set_defaults(func=commands.cmd_resign)

    history = sub.add_parser(
        "history",
        help="every role change and ramp step of a problem, with who decided and why",
    )
    history.add_argument("problem", choices=problems)
    history.add_argument("--json", action="store_true", help="a JSON list of the entries")
    history.add_argument("--limit", type=_positive, help="only the latest N entries")
    history.set_defaults(func=commands.cmd_history)

    sim = sub.add_parser(
        "simulate",
        help="send synthetic shoppers to the running server; print true and observed results",
        description="Shoppers from the generator's world (same --seed as the data: same "
        "catalogue and truth) browse, click recommendations, add to cart and buy through the "
        "server's API, as the truth says (ml/simulate). Prints each variant's true and "
        "observed click-through and conversion.",
        epilog="exit status: 0 done; 1 the server is not ready, or more than "
        f"{commands.MAX_ERROR_SHARE:.0%} of the requests failed",
    )
    sim.add_argument("--sessions", type=_positive, default=1000, help="default 1000")
    sim.add_argument("--rate", type=float, help="sessions started per second (default: no limit)")
    sim.add_argument("--concurrency", type=_positive, default=4, help="sessions at once (4)")
    sim.add_argument("--timeout", type=float, default=600.0, help="time budget, s (600)")
    sim.add_argument("--seed", type=int, default=7, help="the data's generator seed (default 7)")
    sim.add_argument(
        "--drift-from",
        type=_date,
        default=None,
        help="the data's --drift-from: from this day on, shoppers follow the drifted world",
    )
    sim.add_argument(
        "--traffic-seed",
        type=int,
        help="seeds the shoppers (default: a new one each run, printed; a seed reused "
        "against the same server repeats its session ids)",
    )
    sim.add_argument("--url", help="the server (default SKIFF_SERVE_URL or http://127.0.0.1:8000)")
    sim.add_argument("--json", action="store_true", help="print the report as JSON")
    sim.set_defaults(func=commands.cmd_simulate)
    return parser
