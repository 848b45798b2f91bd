"""The first hour, as a user spends it: `skiff run`, `skiff train`, `skiff score` and
`skiff monitor` on marts of their own (real processes, one SKIFF_HOME), then `skiff ui` on that
state, looked at in a real browser (Debian's Chromium driven by Playwright): the lineage, an
asset's page and its report link, failing on a dead link, a blank page or a console error."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
from pathlib import Path

import httpx
import pytest
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
    }
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
        config = root / "small.json"
        config.write_text(json.dumps(SMALL))
        out["train"] = skiff("train", "--test-day", TEST_DAY.isoformat(), "--config", str(config))
        out["score"] = skiff("score")
        out["monitor"] = skiff("monitor", "--start", WATCHED[0].isoformat())
        yield out, root


def test_train_score_monitor_on_the_marts(state):
    out, _ = state
    refused = out["refused_train"]
    assert refused.returncode == 2 and "skiff run --start" in refused.stderr
    _ok(out["run"])
    assert out["refused_score"].returncode == 2 and "skiff train" in out["refused_score"].stderr
    assert out["bad_config"].returncode == 2 and "ops:" in out["bad_config"].stderr

    trained = _ok(out["train"])
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
    assert jobs.count("monitor_days") == len(WATCHED)
    origins = {r.remote_job_origin for r in runs}
    assert {o and o.repository_origin.get_label() for o in origins} == {"__repository__@skiff"}


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
