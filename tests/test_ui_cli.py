"""`skiff ui` as a user starts it: in the background, stopped with SIGTERM, with no first-visit
dialog in the way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from skiff.settings import REPO_ROOT
from tests.servers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _processes_naming(text: str) -> list[str]:
    """Command lines of the running processes that mention `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in argv:
            found.append(argv)
    return found


def test_skiff_ui_stops_on_sigterm_and_shows_no_dialog(settings, tmp_path):
    port = free_port()
    log = (tmp_path / "ui.log").open("w")
    ui = subprocess.Popen(
        [str(Path(sys.executable).parent / "skiff"), "ui", "--port", str(port)],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # as `skiff ui &` from a script: no terminal's Ctrl-C
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert ui.poll() is None, (tmp_path / "ui.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            raise AssertionError((tmp_path / "ui.log").read_text()[-3000:])
        answer = httpx.post(
            f"http://127.0.0.1:{port}/graphql", json={"query": "{ shouldShowNux }"}, timeout=30
        )
        assert answer.json()["data"]["shouldShowNux"] is False

        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=60) == 0, (tmp_path / "ui.log").read_text()[-3000:]
        # nothing of it is left: not the web server, the daemon or the code server
        time.sleep(1)
        assert _processes_naming(str(settings.dagster_home)) == []
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2)
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
        log.close()
