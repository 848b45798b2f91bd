"""The one way a step gives data to another: files in storage rooted at `settings.handoff_root`
(`$SKIFF_ARTIFACTS_URL/handoff` in production, `$SKIFF_HOME/artifacts/handoff` locally), keyed
by the run that wrote them, so that steps in separate processes or pods share nothing but that
storage and two runs at once (the nightly training and a sensor's retraining) never read each
other's values.

Layout::

    <root>/runs/<run_id>/<asset key path>.<ext>                 unpartitioned asset
    <root>/runs/<run_id>/<asset key path>/<partition>.<ext>     partitioned asset

`HandoffIOManager` is every job's default `io_manager`. What an asset returns is stored in a
format that cannot run code when it is loaded (nothing is pickled):

- a dict or a list: JSON (`.json`; numpy scalars and arrays become numbers and lists, dates
  ISO text);
- a pandas DataFrame: Parquet (`.parquet`);
- a dict holding DataFrames (a training set's parts, with small JSON values beside them): a
  folder with one Parquet file per frame and `index.json`, written last (a folder without its
  index is incomplete and never read);
- None: nothing (assets that only write tables or report through metadata).

Anything else is refused with a TypeError naming the asset and the type.

An input is read from the run that materialized the upstream asset (the partition's, for a
partitioned one), decided in this order: this run, when it wrote the value; else the run it
re-executes (the parent chain of a re-execution from failure, whose skipped steps wrote their
values there); else the run of the upstream's latest materialization recorded by the instance
(a step run alone, or a run that selects only downstream assets, reads the current value). A
missing value is a `Failure` naming the asset and what to materialize. A step whose inputs must
come from one run (a champion judging its evaluation's candidate on that evaluation's test
days) takes the others from the run its main input recorded (`input_run`, `load_recorded`),
not from the latest materializations, which may be of different runs.

Hand-offs of old runs stay until deleted: a run's folder is self-contained, so removing
`runs/<run_id>/` of runs older than the retention (an object-store lifecycle rule on the
`handoff/runs/` prefix, or `Handoff.delete_run`) loses the ability to re-execute those runs
from failure, and fails any later run of downstream assets alone whose inputs resolve to them
(their upstream's latest materialization: materialize the upstream again; or a recorded run:
materialize the step that recorded it again, e.g. the evaluation a champion reads).
"""

import datetime as dt
import io
import json
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    ConfigurableIOManager,
    DagsterInstance,
    DagsterInvariantViolationError,
    Failure,
    InputContext,
    MetadataValue,
    OutputContext,
)

from ml.registry import is_local
from orchestration import store

INDEX = "index.json"
FORMATS = ("json", "parquet", "frames")


