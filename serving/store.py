"""The published models the server holds, and their hot reload.

`refresh` (run at start, then every few seconds in a worker thread) reads each
`<published>/<problem>/<role>.json` pointer; when it names another version, it loads that
version through `ml.registry.published_copy` (every file checked against its sha256, a remote
version copied to a temporary folder that is removed once the model is in memory: every model's
`load` reads its files whole, no memory map) and swaps in a new immutable `Snapshot`. A request
reads `store.snapshot` once and keeps that object to the end, so a swap never changes a model
under a request.

A version that fails to load (the store unreachable, a file missing mid-publish, a file that
fails verification) is logged and counted (`skiff_model_reload_failures_total`), the previous
model keeps serving, and the load is tried again with exponential backoff while the pointer
names that version: the first retry after `SKIFF_SERVE_RELOAD_RETRY_SECONDS`, the wait doubling
at each failure up to `SKIFF_SERVE_RELOAD_RETRY_MAX_SECONDS`, each wait jittered (50-100% of
it) so that replicas do not retry in step. Decision: every failure is retried, a refused hash
too, since "missing" and "altered" look alike while a publish is half copied, and a retry at
most once a minute costs little. A new pointer is tried at once. `failures()` (in /readyz) and
the `skiff_model_reload_failing` gauge show what is failing; the retries are logged with a
doubling interval too.

Each refresh also reads `<published>/experiments.json`, the experiment configuration the
rollout controller writes (atomically: a reader sees the old file or the new one). It is
parsed only when its bytes changed. A file that does not parse or validate is refused (logged,
`skiff_experiment_config_refusals_total`), the previous configuration keeps running, and the
file is tried again once its content changes; a removed file means no configuration, so the
experiments fall back to the published roles. A new configuration swaps in a new snapshot like
a new model does, so a ramp takes effect within one reload.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import posixpath
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from prometheus_client.core import GaugeMetricFamily

from ml.registry import ROLES, Manifest, published_copy
from serving.experiments import Experiment, parse, resolve
from serving.metrics import Metrics
from skiff.settings import ConfigError

log = logging.getLogger("skiff.serving")

LOOKUP = "next_items.parquet"  # the recommender's per-product list, a file of its version
EXPERIMENTS = "experiments.json"  # the rollout controller's configuration, in the published root


@dataclass(frozen=True)
class Loaded:
    problem: str
    role: str
    manifest: Manifest
    model: Any
    lookup: Mapping[str, list[str]] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.manifest.version


@dataclass(frozen=True)
class Snapshot:
    models: Mapping[tuple[str, str], Loaded] = field(default_factory=dict)
    experiments: Mapping[str, Experiment] = field(default_factory=dict)

    def model(self, problem: str, role: str) -> Loaded | None:
        return self.models.get((problem, role))


def load_version(published: str | Path, problem: str, role: str) -> Loaded:
    """Verify and load what is published as `problem` `role` (raises on any problem). The
    model is read whole into memory before its temporary copy (if remote) is removed."""
    with published_copy(published, problem, role) as (manifest, folder):
        return _loaded(problem, role, manifest, Path(folder))


def _loaded(problem: str, role: str, manifest: Manifest, folder: Path) -> Loaded:
    if problem == "conversion":
        from ml.conversion.models import load_model

        return Loaded(problem, role, manifest, load_model(folder))
    import pandas as pd

    from ml.recommend.models import Recommender

    model = Recommender.load(folder)
    lookup: dict[str, list[str]] = {}
    if (folder / LOOKUP).exists():
        frame = pd.read_parquet(folder / LOOKUP)
        lookup = {
            sku: [str(i) for i in items]
            for sku, items in zip(frame["product_sku_hash"], frame["next_items"], strict=True)
        }
    return Loaded(problem, role, manifest, model, lookup)


@dataclass(frozen=True)
class Backoff:
    """Waits between the tries of a failed load: `first`, doubling up to `cap`, jittered."""

    first: float = 1.0
    cap: float = 60.0

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The wait after the `failures`-th consecutive failure: 50-100% of the doubled step."""
        step = min(self.cap, self.first * 2 ** min(failures - 1, 40))
        return step * (rng or random).uniform(0.5, 1.0)


@dataclass(frozen=True)
class Failing:
    """A version a pointer names that could not be loaded (version None: the pointer itself
    could not be read), and when to try again (`retry_at`, on the store's clock)."""

    version: str | None
    failures: int
    error: str
    since: str
    retry_at: float


