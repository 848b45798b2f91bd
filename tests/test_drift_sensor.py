"""The drift sensor's attempts and cursor, on a real Dagster instance (the ephemeral one: its
run and event-log storages are SQLite in memory, the same queries as on disk, fast enough for a
thousand materializations). The monitored records are real runless materializations carrying
the metadata the monitoring assets record (severity, alerts); the retraining attempts are real
Dagster runs of two small jobs named like the retraining jobs, whose step records the
`*_champion` decision the way the real champion assets do (`kept` when the gates refuse). Time
is driven by the sensor's clock parameter, never by sleeping.
"""

import datetime as dt
import json
import time

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    Failure,
    OpExecutionContext,
    build_sensor_context,
    job,
    op,
)
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from orchestration.monitoring.config import FEATURE_DRIFT, QUALITY, RECOMMENDER
from orchestration.monitoring.sensors import RUN_KEY_TAG, build_drift_sensor
from skiff.settings import ConfigError, load_settings

D1 = dt.date(2026, 3, 2)
HOUR = 3600.0


def retrain_job(problem: str):
    """A job named like the problem's retraining job whose step records the champion
    decision (or fails, as a training step would)."""

    @op(name="gate", config_schema={"decision": str, "fail": bool})
    def gate(context: OpExecutionContext) -> None:
        if context.op_config["fail"]:
            raise Failure(description="training set is empty")
        if not context.op_config["decision"]:  # a run whose champion step did not run
            return
        context.log_event(
            AssetMaterialization(
                asset_key=f"{problem}_champion",
                metadata={"decision": context.op_config["decision"]},
            )
        )

    @job(name=f"retrain_{problem}")
    def retrain():
        gate()

    return retrain


retrain_conversion = retrain_job("conversion")
retrain_recommender = retrain_job("recommender")
JOBS = [retrain_conversion, retrain_recommender]
ORIGIN = RemoteJobOrigin(
    repository_origin=RemoteRepositoryOrigin(
        code_location_origin=InProcessCodeLocationOrigin(
            loadable_target_origin=LoadableTargetOrigin(python_file=__file__)
        ),
        repository_name="__repository__",
    ),
    job_name="retrain_recommender",
)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as instance:
        yield instance


def record(instance, asset: str, day: dt.date, severity: str) -> None:
    instance.report_runless_asset_event(
        AssetMaterialization(
            asset_key=asset,
            partition=day.isoformat(),
            metadata={"severity": severity, "alerts": f"{asset}={severity}"},
        )
    )


def drifted(instance, asset: str = RECOMMENDER, first: dt.date = D1, days: int = 3) -> None:
    for i in range(days):
        record(instance, asset, first + dt.timedelta(days=i), "error")


def tick(sensor, instance, cursor=None):
    result = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=cursor))
    return result.run_requests or [], result.cursor


def run_attempt(instance, request, *, fail=False, decision="admitted as challenger"):
    """The requested run, launched as the daemon would: tagged with the request's key."""
    job_def = {j.name: j for j in JOBS}[request.job_name]
    result = job_def.execute_in_process(
        instance=instance,
        run_config={"ops": {"gate": {"config": {"decision": decision, "fail": fail}}}},
        tags={**request.tags, RUN_KEY_TAG: request.run_key},
        raise_on_error=False,
    )
    assert result.success is not fail
    return result.run_id


