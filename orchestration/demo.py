"""The demo's steps after the marts are built, each a run on the persistent instance.

`skiff demo` calls `run_models`: train on a window that ends at the test day, score every day
with the champions, monitor the days after the test day, then evaluate the drift sensor once and
run the retraining it requests, as its daemon would. Each step is also callable on its own.
"""

from __future__ import annotations

import datetime as dt

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, RunRequest, build_sensor_context

from ml.monitoring import worst
from ml.registry import ArtifactError, Registry, published_copy
from orchestration.definitions import (
    MONITOR_DAYS,
    OFFLINE_VS_ONLINE,
    SCORE_DAYS,
    TRAIN_MODELS,
    build_definitions,
)
from orchestration.recommendation import offline_online
from orchestration.reports import read_report, report_location
from orchestration.runs import run_job, run_requested
from skiff.settings import ConfigError, Settings

# A training window, a validation day and a test day at the least.
MIN_TRAINING_DAYS = 4
MONITORED_DAYS = 3
MAX_TRAIN_DAYS = 14
DRIFT_SENSOR = "drift_retrain_sensor"
MONITORING_COLUMNS = (
    ("conversion_feature_drift", "drift_share", "input drift share", "{:.2f}"),
    ("conversion_prediction_drift", "drift_score", "score drift", "{:.3f}"),
    ("conversion_quality", "roc_auc", "ROC AUC", "{:.3f}"),
    ("conversion_quality", "calibration_ratio", "pred/obs rate", "{:.2f}"),
    ("recommender_monitoring", "hr_at_20", "HR@20", "{:.3f}"),
    ("recommender_monitoring", "unseen_request_share", "unseen requests", "{:.1%}"),
)


def choose_test_day(days: list[dt.date], drift_from: dt.date | None) -> dt.date:
    """The last day the demo trains on: the day before the drift, or a few days before the
    end, so that the days after it are monitored against the champion. A drift too early to
    leave MIN_TRAINING_DAYS before it is a ConfigError."""
    if drift_from is not None and days[0] < drift_from <= days[-1]:
        last = drift_from - dt.timedelta(days=1)
        if (last - days[0]).days + 1 < MIN_TRAINING_DAYS:
            raise ConfigError(
                f"--drift-from {drift_from} leaves fewer than {MIN_TRAINING_DAYS} days "
                "before it to train on: move it later or start earlier"
            )
        return last
    return days[-1] - dt.timedelta(days=min(MONITORED_DAYS, len(days) - MIN_TRAINING_DAYS))


def champion_choices(bad_challenger: bool) -> dict:
    """How the demo's first champions are chosen. By default each problem starts on its
    baseline (POP, logistic regression) and the best model that passes the offline gates is
    admitted as challenger, so a known-better model earns its traffic. `bad_challenger`: the
    best recommender becomes champion at once and POP is admitted as challenger by override,
    so the ramp has a worse model to roll back."""
    if bad_challenger:
        recommender = {"bootstrap": "best", "challenger": "pop"}
    else:
        recommender = {"bootstrap": "baseline"}
    return {
        "conversion_champion": {"config": {"bootstrap": "baseline"}},
        "recommender_champion": {"config": recommender},
    }


def training_windows(first: dt.date, last: dt.date) -> dict:
    """Run config of both training sets for a window from `first` that ends at test day `last`
    (the day before it validates)."""
    train_days = min(MAX_TRAIN_DAYS, (last - first).days - 1)
    return {
        "conversion_training_set": {
            "config": {"train_days": train_days, "test_day": last.isoformat()}
        },
        "recommender_training_set": {
            "config": {"train_days": train_days, "end_day": last.isoformat()}
        },
    }


def train(settings: Settings, first: dt.date, last: dt.date, bad_challenger: bool = False) -> bool:
    """Train, evaluate and gate every candidate on days `first` .. test day `last`, choose the
    first champions and admit the challengers (one run of the train job)."""
    ops = {**training_windows(first, last), **champion_choices(bad_challenger)}
    return run_job(settings, TRAIN_MODELS, ops=ops)


def champions_published(settings: Settings) -> bool:
    """Whether both problems have a published champion (scoring needs them)."""
    for problem in ("conversion", "recommender"):
        try:
            with published_copy(settings.published, problem):
                pass  # verified (a remote copy is removed at once)
        except ArtifactError:
            return False
    return True


def score(settings: Settings, first: dt.date, last: dt.date) -> bool:
    """The champions' predictions for days `first` .. `last` (one run of the scoring job)."""
    return run_job(settings, SCORE_DAYS, first, last)


def monitor(settings: Settings, days: list[dt.date]) -> bool:
    """Monitor each of `days` against the champions (a run of the monitoring job per day)."""
    return all(run_job(settings, MONITOR_DAYS, partition=day) for day in days)


def monitoring_summary(settings: Settings, days: list[dt.date]) -> str:
    """One line per monitored day from the monitoring assets' latest materializations."""
    header = ["day", *(label for _, _, label, _ in MONITORING_COLUMNS), "severity"]
    rows = []
    with DagsterInstance.get() as instance:
        for day in days:
            row, severities = [day.isoformat()], []
            cache: dict[str, dict] = {}
            for asset_name, key, _, fmt in MONITORING_COLUMNS:
                if asset_name not in cache:
                    records = instance.fetch_materializations(
                        AssetRecordsFilter(
                            asset_key=AssetKey(asset_name), asset_partitions=[day.isoformat()]
                        ),
                        limit=1,
                    ).records
                    meta = records[0].asset_materialization.metadata if records else {}
                    cache[asset_name] = {k: v.value for k, v in meta.items()}
                    severities.append(cache[asset_name].get("severity", "ok"))
                value = cache[asset_name].get(key)
                row.append(fmt.format(value) if isinstance(value, int | float) else "-")
            row.append(worst(*severities))
            rows.append(row)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    where = report_location(settings, "monitoring")
    return f"monitoring (reports: {where}/):\n" + "\n".join(lines)


