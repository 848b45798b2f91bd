"""`skiff ui`: the Dagster UI on the local state (`dagster dev` as a child that stops cleanly),
with the reports its links point at served beside it."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from skiff.settings import REPO_ROOT, Settings, ensure_home, load_settings

UI_STOP_SECONDS = 30  # `skiff ui` kills dagster dev this long after asking it to stop


def cmd_ui(args: argparse.Namespace) -> int:
    """`dagster dev` on the local state, as a child this process stops cleanly: SIGTERM or
    Ctrl-C is passed on as the SIGINT on which dagster dev stops its web server, daemon and
    code server (a SIGTERM sent to dagster dev itself would leave them running)."""
    import signal
    import subprocess

    settings = ensure_home(load_settings())
    reports = _serve_reports(settings, args.port)
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
    child: subprocess.Popen | None = None
    stopping: list[float] = []  # when a stop was asked for

    def stop(signum: int, _frame) -> None:
        print(f"skiff ui: {signal.Signals(signum).name}, stopping dagster dev...", flush=True)
        stopping.append(time.monotonic())
        if child is not None:
            child.send_signal(signal.SIGINT)

    # the handlers first: a signal before dagster dev started must not leave it behind
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    child = subprocess.Popen(argv, cwd=REPO_ROOT, start_new_session=True)
    if stopping:  # asked to stop while it was starting
        child.send_signal(signal.SIGINT)
    killed = False
    while True:
        try:
            code = child.wait(timeout=1)
            break
        except subprocess.TimeoutExpired:
            if stopping and time.monotonic() - stopping[0] > UI_STOP_SECONDS and not killed:
                print(f"skiff ui: still running after {UI_STOP_SECONDS} s; killing it")
                os.killpg(child.pid, signal.SIGKILL)
                killed = True
    with suppress(ProcessLookupError):  # what of its process group outlived it
        os.killpg(child.pid, signal.SIGKILL)
    if reports is not None:
        reports()
    if code in (0, -signal.SIGINT, 130):
        return 0
    return 1 if code < 0 else code  # a signal's death is a failure, not status 256 - n


def serves_reports(base: str) -> bool:
    """Whether `skiff ui` serves the reports at `base` (`skiff.urls.reports_base_url`): a local
    `http://127.0.0.1:<port>/reports`, as by default (port 3001)."""
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    local = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost")
    return local and parts.path.rstrip("/") == "/reports"


def _serve_reports(settings: Settings, ui_port: int) -> Callable[[], None] | None:
    """Serve the reports where their links point (`skiff.urls.reports_base_url`), in a thread
    of this process, when that is a local http address this machine can take (returns the
    function that stops it; else None, and says where the links point). The server is
    stopped and its thread joined before `skiff ui` exits: a daemon thread still running its
    event loop while the interpreter shuts down once crashed the process (SIGSEGV, exit -11
    after dagster dev had stopped cleanly)."""
    import socket
    import threading
    from urllib.parse import urlsplit

    import uvicorn

    from serving.reports import reports_app
    from skiff.urls import reports_base_url

    base = reports_base_url()
    if not serves_reports(base):
        print(f"report links point at {base}/ (served there, not by skiff ui)")
        return None
    parts = urlsplit(base)
    host, port = parts.hostname, parts.port or 80
    if port == ui_port:
        print(
            f"skiff ui: the report links' port {port} is the UI's: pick another --port, or move "
            "the links with SKIFF_REPORTS_URL; reports not served",
            file=sys.stderr,
        )
        return None
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            print(
                f"report links point at {base}/, where something already answers (another "
                "skiff ui?); not serving them again"
            )
            return None
    app = reports_app(settings.reports_root)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="skiff-reports", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if server.started:
        print(f"reports (the UI's report links): {base}/", flush=True)
    else:
        print(f"skiff ui: could not serve the reports on {host}:{port}", file=sys.stderr)

    def stop() -> None:
        server.should_exit = True  # uvicorn's own way out of its loop
        thread.join(timeout=10)

    return stop