def test_failed_retrain_is_requested_again_after_the_cooldown_never_while_in_flight(
    settings, instance
):
    clock = Clock()
    sensor = build_drift_sensor(settings, JOBS, clock=clock)
    drifted(instance)
    (first,), cursor = tick(sensor, instance)
    assert first.run_key == f"drift-recommender-{D1}"  # attempt 1 keeps the old key
    assert first.tags["skiff/drift_attempt"] == "1"
    assert first.tags["skiff/drift_day"] == (D1 + dt.timedelta(days=2)).isoformat()
    failed = run_attempt(instance, first, fail=True)

    # within the cool-down (default 24 h) nothing, even with no cursor (every record re-read)
    clock.now += 23 * HOUR
    assert tick(sensor, instance, cursor)[0] == []
    assert tick(sensor, instance)[0] == []
    # after it, attempt 2, though no new record arrived: the retry is driven by time
    clock.now += 2 * HOUR
    (second,), cursor = tick(sensor, instance, cursor)
    assert second.run_key == f"drift-recommender-{D1}-2"
    assert second.job_name == "retrain_recommender"
    assert second.tags["skiff/drift_attempt"] == "2"
    assert second.tags["skiff/drift_retry_of"] == failed
    assert f"run {failed} failed" in second.tags["skiff/drift_reason"]
    assert "24 h cool-down" in second.tags["skiff/drift_reason"]

    # attempt 2 queued, then started: never duplicated, however long it waits
    queued = instance.create_run_for_job(
        retrain_recommender,
        run_config={"ops": {"gate": {"config": {"decision": "kept", "fail": False}}}},
        tags={**second.tags, RUN_KEY_TAG: second.run_key},
        status=DagsterRunStatus.QUEUED,
        remote_job_origin=ORIGIN,  # a queued run names where the daemon will load it from
    )
    clock.now += 100 * HOUR
    assert tick(sensor, instance, cursor)[0] == []
    assert tick(sensor, instance)[0] == []
    instance.handle_run_event(
        queued.run_id,
        DagsterEvent(DagsterEventType.RUN_START.value, job_name="retrain_recommender"),
    )
    assert instance.get_run_by_id(queued.run_id).status == DagsterRunStatus.STARTED
    assert tick(sensor, instance, cursor)[0] == []
    assert tick(sensor, instance)[0] == []
    # it dies (its pod is evicted): attempt 3 once the cool-down from its end has passed
    instance.report_run_failed(instance.get_run_by_id(queued.run_id))
    ended = instance.get_run_record_by_id(queued.run_id).end_time
    clock.now = ended + 1 * HOUR
    assert tick(sensor, instance, cursor)[0] == []
    clock.now = ended + 25 * HOUR
    (third,), _ = tick(sensor, instance, cursor)
    assert third.run_key == f"drift-recommender-{D1}-3"
    assert third.tags["skiff/drift_retry_of"] == queued.run_id


def test_refused_by_its_gates_is_retried_an_admitted_one_settles_the_episode(
    settings, instance, monkeypatch
):
    """A retrain whose gates refuse is a *successful* run whose champion step decides `kept`:
    it is retried after the cool-down (here 6 h, from SKIFF_RETRAIN_COOLDOWN_HOURS); one whose
    champion step admitted a model is never requested again."""
    monkeypatch.setenv("SKIFF_RETRAIN_COOLDOWN_HOURS", "6")
    clock = Clock()
    sensor = build_drift_sensor(load_settings(), JOBS, clock=clock)
    drifted(instance)
    (first,), cursor = tick(sensor, instance)
    refused = run_attempt(instance, first, decision="kept")
    clock.now += 5 * HOUR
    assert tick(sensor, instance, cursor)[0] == []
    clock.now += 2 * HOUR
    # the drift lasts: one more day at error, so the retry's window ends there
    record(instance, RECOMMENDER, D1 + dt.timedelta(days=3), "error")
    (second,), cursor = tick(sensor, instance, cursor)
    assert second.run_key == f"drift-recommender-{D1}-2"
    assert second.tags["skiff/drift_retry_of"] == refused
    assert "gates admitted nothing (kept)" in second.tags["skiff/drift_reason"]
    assert second.tags["skiff/drift_day"] == (D1 + dt.timedelta(days=3)).isoformat()
    window = second.run_config["ops"]["recommender_training_set"]["config"]
    assert window["end_day"] == (D1 + dt.timedelta(days=3)).isoformat()

    run_attempt(instance, second, decision="admitted as challenger")
    record(instance, RECOMMENDER, D1 + dt.timedelta(days=4), "error")
    for hours in (7, 100, 1000):
        clock.now += hours * HOUR
        assert tick(sensor, instance, cursor)[0] == []
        assert tick(sensor, instance)[0] == []


def test_a_run_that_recorded_no_decision_did_not_adapt_and_is_retried(settings, instance):
    """A successful run whose champion step recorded no decision (skipped, deselected) admitted
    nothing: it does not settle the episode, and is retried after the cool-down."""
    clock = Clock()
    sensor = build_drift_sensor(load_settings(), JOBS, clock=clock)
    drifted(instance)
    (first,), cursor = tick(sensor, instance)
    silent = run_attempt(instance, first, decision="")
    assert tick(sensor, instance, cursor)[0] == []  # within the cool-down
    clock.now += 25 * HOUR
    record(instance, RECOMMENDER, D1 + dt.timedelta(days=3), "error")
    (second,), _ = tick(sensor, instance, cursor)
    assert second.run_key == f"drift-recommender-{D1}-2"
    assert second.tags["skiff/drift_retry_of"] == silent
    assert "recorded no recommender_champion decision" in second.tags["skiff/drift_reason"]