def drift_requests(settings: Settings) -> list[RunRequest]:
    """What the drift sensor asks for now: one evaluation of it on the persistent instance."""
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def(DRIFT_SENSOR)
    # Calling a sensor on a built context is Dagster's public way to evaluate it; the daemon's
    # own tick evaluation is internal, and the tags it adds are added by `run_requested`.
    with DagsterInstance.get() as instance:
        result = sensor(build_sensor_context(instance=instance, definitions=defs))
    requests = result if isinstance(result, list) else [result]  # or a SkipReason
    return [r for r in requests if isinstance(r, RunRequest)]


def retrain(settings: Settings, request: RunRequest) -> bool:
    """Run a retraining the drift sensor requested, as the sensor's daemon would launch it."""
    return run_requested(settings, request, DRIFT_SENSOR)


def champion_line(settings: Settings, job_name: str) -> str:
    """What the retraining job `job_name` did to its problem's roles, in one line: a model
    admitted as challenger (it then ramps on live traffic), or nothing changed."""
    problem = "conversion" if job_name.endswith("conversion") else "recommender"
    registry = Registry(settings.registry)
    history = registry.history(problem)
    last = history[-1] if history else None
    if last and last["decided_by"] in ("offline gates", "bootstrap"):
        return f"{problem} {last['role']} now {last['version']}: {last['reason']}"
    champion = registry.role(problem, "champion")
    return f"{problem} roles unchanged (champion {champion.version if champion else 'none'})"


def run_models(
    settings: Settings,
    days: list[dt.date],
    drift_from: dt.date | None,
    no_retrain: bool,
    bad_challenger: bool = False,
) -> bool:
    """The demo after the marts: train up to the test day (first champions and challengers:
    `champion_choices`), score every day, monitor the days after it and run the retraining the
    drift sensor asks for (only print it with `no_retrain`). False when a run failed."""
    first, last = days[0], days[-1]
    until = choose_test_day(days, drift_from)
    print(
        f"training on {first} .. {until} (test day {until}), evaluating, choosing the first "
        "champions and admitting challengers (one Dagster run)...",
        flush=True,
    )
    if not train(settings, first, until, bad_challenger):
        return False
    if not champions_published(settings):
        print("no champion for both problems (their gates did not pass): scoring skipped")
        return True
    print(f"scoring {first} .. {last} with the champion (one Dagster run)...", flush=True)
    if not score(settings, first, last):
        return False
    watched = [d for d in days if d > until]
    if not watched:
        return True
    print(f"monitoring {watched[0]} .. {watched[-1]} against the champions (a run per day)...")
    if not monitor(settings, watched):
        return False
    print("\n" + monitoring_summary(settings, watched))
    for request in drift_requests(settings):
        print(
            f"\nretraining requested by {DRIFT_SENSOR}: job {request.job_name}, "
            f"drift since {request.tags['skiff/drift_first_day']} "
            f"({request.tags['skiff/drift_asset']}: {request.tags['skiff/drift_scores']})"
        )
        if no_retrain:
            print(f"  not run (--no-retrain): turn on {DRIFT_SENSOR} in the UI to run it")
            continue
        print("  running it as the sensor's run would (one Dagster run)...", flush=True)
        if not retrain(settings, request):
            return False
        print("  " + champion_line(settings, request.job_name))
    return True


def offline_vs_online(settings: Settings, seed: int, products: int, regime: str) -> bool:
    """The offline-vs-online table of the latest recommender candidates on the data's world
    (the generator's seed and catalogue), printed. False when the run failed."""
    print(
        "\noffline vs online: each recommender's offline metrics beside replay, interleaving, "
        "A/B and the simulator's truth (one Dagster run)...",
        flush=True,
    )
    # fewer simulated sessions than the asset's defaults (4,000 logged, 2,000 a run): a
    # demo minute, not four; the numbers are noisier (the table prints their intervals)
    world = {
        "world_seed": seed,
        "world_products": products,
        "regime": regime,
        "logged_sessions": 3000,
        "online_sessions": 1000,
    }
    ops = {offline_online.ASSET: {"config": world}}
    if not run_job(settings, OFFLINE_VS_ONLINE, ops=ops):
        return False
    report = read_report(settings, offline_online.REPORT)
    if report is None:
        print(f"no report at {report_location(settings, offline_online.REPORT)}")
        return False
    print(report.split("\n", 2)[-1].strip())
    return True


def leaderboards(settings: Settings) -> str:
    """Both problems' leaderboards from the last training run (empty when none was written)."""
    parts = []
    for problem in ("conversion", "recommender"):
        board = read_report(settings, f"{problem}/leaderboard.md")
        if board is not None:
            parts.append(
                f"\n{problem} leaderboard (chosen on the validation day(s), reported on the "
                "test day(s)):\n\n" + board.strip()
            )
    return "\n".join(parts)
