"""The first hour, as a user spends it: `skiff run`, `skiff train`, `skiff score` and
`skiff monitor` on marts of their own (real processes, one SKIFF_HOME), then `skiff ui` on that
state, looked at in a real browser (Debian's Chromium driven by Playwright): the lineage, an
asset's page and its report link, failing on a dead link, a blank page or a console error."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from dagster import DagsterInstance

from ml.synthetic import GeneratorConfig, generate
from skiff.settings import ensure_home, load_settings
from tests.conftest import AUTOMATION_VARIABLES
from tests.servers import free_port, running
from tests.test_cli import skiff

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

START = dt.date(2026, 1, 5)
CONFIG = GeneratorConfig(days=6, sessions_per_day=500, seed=11, start=START)
DAYS = [START + dt.timedelta(days=i) for i in range(CONFIG.days)]
TEST_DAY = DAYS[3]
WATCHED = DAYS[4:]
SMALL = {  # small models: this is about the commands, not the models
    "ops": {
        "conversion_model_hgb": {"config": {"max_iter": 20}},
        "conversion_model_gru": {"config": {"epochs": 1, "hidden": 8}},
        "recommender_candidate_gru": {"config": {"params_json": json.dumps({"epochs": 1})}},
        # no PR AUC beats logistic regression's by 1: the gate refuses the chosen candidate,
        # whatever it is; logistic regression (past the majority baseline) becomes champion
        "conversion_evaluation": {"config": {"pr_auc_margin": 1.0}},
    }
}
# Training windows its steps refuse at once (no training day; no validation day): two failed
# steps, and everything after them skipped.
BROKEN = {
    "ops": {
        "conversion_training_set": {"config": {"train_days": 0}},
        "recommender_training_set": {"config": {"validation_days": 0}},
    }
}
# Monitoring's thresholds: every score drift is past WARN (a normed Wasserstein distance above
# 0), and past ERROR too in the second.
WARN_ONLY = {
    "ops": {"conversion_prediction_drift": {"config": {"warn_score": 0.0, "error_score": 1e6}}}
}
ERROR = {
    "ops": {"conversion_prediction_drift": {"config": {"warn_score": 0.0, "error_score": 0.0}}}
}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The flags this machine's closed network needs (no background fetches of Google's hosts).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _ok(done) -> str:
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """A SKIFF_HOME the commands built, with every command's output; report links point at a
    free port (SKIFF_REPORTS_URL), which `skiff ui` then serves."""
    root = tmp_path_factory.mktemp("first-hour")
    reports_port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKIFF_HOME", str(root / "skiff"))
        patch.setenv("SKIFF_ENV", "local")
        patch.setenv("SKIFF_REPORTS_URL", f"http://127.0.0.1:{reports_port}/reports")
        cleared = ("DAGSTER_HOME", "SKIFF_DAGSTER_HOME", "SKIFF_ARTIFACTS_URL", "SKIFF_EXECUTOR")
        for name in (*cleared, *(v for v in AUTOMATION_VARIABLES if v != "SKIFF_REPORTS_URL")):
            patch.delenv(name, raising=False)
        settings = ensure_home(load_settings())
        out = {"refused_train": skiff("train")}
        generate(settings.landing, CONFIG)
        out["run"] = skiff("run", "--start", DAYS[0].isoformat(), "--end", DAYS[-1].isoformat())
        out["refused_score"] = skiff("score")
        bad = root / "bad.yaml"
        bad.write_text("conversion_model_hgb: {max_iter: 3}\n")
        out["bad_config"] = skiff("train", "--config", str(bad))
        files = {}
        for name, config in (("small", SMALL), ("broken", BROKEN), ("warn", WARN_ONLY)):
            files[name] = root / f"{name}.json"
            files[name].write_text(json.dumps(config))
        files["error"] = root / "error.yaml"  # YAML, as the Launchpad shows it
        files["error"].write_text(yaml.safe_dump(ERROR))
        test_day = TEST_DAY.isoformat()
        out["train"] = skiff("train", "--test-day", test_day, "--config", str(files["small"]))
        out["train_failed"] = skiff(
            "train", "--test-day", test_day, "--config", str(files["broken"])
        )
        out["score"] = skiff("score")
        out["monitor"] = skiff(
            "monitor", "--start", WATCHED[0].isoformat(), "--config", str(files["warn"])
        )
        out["monitor_error"] = skiff(
            "monitor", "--start", test_day, "--end", test_day, "--config", str(files["error"])
        )
        yield out, root


def test_train_score_monitor_on_the_marts(state):
    out, _ = state
    refused = out["refused_train"]
    assert refused.returncode == 2 and "skiff run --start" in refused.stderr
    _ok(out["run"])
    assert out["refused_score"].returncode == 2 and "skiff train" in out["refused_score"].stderr
    assert out["bad_config"].returncode == 2 and "ops:" in out["bad_config"].stderr

    trained = _ok(out["train"])  # a gate refused the chosen candidate (SMALL): told, exit 0
    assert "check conversion_evaluation:beats_logistic_pr_auc FAILED" in trained
    assert f"test day {TEST_DAY}" in trained
    assert "conversion leaderboard" in trained and "recommender leaderboard" in trained
    assert "conversion: champion " in trained and "recommender: champion " in trained

    scored = _ok(out["score"])
    assert f"scoring {DAYS[0]} .. {DAYS[-1]}" in scored
    assert "materialized conversion_predictions" in scored

    monitored = _ok(out["monitor"])
    assert f"monitoring {WATCHED[0]} .. {WATCHED[-1]}" in monitored
    table = monitored.split("monitoring (reports:", 1)[1]
    assert all(day.isoformat() in table for day in WATCHED)

    # each command's runs are the code location's own: the UI lists them under their jobs
    with DagsterInstance.get() as instance:
        runs = instance.get_runs()
    jobs = [run.job_name for run in runs]
    assert {"daily_refresh", "train_models", "score_days", "monitor_days"} <= set(jobs)
    assert jobs.count("monitor_days") == len(WATCHED) + 1  # + the ERROR config's day
    origins = {r.remote_job_origin for r in runs}
    assert {o and o.repository_origin.get_label() for o in origins} == {"__repository__@skiff"}


def test_a_failed_training_step_exits_1_and_names_the_step(state):
    """A gate's refusal exits 0 (above); a step that fails exits 1, named with its error, and
    no leaderboard of an earlier run is shown as if it were this one's."""
    out, _ = state
    failed = out["train_failed"]
    assert failed.returncode == 1, failed.stdout[-4000:] + failed.stderr[-4000:]
    said = failed.stdout
    assert "step conversion_training_set failed:" in said and "train_days must be" in said
    assert "step recommender_training_set failed:" in said and "validation_days" in said
    assert "training failed: a step failed (above)" in said
    assert "leaderboard" not in said
    assert "conversion: champion " in said  # the roles are as the training before left them


