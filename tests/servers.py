"""Real servers for end-to-end tests: start on 127.0.0.1, wait until they answer, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
from dagster_graphql import DagsterGraphQLClient

from skiff.settings import REPO_ROOT


def wait_for_port(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {seconds:.0f} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(
    argv: Sequence[str],
    log: Path,
    ready_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[None]:
    """Run `argv` (its own process group) for the duration, in `env` (default this process's
    environment); wait for `ready_url` to answer."""
    handle = log.open("w")
    proc = subprocess.Popen(
        list(argv),
        cwd=REPO_ROOT,
        env=dict(os.environ if env is None else env),
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        if ready_url:
            _wait_until_ready(proc, ready_url, log)
        yield
    finally:
        _kill_group(proc, signal.SIGINT)  # what Ctrl-C sends: dagster dev and uvicorn stop fast
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
        handle.close()


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _wait_until_ready(proc: subprocess.Popen, url: str, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer in {seconds:.0f} s:\n{log.read_text()[-3000:]}")


def wait_for_run(client: DagsterGraphQLClient, run_id: str, seconds: float = 300) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = client.get_run_status(run_id).value
        if status in {"SUCCESS", "FAILURE", "CANCELED"}:
            return status
        time.sleep(2)
    return "TIMEOUT"


def sample_events(n: int = 3) -> list[dict]:
    """A valid conversion session of `n` events: pageview, detail, add, repeating."""
    kinds = [("pageview", None), ("event_product", "detail"), ("event_product", "add")]
    return [
        {
            "event_type": kinds[i % 3][0],
            "product_action": kinds[i % 3][1],
            "product_sku": None if i % 3 == 0 else f"sku-{i}",
            "event_at": 1_767_607_200_000 + 15_000 * i,
            "category": "c1/c12",
            "price_bucket": 1 + i % 10,
        }
        for i in range(n)
    ]


@contextmanager
def fakesnow_server(log: Path) -> Iterator[int]:
    """fakesnow's Snowflake stand-in in server mode on a free port of 127.0.0.1; its port."""
    import sys

    port = free_port()
    with running([str(Path(sys.executable).parent / "fakesnow"), "-s", "-p", str(port)], log):
        wait_for_port(port)
        yield port
