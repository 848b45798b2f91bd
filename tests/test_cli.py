"""The `skiff` command as a user runs it: a real process, a temporary SKIFF_HOME."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest

SKIFF = str(Path(sys.executable).parent / "skiff")


def skiff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SKIFF, *args], env=os.environ.copy(), capture_output=True, text=True, timeout=600
    )


def test_generate_is_deterministic_and_checks_its_flags(settings, tmp_path):
    flags = ["generate", "--days", "2", "--sessions-per-day", "50", "--start", "2026-02-01"]
    for out in ("a", "b"):
        done = skiff(*flags, "--seed", "5", "--out", str(tmp_path / out))
        assert done.returncode == 0, done.stderr
        assert "generated" in done.stdout
    comparison = filecmp.dircmp(tmp_path / "a" / "2026-02-02", tmp_path / "b" / "2026-02-02")
    assert sorted(comparison.same_files) == ["browsing_events.csv", "products.csv"]

    early = skiff("generate", "--days", "1", "--start", "2025-06-01", "--out", str(tmp_path / "c"))
    assert early.returncode == 2
    assert "before the first partition 2026-01-01" in early.stderr
    bad = skiff("generate", "--days", "0")
    assert bad.returncode == 2 and "--days" in bad.stderr


@pytest.mark.slow
def test_demo_runs_the_graph_and_says_how_to_open_the_ui(settings):
    done = skiff("demo", "--days", "2", "--sessions-per-day", "80", "--start", "2026-03-01")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "160 sessions over 2 days" in done.stdout
    assert "main.conversion_examples" in done.stdout
    assert "skiff ui" in done.stdout and "127.0.0.1:3000" in done.stdout
    # the run is in the persistent instance, so the UI shows it after the demo
    runs = list((settings.dagster_home / "history" / "runs").glob("*.db"))
    assert runs, "no run stored under DAGSTER_HOME"