def _by_day(monitored: str) -> dict[str, list[str]]:
    """What `skiff monitor` printed under each day's `YYYY-MM-DD:` line, and its table's row."""
    runs, table = monitored.split("\nmonitoring (reports:", 1)
    said: dict[str, list[str]] = {}
    for line in runs.splitlines():
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}:", line):
            day = line[:-1]
            said[day] = []
        elif said and line.strip():
            said[day].append(line.strip())
    for line in table.splitlines():
        if line[:10] in said:
            said[line[:10]].append(f"row: {line}")
    return said


def test_monitor_prints_warned_checks_and_exits_0_and_exits_1_on_a_failed_error_check(state):
    """The same real runs, two configurations of monitoring's thresholds: past WARN only, the
    checks are printed as warned and the command exits 0; past ERROR, printed as FAILED, 1."""
    out, _ = state
    warned = _by_day(_ok(out["monitor"]))  # WARN_ONLY
    assert list(warned) == [day.isoformat() for day in WATCHED]
    for day, lines in warned.items():
        assert "check conversion_prediction_drift:prediction_drift warned" in lines, (day, lines)
        assert not [line for line in lines if "FAILED" in line or "failed" in line], lines
        assert lines[-1].split()[-1] == "warn", lines  # the table's severity

    failed = out["monitor_error"]
    assert failed.returncode == 1, failed.stdout[-4000:] + failed.stderr[-4000:]
    (lines,) = _by_day(failed.stdout).values()
    assert "check conversion_prediction_drift:prediction_drift FAILED" in lines, lines
    assert f"{TEST_DAY} failed: an ERROR check failed (above)" in lines
    assert lines[-1].split()[-1] == "error", lines


def _browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    return sync_playwright()


def test_the_ui_in_a_browser_lineage_asset_page_and_report_link(state):
    out, root = state
    _ok(out["monitor"])
    port = free_port()
    argv = [str(Path(sys.executable).parent / "skiff"), "ui", "--port", str(port)]
    ui = f"http://127.0.0.1:{port}"
    with running(argv, root / "ui.log", f"{ui}/server_info"), _browser() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on(
            "response",
            lambda r: r.status >= 400 and errors.append(f"HTTP {r.status}: {r.request.url}"),
        )

        # the global lineage draws a node per group, landing to monitoring
        page.goto(f"{ui}/asset-groups", wait_until="networkidle")
        page.get_by_text("monitoring", exact=True).first.wait_for(timeout=60_000)
        for group in ("ingestion", "staging", "marts", "conversion", "monitoring"):
            # once in the sidebar's tree, once as a node of the graph: the graph is drawn
            assert page.get_by_text(group, exact=True).count() >= 2, group
        page.screenshot(path=str(root / "lineage.png"))

        # a monitored day's page: its latest materialization's metadata, the report link in it
        asset, day = "conversion_feature_drift", WATCHED[-1].isoformat()
        page.goto(f"{ui}/assets/{asset}?view=partitions&partition={day}", wait_until="networkidle")
        page.get_by_text("Latest materialization").first.wait_for(timeout=60_000)
        page.screenshot(path=str(root / "asset.png"), full_page=True)
        links = {
            href
            for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
            if "/reports/" in href
        }
        assert links, f"no report link on the page of {asset}"
        for href in links:
            answer = httpx.get(href, timeout=30)
            assert answer.status_code == 200, f"dead report link {href}: {answer.status_code}"
        report = sorted(links)[-1]
        page.goto(report, wait_until="load")
        assert asset in page.content() and WATCHED[-1].isoformat() in report
        page.screenshot(path=str(root / "report.png"))
        browser.close()
    assert errors == [], "\n".join(errors)
