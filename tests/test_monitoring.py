"""Monitoring and automation: drift found on the right day and turned into exactly one
retraining, no false alarm on stable weeks, the nightly schedule's partition, the landing and
run-failure sensors — on real Dagster instances, real DuckDB files and real Evidently reports."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pandas as pd
import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    build_run_status_sensor_context,
    build_schedule_context,
    build_sensor_context,
)

from ml import release
from ml.monitoring import (
    CATEGORICAL_THRESHOLD,
    NUMERICAL_THRESHOLD,
    data_drift,
    drift_episode,
    grade,
    recommender_day,
)
from ml.recommend.behavior import GATES
from ml.registry import Registry
from ml.synthetic import GeneratorConfig, generate
from orchestration.automation import previous_day
from orchestration.definitions import (
    MONITOR_DAYS,
    NIGHTLY,
    SCORE_DAYS,
    TRAIN_MODELS,
    build_definitions,
)
from orchestration.monitoring.config import (
    FEATURE_DRIFT,
    PREDICTION_DRIFT,
    QUALITY,
    RECOMMENDER,
    WATCHES,
    FeatureDriftConfig,
    PredictionDriftConfig,
    QualityConfig,
    RecommenderMonitoringConfig,
)
from orchestration.monitoring.sensors import RUN_KEY_TAG
from orchestration.runs import run_days
from skiff.settings import ensure_home, load_settings
from tests.conftest import AUTOMATION_VARIABLES

START = dt.date(2026, 1, 5)
# Small models: the test is about the loop, not about model quality. On 700 sessions a day
# logistic regression wins the conversion test day, so the conversion gates are opened here to
# give the loop a champion; tests/test_conversion_assets.py runs them at their defaults and
# shows one failing with nothing promoted.
SMALL_MODELS = {
    "conversion_model_hgb": {"max_iter": 20},
    "conversion_model_gru": {"epochs": 1, "hidden": 8},
    "conversion_evaluation": {"pr_auc_margin": -1.0, "max_calibration_error": 1.0},
    "recommender_candidate_gru": {"params_json": json.dumps({"epochs": 2})},
}


def _days(first: dt.date, n: int) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range(n)]


def _ops(**configs: dict) -> dict:
    return {"ops": {name: {"config": config} for name, config in configs.items()}}


def _execute(defs, job: str, run_config: dict, partition_key: str | None = None, tags=None):
    with DagsterInstance.get() as instance:
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance,
            run_config=run_config,
            partition_key=partition_key,
            tags=tags,
            raise_on_error=False,
        )
    failures = [e.step_failure_data.error.message for e in result.all_events if e.is_step_failure]
    assert result.success, f"{job} failed: {failures}"
    return result


def _train(defs, test_day: dt.date, train_days: int) -> None:
    config = {
        **SMALL_MODELS,
        "conversion_training_set": {"train_days": train_days, "test_day": test_day.isoformat()},
        "recommender_training_set": {"train_days": train_days, "end_day": test_day.isoformat()},
    }
    _execute(defs, TRAIN_MODELS, _ops(**config))


def _sensor_requests(defs, name: str = "drift_retrain_sensor"):
    sensor = defs.resolve_sensor_def(name)
    with DagsterInstance.get() as instance:
        context = build_sensor_context(instance=instance, definitions=defs)
        result = sensor.evaluate_tick(context)
    return result.run_requests or []


def _recorded(day: dt.date) -> dict[str, dict]:
    """What each monitoring asset recorded for `day` (its latest materialization's metadata)."""
    out = {}
    with DagsterInstance.get() as instance:
        for name in WATCHES:
            records = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(name), asset_partitions=[day.isoformat()]),
                limit=1,
            ).records
            if records:
                metadata = records[0].asset_materialization.metadata
                out[name] = {key: value.value for key, value in metadata.items()}
    return out


def _severities(day: dt.date) -> dict[str, str]:
    return {name: metadata["severity"] for name, metadata in _recorded(day).items()}


# --- pure rules -------------------------------------------------------------------------------


