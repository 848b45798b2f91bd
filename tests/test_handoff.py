"""The hand-off store (orchestration/handoff.py) under real Dagster runs on a persistent
instance: values round-trip as JSON and Parquet (never pickles), each run writes its own
paths, a re-executed step reads its own run's upstream value although another run
materialized the upstream since, a run of the downstream asset alone reads the latest value,
and a missing upstream fails naming the asset."""

import os
from pathlib import Path

import pandas as pd
import pytest
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    Config,
    DagsterInstance,
    Definitions,
    Failure,
    ReexecutionOptions,
    StaticPartitionsDefinition,
    asset,
    define_asset_job,
    execute_job,
    in_process_executor,
    materialize,
    reconstructable,
)

from orchestration.handoff import Handoff, HandoffIOManager

ROOT_VARIABLE = "SKIFF_TEST_HANDOFF_ROOT"
FRAME = pd.DataFrame({"session": ["a", "b", "c"], "score": [0.5, float("nan"), 2.0]})
LETTERS = StaticPartitionsDefinition(["x", "y"])


@asset
def as_json() -> dict:
    return {"window": {"start": "2026-01-05"}, "sessions": [["p1", "p2"], ["p3"]], "nan": None}


@asset
def as_frame() -> pd.DataFrame:
    return FRAME


@asset
def as_frames() -> dict:
    return {"train": FRAME, "test": FRAME.head(1), "window": {"test_day": "2026-01-14"}}


@asset
def as_nothing() -> None:
    return None


@asset(ins={"json_value": AssetIn("as_json"), "frame": AssetIn("as_frame")})
def received(json_value: dict, frame: pd.DataFrame, as_frames: dict) -> dict:
    """What the downstream step was given, as plain values the test compares."""
    return {
        "json": json_value,
        "frame_scores": frame["score"].fillna(-1).tolist(),
        "frames": {k: len(v) if isinstance(v, pd.DataFrame) else v for k, v in as_frames.items()},
    }


@asset(partitions_def=LETTERS)
def lettered(context: AssetExecutionContext) -> list:
    return [context.partition_key] * 2


@asset(partitions_def=LETTERS)
def lettered_again(lettered: list) -> list:
    return [*lettered, "!"]


@asset
def refused() -> set:
    return {"a set"}


def test_values_round_trip_through_files_that_run_no_code(tmp_path):
    root = tmp_path / "handoff"
    resources = {"io_manager": HandoffIOManager(root=str(root))}
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [as_json, as_frame, as_frames, as_nothing, received],
            resources=resources,
            instance=instance,
        )
        store = Handoff(root)
        assert store.load(instance, "received") == {
            "json": as_json(),
            "frame_scores": [0.5, -1, 2.0],
            "frames": {"train": 3, "test": 1, "window": {"test_day": "2026-01-14"}},
        }
        pd.testing.assert_frame_equal(store.load(instance, "as_frame"), FRAME)
        frames = store.load(instance, "as_frames")
        pd.testing.assert_frame_equal(frames["test"], FRAME.head(1))
        assert frames["window"] == {"test_day": "2026-01-14"}
        # nothing stored for None: loading it says so, naming the asset
        with pytest.raises(Failure, match=r"as_nothing: run .* stored no value"):
            store.load(instance, "as_nothing")

        parted = [
            materialize(
                [lettered, lettered_again], partition_key=p, resources=resources, instance=instance
            )
            for p in ("x", "y")
        ]
        assert store.load(instance, "lettered_again", "y") == ["y", "y", "!"]

    run = result.run_id
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert written == sorted(
        [
            f"runs/{run}/as_json.json",
            f"runs/{run}/as_frame.parquet",
            f"runs/{run}/as_frames/index.json",
            f"runs/{run}/as_frames/train.parquet",
            f"runs/{run}/as_frames/test.parquet",
            f"runs/{run}/received.json",
            *(
                f"runs/{r.run_id}/{a}/{p}.json"
                for r, p in zip(parted, "xy", strict=True)
                for a in ("lettered", "lettered_again")
            ),
        ]
    )
    (event,) = result.asset_materializations_for_node("as_frame")
    assert event.metadata["handoff"].value == str(root / "runs" / run / "as_frame.parquet")


def test_a_value_that_is_not_json_or_parquet_is_refused_by_name(tmp_path):
    with pytest.raises(Exception) as err:
        materialize([refused], resources={"io_manager": HandoffIOManager(root=str(tmp_path))})
    chain, error = [], err.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    text = "\n".join(chain)
    assert "refused: cannot hand off a builtins.set" in text and "Nothing is pickled" in text
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    with pytest.raises(TypeError, match=r"scores: .*numpy\.random\._generator\.Generator"):
        import numpy as np

        Handoff(tmp_path).write_value(
            str(tmp_path / "x"), {"rng": np.random.default_rng()}, what="scores"
        )