class Handoff:
    """The hand-off store at `root` (a local folder or any fsspec URL)."""

    def __init__(self, root: str | Path):
        self.url = str(root).rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = is_local(self.fs)

    # --- paths ------------------------------------------------------------------------------

    def run_path(self, run_id: str, *parts: str) -> str:
        """`<root>/runs/<run_id>/<parts...>`, a path of this store's filesystem."""
        return posixpath.join(self.root, "runs", run_id, *parts)

    def asset_path(self, run_id: str, asset_key: AssetKey, partition: str | None = None) -> str:
        """Where `run_id` stores the value of an asset (or of one partition), without extension."""
        parts = [*asset_key.path, partition] if partition is not None else list(asset_key.path)
        return self.run_path(run_id, *parts)

    def url_of(self, path: str) -> str:
        """The path as a URL (`s3://bucket/...`), or as it is on a local filesystem."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def delete_run(self, run_id: str) -> None:
        """Remove every hand-off of a run (retention is the operator's: see the module doc)."""
        path = self.run_path(run_id)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    # --- bytes, JSON and Parquet ------------------------------------------------------------

    def write_bytes(self, path: str, data: bytes) -> None:
        """Whole or not at all (`orchestration.store.write_bytes`)."""
        store.write_bytes(self.fs, path, data)

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def write_json(self, path: str, data: Any, *, what: str = "value") -> None:
        self.write_bytes(path, _json_bytes(data, what))

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path))

    def write_frame(self, path: str, frame: pd.DataFrame) -> None:
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        self.write_bytes(path, buffer.getvalue())

    def read_frame(self, path: str) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(self.read_bytes(path)))

    # --- values -----------------------------------------------------------------------------

    def write_value(self, base: str, value: Any, *, what: str) -> str | None:
        """Store `value` at `base` + its format's extension; the path written, None for None.
        `what` names the value in errors (the asset)."""
        if value is None:
            return None
        if isinstance(value, pd.DataFrame):
            self.write_frame(f"{base}.parquet", value)
            return f"{base}.parquet"
        if isinstance(value, Mapping) and any(isinstance(v, pd.DataFrame) for v in value.values()):
            frames = {str(k): v for k, v in value.items() if isinstance(v, pd.DataFrame)}
            others = {str(k): v for k, v in value.items() if not isinstance(v, pd.DataFrame)}
            index = _json_bytes({"frames": sorted(frames), "values": others}, what)
            if bad := [n for n in frames if "/" in n or n in ("", ".", "..")]:
                raise TypeError(f"{what}: a frame's key must be a plain name, got {bad[0]!r}")
            # a rewrite (a step retried in the same run) drops the old index first: while the
            # frames are replaced the folder is incomplete, never an old index over new files
            if self.fs.exists(index_path := posixpath.join(base, INDEX)):
                self.fs.rm_file(index_path)
            for name, frame in frames.items():
                self.write_frame(posixpath.join(base, f"{name}.parquet"), frame)
            self.write_bytes(index_path, index)  # last: the folder is complete
            return base
        if isinstance(value, Mapping | list | tuple):
            self.write_json(f"{base}.json", value, what=what)
            return f"{base}.json"
        raise TypeError(
            f"{what}: cannot hand off a {type(value).__module__}.{type(value).__qualname__}; "
            "return a dict or list (stored as JSON), a pandas DataFrame (Parquet), a dict of "
            "DataFrames (a folder of Parquet) or None. Nothing is pickled: loading a hand-off "
            "must not run code."
        )

    def find_value(self, base: str) -> str | None:
        """The stored path of the value at `base` (any format), or None."""
        # another process may have written it since this process listed the folder
        self.fs.invalidate_cache(base)
        for path in (f"{base}.json", f"{base}.parquet", posixpath.join(base, INDEX)):
            if self.fs.exists(path):
                return path
        return None

    def read_value(self, base: str) -> Any:
        """The value stored at `base`; FileNotFoundError when there is none."""
        path = self.find_value(base)
        if path is None:
            raise FileNotFoundError(f"no hand-off at {self.url_of(base)}")
        if path == f"{base}.json":
            return self.read_json(path)
        if path == f"{base}.parquet":
            return self.read_frame(path)
        index = self.read_json(path)
        frames = {n: self.read_frame(posixpath.join(base, f"{n}.parquet")) for n in index["frames"]}
        return {**index["values"], **frames}

    # --- which run holds an asset's value ---------------------------------------------------

    def source_run(
        self,
        instance: DagsterInstance,
        asset_key: AssetKey,
        partition: str | None = None,
        run_id: str | None = None,
    ) -> str | None:
        """The run whose value of the asset (partition) a step of `run_id` reads: `run_id`
        when it wrote one, else the run it re-executes (up its parent chain) when that did,
        else the run of the latest materialization; None when the asset was never materialized.
        """
        seen: set[str] = set()
        current = run_id
        while current and current not in seen:
            seen.add(current)
            if self.find_value(self.asset_path(current, asset_key, partition)) is not None:
                return current
            run = instance.get_run_by_id(current)
            current = run.parent_run_id if run is not None else None
        if partition is None:
            event = instance.get_latest_materialization_event(asset_key)
            return event.run_id if event is not None else None
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
        ).records
        return records[0].run_id if records else None

    def load(
        self,
        instance: DagsterInstance,
        asset_key: AssetKey | str | Sequence[str],
        partition: str | None = None,
        run_id: str | None = None,
    ) -> Any:
        """The value of an asset (partition) a step of `run_id` reads (see `source_run`);
        without `run_id`, its latest materialization's. A `Failure` names what is missing."""
        key = AssetKey.from_coercible(asset_key)
        name = key.to_user_string() + (f" partition {partition}" if partition else "")
        source = self.source_run(instance, key, partition, run_id)
        if source is None:
            raise Failure(
                description=f"{name} has never been materialized: materialize {name} first "
                "(its value is handed to this step through the hand-off store "
                f"{self.url}).",
                allow_retries=False,
            )
        return self.load_from_run(source, key, partition)

    def input_run(self, context: AssetExecutionContext, asset_key: AssetKey | str) -> str | None:
        """The run a step of `context` read the (unpartitioned) asset from: what a value
        records so that a later step reads that same run's (`load_recorded`). The run the IO
        manager loaded it from in this process, when it did (another run may have written the
        asset since: the latest is not what this step read); else `source_run` now."""
        key = AssetKey.from_coercible(asset_key)
        loaded = _LOADED_FROM.get((context.run_id, key.to_user_string()))
        return loaded or self.source_run(context.instance, key, None, context.run_id)

    def load_recorded(self, run_id: str | None, asset_key: AssetKey | str, recorded_by: str) -> Any:
        """The asset's value in the run `recorded_by` (a hand-off) recorded with `input_run`; a
        `Failure` naming both when it recorded none (written before it did) or the run's value
        is gone."""
        if run_id is None:
            name = AssetKey.from_coercible(asset_key).to_user_string()
            raise Failure(
                description=f"{recorded_by} records no run of {name} (it was written before it "
                f"did, or {name} was never materialized): materialize {recorded_by} again.",
                allow_retries=False,
            )
        name = AssetKey.from_coercible(asset_key).to_user_string()
        base = self.asset_path(run_id, AssetKey.from_coercible(asset_key), None)
        if self.find_value(base) is None:
            raise Failure(
                description=f"{recorded_by} was computed on {name} of run {run_id}, whose "
                f"hand-off is gone from {self.url_of(base)} (deleted by a retention rule?): "
                f"materialize {recorded_by} again (its run then records a {name} it can read).",
                allow_retries=False,
            )
        return self.load_from_run(run_id, asset_key)

    def load_from_run(
        self, run_id: str, asset_key: AssetKey | str | Sequence[str], partition: str | None = None
    ) -> Any:
        """The value `run_id` itself stored of the asset (partition), resolved no further: for
        a step whose inputs must all come from one run (the champion reads the training set
        its evaluation was computed on). A `Failure` names what is missing."""
        key = AssetKey.from_coercible(asset_key)
        name = key.to_user_string() + (f" partition {partition}" if partition else "")
        base = self.asset_path(run_id, key, partition)
        try:
            return self.read_value(base)
        except FileNotFoundError:
            raise Failure(
                description=f"{name}: run {run_id} materialized it but stored no value at "
                f"{self.url_of(base)} (it returned None, or its hand-offs were deleted): "
                f"materialize {name} again.",
                allow_retries=False,
            ) from None