def test_drift_episode_needs_consecutive_error_days():
    d = _days(START, 6)
    sev = {d[0]: "error", d[1]: "warn", d[2]: "error", d[3]: "error", d[4]: "error"}
    assert drift_episode(sev, d[0], 1) == d[0]
    assert drift_episode(sev, d[0], 2) is None  # followed by a warn day
    assert drift_episode(sev, d[3], 3) is None  # only two days so far
    assert drift_episode(sev, d[4], 3) == d[2]  # the episode's first day, not the last
    assert drift_episode(sev, d[1], 1) is None  # not at error
    assert drift_episode({**sev, d[5]: "error"}, d[5], 3) == d[2]  # same episode, same key
    with pytest.raises(ValueError, match="persistence"):
        drift_episode(sev, d[0], 0)


def test_grade_both_directions():
    assert grade(0.05, 0.1, 0.25) == "ok"
    assert grade(0.2, 0.1, 0.25) == "warn"
    assert grade(0.3, 0.1, 0.25) == "error"
    assert grade(0.5, 0.4, 0.2, higher_is_worse=False) == "ok"
    assert grade(0.3, 0.4, 0.2, higher_is_worse=False) == "warn"
    assert grade(0.1, 0.4, 0.2, higher_is_worse=False) == "error"
    assert grade(float("nan"), 0.1, 0.2) == "ok"


def test_data_drift_finds_the_moved_column_and_writes_html(tmp_path):
    rng = np.random.default_rng(0)
    reference = pd.DataFrame(
        {
            "stable": rng.normal(size=4000),
            "moved": rng.normal(size=4000),
            "category": rng.choice(["a", "b", "c"], 4000, p=[0.6, 0.3, 0.1]),
        }
    )
    current = pd.DataFrame(
        {
            "stable": rng.normal(size=300),  # small: the threshold means the same here
            "moved": rng.normal(0.8, size=300),
            "category": rng.choice(["a", "b", "c"], 300, p=[0.6, 0.3, 0.1]),
        }
    )
    drift = data_drift(
        reference,
        current,
        numerical=["stable", "moved"],
        categorical=["category"],
        drift_share=0.5,
    )
    by_column = drift.columns.set_index("column")
    assert by_column.loc["moved", "drifted"]
    assert not by_column.loc["stable", "drifted"]
    assert not by_column.loc["category", "drifted"]
    assert drift.columns.iloc[0]["column"] == "moved"  # most drifted first
    assert drift.n_drifted == 1 and drift.drift_share == pytest.approx(1 / 3)
    assert "Wasserstein" in by_column.loc["moved", "method"]
    html = drift.save_html(tmp_path / "r" / "drift.html")
    assert html.stat().st_size > 10_000 and "moved" in html.read_text(errors="ignore")
    with pytest.raises(ValueError, match="lacks the columns"):
        data_drift(reference, current.drop(columns="moved"), numerical=["moved"], drift_share=0.5)


def test_recommender_day_on_a_sample_states_its_error_and_the_error_is_right():
    """The recommender is evaluated on a seeded sample of the day's sessions; the standard
    error it records matches the spread of HR@20 over many samples. Hits come in whole
    sessions here (a session of one repeated item is all hits, one of distinct items all
    misses), so an error that treats predictions as independent would be far too small."""
    rng = np.random.default_rng(0)
    sessions = []
    for i in range(3000):
        length = int(rng.integers(2, 12))
        repeat = rng.random() < 0.3
        sessions.append([f"r{i}"] * length if repeat else [f"s{i}-{t}" for t in range(length)])
    known = {item for s in sessions for item in s}
    popularity = dict.fromkeys(known, 1)
    asked: list[int] = []

    def again(prefixes, k):  # recommends the last item: a hit exactly on repeats
        asked.append(len(prefixes))
        return [[p[-1]] for p in prefixes]

    day = recommender_day(sessions, again, known, popularity)
    whole = day.metrics["hr_at_20"]
    assert day.metrics["hr_at_20_se"] == 0  # every session evaluated: no sampling error
    assert day.metrics["sampled_sessions"] == day.metrics["sessions"] == 3000
    asked.clear()
    rates, errors = [], []
    for seed in range(200):
        m = recommender_day(sessions, again, known, popularity, max_sessions=300, seed=seed).metrics
        rates.append(m["hr_at_20"])
        errors.append(m["hr_at_20_se"])
        assert m["sampled_sessions"] == 300 and m["sessions"] == 3000
        assert m["hr_at_20_ci95_low"] < m["hr_at_20"] < m["hr_at_20_ci95_high"]
        # the shares count every request of the day, not only the sample's
        assert m["unseen_request_share"] == 0
    assert sum(asked) < 200 * 300 * 11 and max(asked) <= 300 * 11  # only sampled sessions asked
    assert np.mean(rates) == pytest.approx(whole, abs=0.01)
    assert np.mean(errors) == pytest.approx(np.std(rates), rel=0.2)
    same = recommender_day(sessions, again, known, popularity, max_sessions=300, seed=7)
    assert same.metrics["hr_at_20"] == rates[7]