class ModelStore:
    def __init__(
        self,
        published: str | Path,
        problems: tuple[str, ...],
        metrics: Metrics,
        configured: Mapping[str, Experiment] | None = None,
        challenger_traffic: float = 0.0,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.published = published
        self.problems = problems
        self.metrics = metrics
        self.configured = dict(configured or {})
        self.challenger_traffic = challenger_traffic
        self.backoff = backoff or Backoff()
        self._clock = clock
        self.snapshot = Snapshot()
        # what failed per (problem, role); replaced whole, never mutated: /readyz reads it
        # from the event loop while a refresh runs in a worker thread
        self.failing: Mapping[tuple[str, str], Failing] = {}
        self.published_experiments: dict[str, Experiment] = {}  # from EXPERIMENTS
        self._experiments_content: bytes | None = None  # the EXPERIMENTS bytes last read
        self._fs, self._root = fsspec.core.url_to_fs(str(published))

    def _pointer(self, problem: str, role: str) -> str | None:
        """The version a role's pointer names now (None: nothing published)."""
        path = posixpath.join(self._root, problem, f"{role}.json")
        try:
            return json.loads(self._fs.cat_file(path))["version"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            return f"unreadable pointer: {exc}"

    def refresh(self) -> list[str]:
        """Load whatever pointer changed, or whatever failed and is due for another try; swap
        in one new snapshot. Returns what happened."""
        current = self.snapshot
        models = dict(current.models)
        changes = []
        for problem in self.problems:
            for role in ROLES:
                key = (problem, role)
                held = current.models.get(key)
                try:
                    wanted = self._pointer(problem, role)
                except Exception as exc:  # the store unreachable (s3fs raises botocore's
                    self._pointer_failed(key, held, exc)  # errors, not OSError): keep serving
                    continue
                failing = self.failing.get(key)
                if wanted is None:
                    self._settled(key)
                    if held is not None:
                        del models[key]
                        changes.append(f"{problem} {role} unpublished ({held.version} unloaded)")
                    continue
                if held and held.version == wanted:
                    self._settled(key)
                    continue
                if failing and failing.version == wanted and self._clock() < failing.retry_at:
                    continue
                if failing:  # a listing cached at the failure must not hide what arrived since
                    self._fs.invalidate_cache()
                try:
                    loaded = load_version(self.published, problem, role)
                except Exception as exc:  # any failure keeps the previous model serving
                    self._load_failed(key, wanted, held, exc)
                    continue
                models[key] = loaded
                self._settled(key)
                self.metrics.inc("skiff_model_reloads_total", problem=problem, role=role)
                changes.append(
                    f"{problem} {role}: {loaded.version} ({loaded.manifest.algorithm})"
                    + (f", was {held.version}" if held else "")
                    + (
                        f", after {failing.failures} failed tries"
                        if failing and failing.version == wanted
                        else ""
                    )
                )
        changes += self._read_experiments()
        if changes:
            self.snapshot = Snapshot(models, self._experiments(models))
            for change in changes:
                log.info("loaded %s", change)
        return changes

    def _settled(self, key: tuple[str, str]) -> None:
        if key in self.failing:
            self.failing = {k: v for k, v in self.failing.items() if k != key}

    def _failed(self, key: tuple[str, str], version: str | None, exc: Exception) -> Failing:
        """Record one more consecutive failure of `version` for `key` (a new version: the first)."""
        before = self.failing.get(key)
        again = before is not None and before.version == version
        failures = before.failures + 1 if again else 1
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        failing = Failing(
            version,
            failures,
            f"{type(exc).__name__}: {exc}",
            before.since if again else now,
            self._clock() + self.backoff.delay(failures),
        )
        self.failing = {**self.failing, key: failing}
        return failing

    def _load_failed(
        self, key: tuple[str, str], wanted: str, held: Loaded | None, exc: Exception
    ) -> None:
        failing = self._failed(key, wanted, exc)
        self.metrics.inc("skiff_model_reload_failures_total", problem=key[0], role=key[1])
        log.error(
            "could not load %s %s %s (failure %d; still serving %s; next try in %.1f s): %s",
            *key,
            wanted,
            failing.failures,
            held.version if held else "nothing",
            failing.retry_at - self._clock(),
            failing.error,
        )

    def _pointer_failed(self, key: tuple[str, str], held: Loaded | None, exc: Exception) -> None:
        failing = self._failed(key, None, exc)
        if failing.failures & (failing.failures - 1) == 0:  # 1st, 2nd, 4th, 8th...: no flood
            log.error(
                "could not read the %s %s pointer in %s (failure %d; still serving %s): %s",
                *key,
                self.published,
                failing.failures,
                held.version if held else "nothing",
                failing.error,
            )

    def failures(self) -> dict[str, dict[str, Any]]:
        """What is failing, per "problem/role": the version, consecutive failures, the last
        error, since when, and the seconds to the next try."""
        now = self._clock()
        return {
            f"{problem}/{role}": {
                "version": f.version,
                "failures": f.failures,
                "error": f.error,
                "since": f.since,
                "retry_in_seconds": round(max(0.0, f.retry_at - now), 3),
            }
            for (problem, role), f in sorted(self.failing.items())
        }

    def _read_experiments(self) -> list[str]:
        """Re-read EXPERIMENTS when its bytes changed; what changed (nothing when refused)."""
        url = f"{str(self.published).rstrip('/')}/{EXPERIMENTS}"
        try:
            content = self._fs.cat_file(posixpath.join(self._root, EXPERIMENTS))
        except FileNotFoundError:
            content = None
        except Exception as exc:  # storage hiccup: keep what runs, read again next time
            log.error("could not read %s (keeping the running experiments): %s", url, exc)
            return []
        if content == self._experiments_content:
            return []
        self._experiments_content = content
        if content is None:
            self.published_experiments = {}
            return [f"{url} removed: experiments follow the published roles"]
        try:
            parsed = parse(json.loads(content), url)
        except (ValueError, TypeError, ConfigError) as exc:
            self.metrics.inc("skiff_experiment_config_refusals_total")
            log.error("refused the published experiments (keeping those running): %s", exc)
            return []
        self.published_experiments = parsed
        return [
            f"{url}: {e.problem} {e.name} stage {e.stage} weights {e.weights}"
            for e in parsed.values()
        ] or [f"{url}: no experiments"]

    def _experiments(self, models: Mapping[tuple[str, str], Loaded]) -> dict[str, Experiment]:
        """Per problem: the operator's file, else EXPERIMENTS, else the published roles."""
        out = {}
        for problem in self.problems:
            versions = {role: m.version for (p, role), m in models.items() if p == problem}
            configured = self.configured.get(problem) or self.published_experiments.get(problem)
            experiment = resolve(problem, configured, versions, self.challenger_traffic)
            if experiment is not None:
                out[problem] = experiment
        return out

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauges /metrics reads at scrape time (a prometheus_client collector): the
        versions served, whether loaded, traffic weights."""
        snapshot = self.snapshot
        loaded_help = "1 when the role's published model is loaded."
        info_help = "The version (and algorithm) each role serves; always 1."
        weight_help = "Traffic weight of each variant of the running experiment, and its stage."
        failing_help = (
            "Consecutive failed tries to load what a role's pointer names (0: it is loaded); "
            "the previous model keeps serving meanwhile."
        )
        loaded = GaugeMetricFamily("skiff_model_loaded", loaded_help, labels=("problem", "role"))
        failing = GaugeMetricFamily(
            "skiff_model_reload_failing", failing_help, labels=("problem", "role")
        )
        failures = self.failing
        info = GaugeMetricFamily(
            "skiff_model_info", info_help, labels=("problem", "role", "version", "algorithm")
        )
        weight = GaugeMetricFamily(
            "skiff_experiment_weight",
            weight_help,
            labels=("problem", "experiment", "stage", "variant"),
        )
        for problem in self.problems:
            for role in ROLES:
                model = snapshot.model(problem, role)
                loaded.add_metric((problem, role), 1.0 if model else 0.0)
                found = failures.get((problem, role))
                failing.add_metric((problem, role), float(found.failures if found else 0))
                if model:
                    info.add_metric((problem, role, model.version, model.manifest.algorithm), 1.0)
            experiment = snapshot.experiments.get(problem)
            for variant in experiment.variants if experiment else ():
                labels = (problem, experiment.name, experiment.stage or "", variant.name)
                weight.add_metric(labels, variant.weight)
        yield from (loaded, info, weight, failing)