# (run, asset) -> the run this process's IO manager loaded the asset from (`input_run`).
_LOADED_FROM: dict[tuple[str, str], str] = {}


class HandoffIOManager(ConfigurableIOManager):
    """Every asset's value, through the hand-off store at `root`, keyed by run (see above)."""

    root: str

    def _store(self) -> Handoff:
        return Handoff(self.root)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        store = self._store()
        name = context.asset_key.to_user_string()
        partitions = context.asset_partition_keys if context.has_asset_partitions else [None]
        if len(partitions) > 1:
            if not (isinstance(obj, Mapping) and set(obj) == set(partitions)):
                raise TypeError(
                    f"{name}: a run of {len(partitions)} partitions must return a dict keyed by "
                    f"partition, got {type(obj).__name__}"
                )
            values = dict(obj)
        else:
            values = {partitions[0]: obj}
        written = []
        for partition, value in values.items():
            base = store.asset_path(context.run_id, context.asset_key, partition)
            path = store.write_value(base, value, what=name)
            if path is not None:
                written.append(store.url_of(path))
        if len(written) == 1:
            context.add_output_metadata({"handoff": MetadataValue.path(written[0])})
        elif written:
            context.add_output_metadata({"handoff": MetadataValue.json(written)})

    def load_input(self, context: InputContext) -> Any:
        store = self._store()
        try:
            run_id = context.step_context.run_id
        except DagsterInvariantViolationError:  # built outside a run (build_input_context)
            run_id = None
        if not context.has_asset_partitions:
            source = store.source_run(context.instance, context.asset_key, None, run_id)
            if run_id is not None and source is not None:
                _LOADED_FROM[(run_id, context.asset_key.to_user_string())] = source
            return store.load(context.instance, context.asset_key, None, source or run_id)
        partitions = context.asset_partition_keys
        values = {p: store.load(context.instance, context.asset_key, p, run_id) for p in partitions}
        return values[partitions[0]] if len(partitions) == 1 else values


def _json_bytes(value: Any, what: str) -> bytes:
    def plain(item: Any) -> Any:
        import numpy as np

        if isinstance(item, np.generic):
            return item.item()
        if isinstance(item, np.ndarray):
            return item.tolist()
        if isinstance(item, dt.date | dt.datetime | pd.Timestamp):
            return item.isoformat()
        raise TypeError(
            f"{what}: {type(item).__module__}.{type(item).__qualname__} inside the value is not "
            "JSON; hand off plain numbers, text, lists and dicts (DataFrames at the top level "
            "of a dict only). Nothing is pickled."
        )

    try:
        return json.dumps(value, default=plain).encode()
    except TypeError as exc:
        if str(exc).startswith(what):
            raise
        raise TypeError(f"{what}: the value cannot be written as JSON: {exc}") from exc
    except ValueError as exc:  # a circular reference
        raise TypeError(f"{what}: the value cannot be written as JSON: {exc}") from exc
