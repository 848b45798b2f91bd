"""The `skiff` command as a user runs it: a real process, a temporary SKIFF_HOME."""

from __future__ import annotations

import datetime as dt
import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.demo import choose_test_day, training_windows
from skiff.settings import REPO_ROOT, ConfigError

SKIFF = str(Path(sys.executable).parent / "skiff")
DIGINETICA = REPO_ROOT.parent / "shared" / "data" / "diginetica" / "sample_train-item-views.csv"


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
    assert "models skipped: training needs at least 4 days" in done.stdout
    assert "main.conversion_examples" in done.stdout
    assert "skiff ui" in done.stdout and "127.0.0.1:3000" in done.stdout
    # the run is in the persistent instance, so the UI shows it after the demo
    runs = list((settings.dagster_home / "history" / "runs").glob("*.db"))
    assert runs, "no run stored under DAGSTER_HOME"


def test_demo_trains_up_to_the_day_before_the_drift_or_three_days_before_the_end():
    days = [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(10)]
    assert choose_test_day(days, None) == dt.date(2026, 11, 7)
    assert choose_test_day(days[:6], None) == dt.date(2026, 11, 4)  # keeps 4 days to train on
    assert choose_test_day(days, dt.date(2026, 11, 9)) == dt.date(2026, 11, 8)
    assert choose_test_day(days, dt.date(2026, 12, 1)) == dt.date(2026, 11, 7)  # drift after
    with pytest.raises(ConfigError, match="fewer than 4 days"):
        choose_test_day(days, dt.date(2026, 11, 4))
    window = training_windows(days[0], dt.date(2026, 11, 7))
    assert window["conversion_training_set"]["config"] == {
        "train_days": 5,
        "test_day": "2026-11-07",
    }
    assert window["recommender_training_set"]["config"] == {
        "train_days": 5,
        "end_day": "2026-11-07",
    }


def test_demo_with_too_early_a_drift_fails_before_the_marts(settings):
    flags = ["--days", "6", "--sessions-per-day", "10", "--start", "2026-11-01"]
    done = skiff("demo", *flags, "--drift-from", "2026-11-03")
    assert done.returncode == 2
    assert "--drift-from 2026-11-03 leaves fewer than 4 days" in done.stderr
    assert "materializing" not in done.stdout
    assert not list((settings.dagster_home / "history" / "runs").glob("*.db"))


def test_evaluate_recs_on_a_users_session_files(settings, tmp_path):
    rows = ["SessionId\tItemId\tTime"]
    for s in range(60):  # every session views a, b, c in order: POP and kNN can learn it
        rows += [f"{s}\t{item}\t{1_767_571_200 + s * 100 + i}" for i, item in enumerate("abc")]
    train, test = tmp_path / "train.tsv", tmp_path / "test.tsv"
    train.write_text("\n".join(rows[: 1 + 50 * 3]) + "\n")
    test.write_text("\n".join([rows[0], *rows[1 + 50 * 3 :]]) + "\n")
    done = skiff(
        "evaluate-recs",
        "--train",
        str(train),
        "--test",
        str(test),
        "--models",
        "pop,sknn",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = {row["model"]: row for row in json.loads(done.stdout)}
    assert set(result) == {"pop", "sknn"}
    assert result["sknn"]["hr_at_20"] == 1.0  # 3 items: every next item is in any top-20
    assert result["pop"]["predictions"] == 10 * 2
    unknown = skiff("evaluate-recs", "--train", str(train), "--test", str(test), "--models", "x")
    assert unknown.returncode == 2 and "unknown model" in unknown.stderr


@pytest.mark.skipif(not DIGINETICA.exists(), reason="../shared/data/diginetica is absent")
def test_import_diginetica_sample_into_landing_days(settings):
    done = skiff("import", "--format", "diginetica", str(DIGINETICA))
    assert done.returncode == 0, done.stderr
    assert "skiff run --start" in done.stdout
    days = sorted(p.name for p in settings.landing.iterdir() if p.is_dir())
    assert days and all((settings.landing / d / "browsing_events.csv").exists() for d in days)