# --- schedule and landing sensor --------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "tick", "expected"),
    [
        ("UTC", dt.datetime(2026, 3, 10, 3, 0, tzinfo=dt.UTC), dt.date(2026, 3, 9)),
        # 03:00 in Los Angeles is 10:00 or 11:00 UTC the same day
        ("America/Los_Angeles", "2026-03-10T03:00:00-07:00", dt.date(2026, 3, 9)),
        # 03:00 in Tokyo is 18:00 UTC the day before: the day that just ended is the 8th
        ("Asia/Tokyo", "2026-03-10T03:00:00+09:00", dt.date(2026, 3, 8)),
    ],
)
def test_nightly_schedule_targets_previous_day(settings, monkeypatch, zone, tick, expected):
    monkeypatch.setenv("SKIFF_TIMEZONE", zone)
    defs = build_definitions(load_settings())
    schedule = defs.resolve_schedule_def("nightly")
    assert schedule.execution_timezone == zone
    assert schedule.job_name == NIGHTLY
    when = dt.datetime.fromisoformat(tick) if isinstance(tick, str) else tick
    with DagsterInstance.ephemeral() as instance:
        context = build_schedule_context(
            instance=instance,
            scheduled_execution_time=when,
            repository_def=defs.get_repository_def(),
        )
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == expected.isoformat() == previous_day(when).isoformat()
    assert request.tags["skiff/trigger"] == "nightly"


def test_landing_sensor_runs_new_and_changed_days_once(settings):
    days = _days(START, 2)
    generate(settings.landing, GeneratorConfig(days=2, sessions_per_day=20, seed=3, start=START))
    old = dt.datetime(2026, 1, 1).timestamp()
    for folder in settings.landing.iterdir():
        for f in folder.glob("*.csv"):
            os.utime(f, (old, old))
    (settings.landing / "not-a-day").mkdir()
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def("landing_sensor")
    with DagsterInstance.get() as instance:
        first = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
        keys = sorted(r.partition_key for r in first.run_requests)
        assert keys == [d.isoformat() for d in days]
        assert all(r.tags["skiff/trigger"] == "landing" for r in first.run_requests)
        again = sensor.evaluate_tick(
            build_sensor_context(instance=instance, cursor=first.cursor, definitions=defs)
        )
        assert not again.run_requests  # nothing new
        # the second day is landed again (new files): it runs again, under a new run key
        newer = dt.datetime(2026, 1, 2).timestamp()
        for f in (settings.landing / days[1].isoformat()).glob("*.csv"):
            os.utime(f, (newer, newer))
        changed = sensor.evaluate_tick(
            build_sensor_context(instance=instance, cursor=again.cursor, definitions=defs)
        )
        (request,) = changed.run_requests
        assert request.partition_key == days[1].isoformat()
        assert request.run_key != next(
            r.run_key for r in first.run_requests if r.partition_key == days[1].isoformat()
        )


# --- run-failure alert ------------------------------------------------------------------------


