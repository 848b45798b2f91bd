"""The published models the server holds, and their hot reload.

`refresh` (run at start, then every few seconds in a worker thread) reads each
`<published>/<problem>/<role>.json` pointer; when it names another version, it loads that
version through `ml.registry.load_published` (every file checked against its sha256) and
swaps in a new immutable `Snapshot`. A request reads `store.snapshot` once and keeps that
object to the end, so a swap never changes a model under a request. A version that fails
verification or loading is refused, logged and counted, and not retried until the pointer
changes again; the previous model keeps serving.

Each refresh also reads `<published>/experiments.json`, the experiment configuration the
rollout controller writes (atomically: a reader sees the old file or the new one). It is
parsed only when its bytes changed. A file that does not parse or validate is refused (logged,
`skiff_experiment_config_refusals_total`), the previous configuration keeps running, and the
file is tried again once its content changes; a removed file means no configuration, so the
experiments fall back to the published roles. A new configuration swaps in a new snapshot like
a new model does, so a ramp takes effect within one reload.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from prometheus_client.core import GaugeMetricFamily

from ml.registry import ROLES, Manifest, load_published
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
    """Verify and load what is published as `problem` `role` (raises on any problem)."""
    manifest, folder = load_published(published, problem, role)
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


class ModelStore:
    def __init__(
        self,
        published: str | Path,
        problems: tuple[str, ...],
        metrics: Metrics,
        configured: Mapping[str, Experiment] | None = None,
        challenger_traffic: float = 0.0,
    ) -> None:
        self.published = published
        self.problems = problems
        self.metrics = metrics
        self.configured = dict(configured or {})
        self.challenger_traffic = challenger_traffic
        self.snapshot = Snapshot()
        self.refused: dict[tuple[str, str], str] = {}  # version refused per (problem, role)
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
        """Load whatever pointer changed; swap in one new snapshot. Returns what happened."""
        current = self.snapshot
        models = dict(current.models)
        changes = []
        for problem in self.problems:
            for role in ROLES:
                key = (problem, role)
                wanted = self._pointer(problem, role)
                held = current.models.get(key)
                if wanted is None:
                    if held is not None:
                        del models[key]
                        changes.append(f"{problem} {role} unpublished ({held.version} unloaded)")
                    continue
                if (held and held.version == wanted) or self.refused.get(key) == wanted:
                    continue
                try:
                    loaded = load_version(self.published, problem, role)
                except Exception as exc:  # any failure keeps the previous model serving
                    self.refused[key] = wanted
                    self.metrics.inc(
                        "skiff_model_reload_failures_total", problem=problem, role=role
                    )
                    log.error(
                        "refused %s %s %s (still serving %s): %s",
                        problem,
                        role,
                        wanted,
                        held.version if held else "nothing",
                        exc,
                    )
                    continue
                models[key] = loaded
                self.refused.pop(key, None)
                self.metrics.inc("skiff_model_reloads_total", problem=problem, role=role)
                changes.append(
                    f"{problem} {role}: {loaded.version} ({loaded.manifest.algorithm})"
                    + (f", was {held.version}" if held else "")
                )
        changes += self._read_experiments()
        if changes:
            self.snapshot = Snapshot(models, self._experiments(models))
            for change in changes:
                log.info("loaded %s", change)
        return changes

    def _read_experiments(self) -> list[str]:
        """Re-read EXPERIMENTS when its bytes changed; what changed (nothing when refused)."""
        url = f"{str(self.published).rstrip('/')}/{EXPERIMENTS}"
        try:
            content = self._fs.cat_file(posixpath.join(self._root, EXPERIMENTS))
        except FileNotFoundError:
            content = None
        except OSError as exc:  # storage hiccup: keep what runs, read again next time
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
        loaded = GaugeMetricFamily("skiff_model_loaded", loaded_help, labels=("problem", "role"))
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
                if model:
                    info.add_metric((problem, role, model.version, model.manifest.algorithm), 1.0)
            experiment = snapshot.experiments.get(problem)
            for variant in experiment.variants if experiment else ():
                labels = (problem, experiment.name, experiment.stage or "", variant.name)
                weight.add_metric(labels, variant.weight)
        yield from (loaded, info, weight)