def test_retry_only_while_the_drift_lasts(settings, instance):
    """Two failed attempts: the recommender's episode has ended (its newest day is fine
    again), so it is not retried; the conversion's lasts, so it is."""
    clock = Clock()
    sensor = build_drift_sensor(settings, JOBS, clock=clock)
    drifted(instance, RECOMMENDER)
    drifted(instance, FEATURE_DRIFT)
    requests, cursor = tick(sensor, instance)
    assert sorted(r.job_name for r in requests) == ["retrain_conversion", "retrain_recommender"]
    for request in requests:
        run_attempt(instance, request, fail=True)
    record(instance, RECOMMENDER, D1 + dt.timedelta(days=3), "ok")
    record(instance, FEATURE_DRIFT, D1 + dt.timedelta(days=3), "error")
    clock.now += 48 * HOUR
    for tick_cursor in (cursor, None):
        (again,), _ = tick(sensor, instance, tick_cursor)
        assert again.run_key == f"drift-conversion-{D1}-2"
        assert again.tags["skiff/drift_asset"] == FEATURE_DRIFT


def test_a_cursor_per_asset_skips_no_record(settings, instance):
    """More new records of one asset than one query returns (1000 on main), with another
    asset's records interleaved after them: on main the shared cursor jumps to the other
    asset's newest id and the recommender's last records, a past drift episode, are never
    read. Now every record is read, and each asset keeps its own id."""
    sensor = build_drift_sensor(settings, JOBS, clock=Clock())
    later = D1 + dt.timedelta(days=10)
    for i in range(1005):  # re-gradings of two later days, all fine
        record(instance, RECOMMENDER, later + dt.timedelta(days=i % 2), "ok")
    for i in range(3):  # a backfill: the episode's days, each followed by a conversion record
        record(instance, RECOMMENDER, D1 + dt.timedelta(days=i), "error")
        record(instance, FEATURE_DRIFT, later, "ok")
    record(instance, QUALITY, later, "ok")

    requests, cursor = tick(sensor, instance, None)
    assert [r.run_key for r in requests] == [f"drift-recommender-{D1}"]
    assert requests[0].tags["skiff/drift_day"] == (D1 + dt.timedelta(days=2)).isoformat()
    seen = json.loads(cursor)
    newest = {
        name: instance.fetch_materializations(AssetKey(name), limit=1).records[0].storage_id
        for name in (RECOMMENDER, FEATURE_DRIFT, QUALITY)
    }
    assert {name: seen[name] for name in newest} == newest
    assert seen["conversion_prediction_drift"] == 0
    # nothing new: nothing read again, the same cursor
    assert tick(sensor, instance, cursor)[1] == cursor


def test_an_old_integer_cursor_is_read_as_one_id_for_every_asset(settings, instance):
    sensor = build_drift_sensor(settings, JOBS, clock=Clock())
    drifted(instance)  # an episode recorded before the old cursor: already read then
    old = instance.fetch_materializations(AssetKey(RECOMMENDER), limit=1).records[0].storage_id
    later = D1 + dt.timedelta(days=10)
    record(instance, RECOMMENDER, later, "ok")
    record(instance, FEATURE_DRIFT, later, "ok")

    requests, cursor = tick(sensor, instance, str(old))
    assert requests == []  # the records up to the old id are not read again
    seen = json.loads(cursor)
    for name in (RECOMMENDER, FEATURE_DRIFT):
        newest = instance.fetch_materializations(AssetKey(name), limit=1).records[0]
        assert seen[name] == newest.storage_id > old
    assert seen[QUALITY] == old  # nothing new of it: where the old cursor was
    # the contrast: without a cursor the episode is read, and requested
    assert [r.run_key for r in tick(sensor, instance, None)[0]] == [f"drift-recommender-{D1}"]


def test_cooldown_setting_is_checked(settings, monkeypatch):
    monkeypatch.setenv("SKIFF_RETRAIN_COOLDOWN_HOURS", "0")
    with pytest.raises(ConfigError, match="SKIFF_RETRAIN_COOLDOWN_HOURS='0'"):
        build_drift_sensor(load_settings(), JOBS)
