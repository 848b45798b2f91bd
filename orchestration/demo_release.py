"""The demo's release loop: the trained challengers earn their traffic from simulated shoppers.

`run_release` starts the real server (`skiff serve`, its own process, on a free port of
127.0.0.1), then repeats a look until each problem's rollout is decided or `max_looks` ran:
send `sessions_per_look` synthetic shoppers from the data's world (`ml.simulate`), then one
run of `release_loop` (log -> raw -> marts -> experiment_results -> rollouts) on the log days
the hourly schedule reads, as it would. The demo's policy (`DEMO_POLICY`) is the production
policy with minimums a demo can reach in minutes: stages shadow -> 10% -> 25% -> 50%, 150 challenger
sessions (shadow: scores) per stage, no minimum duration, and always-valid intervals tuned to
be tightest near 300 sessions per arm (production: 10,000). The printed lines and the rollout
assets' metadata in the UI show each look; `skiff history PROBLEM` the whole ramp.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import AssetKey, DagsterInstance

from ml import release
from ml.registry import Registry
from orchestration.definitions import RELEASE_LOOP
from orchestration.experiments.rollout import PROBLEMS, rollout_name
from orchestration.experiments.sensors import log_days_to_read
from orchestration.runs import run_job
from skiff.settings import Settings

DEMO_POLICY = {
    "stages": ["shadow:0", "10%:0.1", "25%:0.25", "50%:0.5"],
    "min_sessions": 150,
    "min_hours": 0.0,
    "n_star": 300,
    "replay_min_exposures": 300,
}
SESSIONS_PER_LOOK = 600
MAX_LOOKS = 12
SERVER_START_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(settings: Settings, log: Path) -> Iterator[str]:
    """`skiff serve` in its own process on a free port (reloading every 0.5 s); its URL."""
    from ml.simulate import ready

    port = _free_port()
    env = {**os.environ, "SKIFF_HOME": str(settings.home), "SKIFF_EXPERIMENTS": ""}
    argv = [sys.executable, "-m", "skiff_cli.main", "serve", "--port", str(port)]
    argv += ["--reload-seconds", "0.5"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + SERVER_START_S
            while not ready(url)[0]:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not become ready; see {log}")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def latest_look(problem: str) -> dict:
    """The metadata of the problem's latest rollout look (its rollout asset's materialization),
    or {} before the first."""
    with DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(AssetKey(rollout_name(problem)))
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def look_line(problem: str, look: dict) -> str:
    """A look in one line: the action, the stage it left, the sessions and the lift."""
    lift = look.get("lift")
    numbers = (
        f"; {look.get('sessions_challenger', 0):,} challenger / "
        f"{look.get('sessions_champion', 0):,} champion sessions, difference {lift:+.4f} "
        f"({look.get('lift_low'):+.4f} .. {look.get('lift_high'):+.4f})"
        if isinstance(lift, float) and isinstance(look.get("lift_low"), float)
        else ""
    )
    return f"  {problem}: {look.get('action', '?')} -> {look.get('stage', '?')}{numbers}"


def truth_line(report) -> str:
    """What the simulator knows about this look's sessions: each variant's true rates."""
    parts = []
    for v in report.variants:
        rate = v.true_ctr if v.problem == "recommender" else v.true_conversion
        name = "CTR" if v.problem == "recommender" else "conversion"
        if rate is not None:
            parts.append(f"{v.problem} {v.variant} {name} {rate:.3f}")
    return "truth of this look: " + ", ".join(parts)


def pending(settings: Settings) -> list[str]:
    """The problems whose challenger is still ramping."""
    registry = Registry(settings.registry)
    states = {p: release.load_state(registry, p) for p in PROBLEMS}
    return [p for p, s in states.items() if s is not None and s.challenger is not None]


def run_release(
    settings: Settings,
    world,
    *,
    sessions_per_look: int = SESSIONS_PER_LOOK,
    max_looks: int = MAX_LOOKS,
    seed: int = 0,
    policy: dict = DEMO_POLICY,
    watch: tuple[str, ...] = ("recommender",),
) -> bool:
    """The server, then the looks of `release_looks` until the `watch`ed problems are decided
    (see the module's docstring), and each problem's history. The demo watches the
    recommender: a conversion experiment counts only sessions with a cart, so at the demo's
    traffic it is still ramping when the recommender is decided, and says so. False when a
    run failed."""
    if not pending(settings):
        print("no challenger to ramp: the release loop has nothing to do")
        return True
    print(
        f"ramping {', '.join(pending(settings))}: {sessions_per_look} simulated sessions, then "
        f"one look of the rollout controllers (stages {' -> '.join(policy['stages'])})",
        flush=True,
    )
    with server(settings, settings.home / "logs" / "demo-serve.log") as url:
        reports = release_looks(
            settings,
            url,
            world,
            sessions_per_look=sessions_per_look,
            max_looks=max_looks,
            seed=seed,
            policy=policy,
            watch=watch,
        )
    for problem in pending(settings):
        look = latest_look(problem)
        print(
            f"\n{problem}: the challenger is still at {look.get('stage', '?')} "
            f"({look.get('reason', '')}); the hourly schedule (release_hourly) keeps looking"
        )
    registry = Registry(settings.registry)
    for problem in PROBLEMS:
        entries = registry.history(problem)[-10:]
        print(f"\n{problem} history (skiff history {problem}):\n{history_table(entries)}")
    return reports is not None


def release_looks(
    settings: Settings,
    url: str,
    world,
    *,
    sessions_per_look: int,
    max_looks: int,
    seed: int,
    policy: dict,
    watch: tuple[str, ...] = PROBLEMS,
) -> list | None:
    """Looks against the server at `url` until none of the `watch`ed problems has a challenger
    ramping, or `max_looks` ran; the simulator's report of each look (None when a run
    failed)."""
    from ml.simulate import simulate

    ops = {rollout_name(p): {"config": policy} for p in PROBLEMS}
    reports = []
    ramping = pending(settings)
    for look in range(1, max_looks + 1):
        if not set(ramping) & set(watch):
            break
        report = simulate(url, world, sessions_per_look, seed * 1000 + look, concurrency=6)
        reports.append(report)
        if report.error_share > 0.01:
            print(f"  {report.error_share:.1%} of the simulated requests failed")
            return None
        print(f"look {look} ({report.sessions_run:,} sessions sent):", flush=True)
        # the log days the hourly schedule reads: yesterday .. today, in one run
        first, last = log_days_to_read(dt.datetime.now(dt.UTC))
        if not run_job(settings, RELEASE_LOOP, first, last, ops=ops):
            return None
        for problem in ramping:
            print(look_line(problem, latest_look(problem)), flush=True)
        print("  " + truth_line(report), flush=True)
        ramping = pending(settings)
        time.sleep(1.0)  # the server reloads experiments.json every 0.5 s
    return reports


def history_table(entries: list[dict]) -> str:
    """History entries as aligned text: at, role, version, stage, traffic, decided by, reason
    (cut to 80 characters: `skiff history --json` has it whole)."""
    rows = [("at", "role", "version", "stage", "traffic", "decided by", "reason")]
    for e in entries:
        traffic = e.get("traffic")
        rows.append(
            (
                str(e["at"]),
                str(e["role"]),
                str(e["version"]),
                str(e.get("stage") or "-"),
                "-" if traffic is None else f"{traffic:.0%}",
                str(e.get("decided_by") or "-"),
                _cut(str(e.get("reason") or "")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
    )


def _cut(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