def _webhook(status: int) -> type[BaseHTTPRequestHandler]:
    """A webhook server's handler that keeps each alert posted (`received`) and answers
    `status`."""

    class Hook(BaseHTTPRequestHandler):
        received: list[dict] = []

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            Hook.received.append(json.loads(body))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    return Hook


def _failed_nightly(defs, instance):
    """A nightly run with no landing folder, which fails at once (no retries for this
    failure), and its failure event."""
    result = defs.resolve_job_def(NIGHTLY).execute_in_process(
        instance=instance, partition_key=START.isoformat(), raise_on_error=False
    )
    assert not result.success
    return result, next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")


def _failure_context(instance, result, failure):
    return build_run_status_sensor_context(
        sensor_name="run_failure_alert",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()


def test_run_failure_alert_logs_and_posts_to_webhook(settings, monkeypatch, caplog):
    hook = _webhook(204)
    server = HTTPServer(("127.0.0.1", 0), hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SKIFF_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook")
    defs = build_definitions(load_settings())
    day = START
    with DagsterInstance.get() as instance:
        result, failure = _failed_nightly(defs, instance)
        context = _failure_context(instance, result, failure)
        with caplog.at_level("ERROR", logger="skiff.alerts"):
            defs.resolve_sensor_def("run_failure_alert")(context)
    server.shutdown()
    message = "\n".join(r.getMessage() for r in caplog.records if r.name == "skiff.alerts")
    assert f"job {NIGHTLY}" in message and result.run_id in message
    assert f"days {day}" in message
    assert "No landing folder" in message  # the failed step's own error
    (posted,) = hook.received
    assert posted["run_id"] == result.run_id and "No landing folder" in posted["text"]
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert not retries


def test_a_failed_webhook_post_is_reported_without_its_url(settings, monkeypatch, caplog, capsys):
    """The webhook URL holds a token (SKIFF_ALERT_WEBHOOK_URL); httpx's errors quote the URL,
    and httpx logs every request's URL at INFO. A post that fails, on a real server answering
    500 and on a port nothing listens on, is reported in the sensor's log by the exception's
    type and the HTTP status; a post that succeeds is not reported; and, with every logger at
    INFO, neither the URL nor its token is in any log line."""
    from orchestration.automation import build_failure_sensor
    from tests.servers import free_port

    refusing, accepting = _webhook(500), _webhook(204)
    servers = [HTTPServer(("127.0.0.1", 0), handler) for handler in (refusing, accepting)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    token = "T0KEN-5ecret-93f1c2"
    targets = {
        "answers 500": (f"http://127.0.0.1:{servers[0].server_port}/hooks/{token}", "HTTP 500"),
        "unreachable": (f"http://127.0.0.1:{free_port()}/hooks/{token}", "ConnectError"),
        "answers 204": (f"http://127.0.0.1:{servers[1].server_port}/hooks/{token}", None),
    }
    defs = build_definitions(load_settings())
    with DagsterInstance.get() as instance:
        result, failure = _failed_nightly(defs, instance)
        for what, (url, reported) in targets.items():
            monkeypatch.setenv("SKIFF_ALERT_WEBHOOK_URL", url)
            context = _failure_context(instance, result, failure)
            caplog.clear()
            context.log.addHandler(caplog.handler)  # the sensor's own log, as a tick records it
            with caplog.at_level("INFO"):  # the root logger too: httpx's request lines
                build_failure_sensor(load_settings())(context)
            logged = "\n".join(r.getMessage() for r in caplog.records)
            logged += capsys.readouterr().err  # the sensor log's console copy
            warning = [m for r in caplog.records if "could not post" in (m := r.getMessage())]
            if reported is None:
                assert not warning, (what, warning)
            else:
                assert warning and reported in warning[0], (what, warning)  # still reported
            assert result.run_id in logged  # the alert itself
            for secret in (url, url.split("://", 1)[1], f"/hooks/{token}", token):
                assert secret not in logged, (what, secret, logged)
    for server in servers:
        server.shutdown()
    # the 500 and the 204 came from servers that got the alert
    assert len(refusing.received) == len(accepting.received) == 1


# --- the loop ---------------------------------------------------------------------------------

# 17 days: two stable weeks, in which the champions train on days 0..7 and days 8..13 are
# monitored one by one (the false-alarm test); the world drifts from day 14 on and days 14..16
# run through the nightly schedule's runs (the scenario test). One world for both keeps the
# suite short.
WORLD = _days(START, 17)
DRIFT_FROM = WORLD[14]
STABLE = WORLD[8:14]
DRIFTED = WORLD[14:]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A SKIFF_HOME with the champions trained and the two stable weeks monitored, with the
    drift sensor's requests after each monitored day."""
    home = tmp_path_factory.mktemp("world") / "skiff"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKIFF_HOME", str(home))
        patch.setenv("SKIFF_ENV", "local")
        cleared = ("DAGSTER_HOME", "SKIFF_DAGSTER_HOME", "SKIFF_ARTIFACTS_URL")
        for name in (*cleared, *AUTOMATION_VARIABLES):
            patch.delenv(name, raising=False)
        settings = ensure_home(load_settings())
        generate(
            settings.landing,
            GeneratorConfig(
                days=len(WORLD), sessions_per_day=700, seed=11, start=START, drift_from=DRIFT_FROM
            ),
        )
        defs = build_definitions(settings)
        assert run_days(settings, WORLD[0], STABLE[-1])
        _train(defs, test_day=WORLD[7], train_days=5)
        _execute(
            defs,
            SCORE_DAYS,
            {},
            tags={
                "dagster/asset_partition_range_start": STABLE[0].isoformat(),
                "dagster/asset_partition_range_end": STABLE[-1].isoformat(),
            },
        )
        stable_requests = {}
        for day in STABLE:
            _execute(defs, MONITOR_DAYS, {}, partition_key=day.isoformat())
            stable_requests[day] = _sensor_requests(defs)
        yield settings, defs, stable_requests


@pytest.mark.slow
def test_stable_weeks_raise_no_false_alarm(world):
    settings, _, stable_requests = world
    assert all(not requests for requests in stable_requests.values()), stable_requests
    errors = {d: s for d in STABLE if "error" in (s := _severities(d)).values()}
    assert not errors
    assert set(_severities(STABLE[-1])) == set(WATCHES)  # every asset graded every day
    day = STABLE[-1]
    for name, metadata in _recorded(day).items():
        # the full report is saved, and linked from the materialization for the UI
        html = settings.reports / "monitoring" / name / f"{day}.html"
        assert html.stat().st_size > 100_000  # self-contained Evidently HTML
        assert metadata["report_path"] == str(html)
        assert metadata["report"] == f"http://127.0.0.1:3001/reports/monitoring/{name}/{day}.html"
        # what the Plots tab draws are numbers, not text
        assert isinstance(metadata["severity_level"], int)
    # the feature drift report states Skiff's ERROR share as Evidently's data-set threshold
    feature_report = (settings.reports / "monitoring" / FEATURE_DRIFT / f"{day}.html").read_text()
    assert "Dataset drift detection threshold is 0.2" in feature_report
    numbers = {
        FEATURE_DRIFT: ("drift_share", "drifted_columns", "max_column_score"),
        RECOMMENDER: ("hr_at_20", "mrr_at_20", "unseen_request_share", "popularity_bias"),
        "conversion_quality": ("roc_auc", "calibration_ratio", "observed_rate"),
        "conversion_prediction_drift": ("drift_score", "mean_probability"),
    }
    recorded = _recorded(day)
    for name, keys in numbers.items():
        for key in keys:
            value = recorded[name][key]
            assert isinstance(value, int | float) and value == value, (name, key, value)
    assert "| `" in recorded[FEATURE_DRIFT]["most_drifted"]  # the markdown table of columns
    # the references are cached once per champion version in the local store's cache
    champion = Registry(settings.registry).role("conversion", "champion").version
    recommender = Registry(settings.registry).role("recommender", "champion").version
    cached = sorted(p.name for p in (settings.cache_root / "monitoring" / "reference").iterdir())
    assert cached == sorted(
        [
            f"conversion-{champion}-holdout.parquet",
            f"conversion-{champion}-train.parquet",
            f"recommender-{recommender}.json",
            f"recommender-{recommender}.parquet",
        ]
    )


@pytest.mark.slow
def test_every_report_names_its_asset_day_version_and_skiffs_thresholds(world):
    """Each of the four reports opens with Skiff's banner: the asset, the day, the champion it
    graded against and Skiff's thresholds as configured (the run config's defaults here, as
    the stable days ran), even on a day with too few buyers to grade; Evidently's data-set line
    is stated at Skiff's share for the report, never at Evidently's default 0.5."""
    settings, _, _ = world
    day = STABLE[-1]
    registry = Registry(settings.registry)
    conversion = registry.role("conversion", "champion").version
    recommender = registry.role("recommender", "champion").version
    feature, prediction = FeatureDriftConfig(), PredictionDriftConfig()
    quality, recommending = QualityConfig(), RecommenderMonitoringConfig()
    expected = {  # asset: (version graded against, data-set share, Skiff's thresholds)
        FEATURE_DRIFT: (
            conversion,
            feature.error_drift_share,
            [
                f"warn &gt; {feature.warn_drift_share}, error &gt; {feature.error_drift_share}",
                f"Wasserstein (normed) &ge; {feature.numerical_threshold:g}",
                f"Jensen-Shannon &ge; {feature.categorical_threshold:g}",
            ],
        ),
        PREDICTION_DRIFT: (  # one column, the score: the data set drifts when it does
            conversion,
            1.0,
            [
                f"warn &gt; {prediction.warn_score}, error &gt; {prediction.error_score}",
                f"Wasserstein (normed) &ge; {prediction.warn_score:g}",
            ],
        ),
        QUALITY: (  # one column, the label
            conversion,
            1.0,
            [
                f"warn &gt; {quality.warn_auc_drop}, error &gt; {quality.error_auc_drop}",
                f"warn beyond {quality.warn_calibration_ratio}, error beyond "
                f"{quality.error_calibration_ratio}",
                f"Jensen-Shannon &ge; {CATEGORICAL_THRESHOLD:g}",
            ],
        ),
        RECOMMENDER: (
            recommender,
            recommending.drift_share,
            [
                f"warn &gt; {recommending.warn_hr_drop:.0%}, error &gt; "
                f"{recommending.error_hr_drop:.0%}",
                f"warn &gt; {recommending.warn_unseen_increase:.0%}, error &gt; "
                f"{recommending.error_unseen_increase:.0%}",
                f"Wasserstein (normed) &ge; {NUMERICAL_THRESHOLD:g}",
                f"Jensen-Shannon &ge; {CATEGORICAL_THRESHOLD:g}",
            ],
        ),
    }
    assert set(expected) == set(WATCHES)
    problems = []
    for name, (version, share, thresholds) in expected.items():
        page = (settings.reports / "monitoring" / name / f"{day}.html").read_text()
        banner = page[page.index('<div id="skiff-banner"') :]
        banner = banner[: banner.index("</div>")]
        wanted = [
            f"{name} &mdash; {day}",
            f"<code>{version}</code>",
            *thresholds,
            f"drifted columns reach a share of {share:g}",
        ]
        problems += [(name, "banner lacks", text) for text in wanted if text not in banner]
        if f"Dataset drift detection threshold is {share}" not in page:
            problems.append((name, "Evidently's line lacks the share", share))
        if share != 0.5 and "Dataset drift detection threshold is 0.5" in page:
            problems.append((name, "Evidently's default share", 0.5))
    assert not problems, "\n".join(" | ".join(map(str, p)) for p in problems)


@pytest.mark.slow
def test_drift_scenario_requests_exactly_one_retraining(world):
    settings, defs, stable_requests = world
    registry = Registry(settings.registry)
    champion_before = registry.role("recommender", "champion")
    conversion_before = registry.role("conversion", "champion")
    assert champion_before is not None and conversion_before is not None

    # the drifted days arrive one by one: each night the schedule's run, then the sensor
    schedule = defs.resolve_schedule_def("nightly")
    requested: dict[dt.date, list] = dict(stable_requests)
    for day in DRIFTED:
        tick = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(3), tzinfo=dt.UTC)
        with DagsterInstance.get() as instance:
            (run,) = schedule.evaluate_tick(
                build_schedule_context(
                    instance=instance,
                    scheduled_execution_time=tick,
                    repository_def=defs.get_repository_def(),
                )
            ).run_requests
        assert run.partition_key == day.isoformat()
        _execute(defs, NIGHTLY, {}, partition_key=run.partition_key, tags=run.tags)
        requested[day] = _sensor_requests(defs)
    severities = {day: _severities(day) for day in WORLD[8:]}
    # drift is found on the right day: the first day at ERROR, in every drifted day's inputs
    flagged = [d for d in WORLD[8:] if "error" in severities[d].values()]
    assert flagged == DRIFTED, severities
    assert severities[DRIFT_FROM][RECOMMENDER] == "error"
    for day in DRIFTED:
        inputs = _recorded(day)[FEATURE_DRIFT]
        assert inputs["severity"] != "ok" and inputs["most_drifted_column"] == "category_top"
    # exactly one retraining, requested when the episode reached three days
    assert [d for d, r in requested.items() if r] == [DRIFTED[2]], requested
    (request,) = requested[DRIFTED[2]]
    assert request.job_name == "retrain_recommender"
    assert request.run_key == f"drift-recommender-{DRIFT_FROM}"
    assert request.tags["skiff/drift_first_day"] == DRIFT_FROM.isoformat()
    assert request.tags["skiff/drift_day"] == DRIFTED[2].isoformat()
    assert request.tags["skiff/drift_asset"] == RECOMMENDER
    assert "unseen_requests=" in request.tags["skiff/drift_scores"]
    window = request.run_config["ops"]["recommender_training_set"]["config"]
    assert window["end_day"] == DRIFTED[2].isoformat()

    # run it as the daemon would, tagged with its run key
    run_config = {"ops": {**request.run_config["ops"]}}
    run_config["ops"]["recommender_candidate_gru"] = {
        "config": SMALL_MODELS["recommender_candidate_gru"]
    }
    result = _execute(
        defs, request.job_name, run_config, tags={**request.tags, RUN_KEY_TAG: request.run_key}
    )
    newest = registry.versions("recommender")[-1]
    assert newest.version != champion_before.version
    # the new candidates are trained on a window that includes post-drift days
    assert dt.date.fromisoformat(newest.training_window["train_end"]) >= DRIFT_FROM
    # the champion changes only through the gates
    checks = {
        e.check_name: e.passed
        for e in result.get_asset_check_evaluations()
        if e.asset_key == AssetKey("recommender_evaluation")
    }
    # retrained on post-drift days, the chosen candidate passes the gates and is admitted as
    # challenger against the champion, which could not know the new products; the champion
    # changes only when the ramp promotes it (tests/test_release_e2e.py) — here an operator
    # does what that promotion would
    assert all(checks[name] for name, gate in GATES.items() if gate.gating), checks
    challenger = registry.role("recommender", "challenger")
    assert challenger.training_window == newest.training_window
    assert registry.role("recommender", "champion").version == champion_before.version
    release.promote(registry, str(settings.published), "recommender", challenger.version, "ramp")
    champion_after = registry.role("recommender", "champion")
    assert champion_after.version == challenger.version != champion_before.version
    assert registry.role("conversion", "champion").version == conversion_before.version
    # the same episode is never requested again, even when its last day is monitored again
    _execute(defs, MONITOR_DAYS, {}, partition_key=DRIFTED[2].isoformat())
    assert _sensor_requests(defs) == []
    # recovery: the day that was at ERROR, graded again against the new champion, is not
    assert severities[DRIFTED[2]][RECOMMENDER] == "error"
    assert _recorded(DRIFTED[2])[RECOMMENDER]["champion_version"] == champion_after.version
    assert _severities(DRIFTED[2])[RECOMMENDER] != "error"