class UpConfig(Config):
    value: int


class DownConfig(Config):
    marker: str = ""  # the step fails while this file exists


@asset
def up(config: UpConfig) -> dict:
    return {"value": config.value}


@asset
def down(config: DownConfig, up: dict) -> dict:
    if config.marker and Path(config.marker).exists():
        raise Failure(description="failing on purpose", allow_retries=False)
    return {"seen": up["value"]}


def collision_job():
    """A reconstructable job (each run may be re-executed) over the store the test names."""
    defs = Definitions(
        assets=[up, down],
        jobs=[define_asset_job("collide")],
        resources={"io_manager": HandoffIOManager(root=os.environ[ROOT_VARIABLE])},
        executor=in_process_executor,
    )
    return defs.resolve_job_def("collide")


def _config(value: int | None = None, marker: Path | None = None) -> dict:
    ops: dict = {}
    if value is not None:
        ops["up"] = {"config": {"value": value}}
    ops["down"] = {"config": {"marker": str(marker) if marker else ""}}
    return {"ops": ops}


def test_concurrent_runs_never_read_each_others_values(settings, tmp_path, monkeypatch):
    root = tmp_path / "handoff"
    monkeypatch.setenv(ROOT_VARIABLE, str(root))
    store = Handoff(root)
    marker = tmp_path / "fail-down"
    marker.touch()
    job = reconstructable(collision_job)
    with DagsterInstance.get() as instance:
        # run 1: its upstream writes 1, then its downstream step fails
        first = execute_job(job, instance, run_config=_config(1, marker), raise_on_error=False)
        assert not first.success
        # run 2 (another run at the same time, e.g. a sensor's retraining) materializes 2
        second = execute_job(job, instance, run_config=_config(2), asset_selection=[AssetKey("up")])
        assert second.success
        paths = {
            r.run_id: r.asset_materializations_for_node("up")[0].metadata["handoff"].value
            for r in (first, second)
        }
        assert paths == {
            first.run_id: str(root / "runs" / first.run_id / "up.json"),
            second.run_id: str(root / "runs" / second.run_id / "up.json"),
        }
        # run 1's downstream step, re-executed, reads run 1's value, not the latest
        marker.unlink()
        again = execute_job(
            job,
            instance,
            reexecution_options=ReexecutionOptions.from_failure(first.run_id, instance),
        )
        assert again.success
        assert store.read_value(store.asset_path(again.run_id, AssetKey("down"))) == {"seen": 1}
        # a run of the downstream asset alone reads the latest materialization: run 2's
        alone = execute_job(job, instance, run_config=_config(), asset_selection=[AssetKey("down")])
        assert alone.success
        assert store.read_value(store.asset_path(alone.run_id, AssetKey("down"))) == {"seen": 2}


def test_a_missing_upstream_is_a_failure_naming_it(settings, tmp_path):
    resources = {"io_manager": HandoffIOManager(root=str(tmp_path / "handoff"))}
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [up, down],
            selection=[down],
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("up has never been materialized: materialize up first")


def test_the_store_works_on_object_storage(s3_bucket):
    store = Handoff(f"{s3_bucket}/prefix/handoff")
    base = store.run_path("r1", "training_set")
    assert store.write_value(base, {"train": FRAME, "days": 3}, what="training_set") == base
    value = store.read_value(base)
    pd.testing.assert_frame_equal(value["train"], FRAME)
    assert value["days"] == 3
    assert store.url_of(base) == f"{s3_bucket}/prefix/handoff/runs/r1/training_set"
    assert store.fs.exists(f"{s3_bucket}/prefix/handoff/runs/r1/training_set/index.json")


def test_a_rewritten_frames_folder_never_shows_its_old_index_over_new_files(tmp_path):
    """A step retried in the same run rewrites its folder: the old index goes first, so while
    the frames are replaced a reader finds no value rather than the old index over new files."""
    store = Handoff(tmp_path / "handoff")
    base = store.run_path("r1", "training_set")
    store.write_value(base, {"train": FRAME, "days": 1}, what="training_set")
    seen = []
    write_frame = store.write_frame

    def write_frame_watched(path: str, frame: pd.DataFrame) -> None:
        seen.append(store.find_value(base))  # what a reader finds at this moment
        write_frame(path, frame)

    store.write_frame = write_frame_watched
    store.write_value(base, {"train": FRAME.head(2), "test": FRAME, "days": 2}, what="x")
    assert seen == [None, None]
    value = store.read_value(base)
    assert value["days"] == 2 and len(value["train"]) == 2 and len(value["test"]) == 3
    # a refused value leaves the stored one whole
    with pytest.raises(TypeError, match="plain name"):
        store.write_value(base, {"a/b": FRAME}, what="x")
    assert store.read_value(base)["days"] == 2
