"""Serving without a server: the fast conversion path equals the model's own, experiment
configuration and assignment, and report links. `publish_models` builds the small published
state the end-to-end tests and bench/serving.py serve (a few seconds, no Dagster)."""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.conversion_examples import examples_from_landing
from ml import experiments as stats
from ml.conversion import dataset, features, models
from ml.recommend.importers import landing_sessions
from ml.recommend.models import Recommender, make_model
from ml.registry import Registry
from ml.synthetic import GeneratorConfig, generate
from serving.experiments import Experiment, Variant, parse, resolve
from serving.predict import conversion_probability
from skiff.settings import ConfigError
from skiff.urls import report_url

START = dt.date(2026, 1, 5)
WINDOW = {"train_start": "2026-01-05", "train_end": "2026-01-07"}


# --- a published state, built fast ------------------------------------------------------------


def training_data(out: Path, days: int = 3, sessions: int = 500, seed: int = 5):
    """Synthetic landing days -> conversion examples and view sessions."""
    result = generate(
        out, GeneratorConfig(days=days, sessions_per_day=sessions, seed=seed, start=START)
    )
    examples = examples_from_landing(out, result.days)
    by_day = landing_sessions(out, result.days)
    return examples, [s for d in result.days for s in by_day[d]]


def write_lookup(model: Recommender, path: Path, k: int = 20) -> None:
    """next_items.parquet as the recommender assets write it: top-k after each product alone."""
    products = model.vocab.items[1:]
    lists = model.recommend_batch([[p] for p in products], k)
    pq.write_table(
        pa.table(
            {
                "product_sku_hash": pa.array(products, pa.string()),
                "next_items": pa.array(lists, pa.list_(pa.string())),
            }
        ),
        path,
    )


def register_recommender(registry: Registry, model: Recommender, *, broken: bool = False) -> str:
    """Register a recommender with its lookup; `broken` saves an sknn whose every model call
    raises (batch size 0), to exercise the fallback to the lookup."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = model.save(Path(tmp) / "model")
        write_lookup(model, folder / "next_items.parquet")
        if broken:
            config = json.loads((folder / "config.json").read_text())
            config["params"]["batch"] = 0
            (folder / "config.json").write_text(json.dumps(config))
        manifest = registry.register(
            "recommender",
            folder,
            algorithm=model.algorithm,
            params=model.params(),
            metrics={"hr_at_20": 0.5},
            training_window=WINDOW,
            extra={"lookup": "next_items.parquet", "broken": broken},
        )
    return manifest.version


def publish_models(
    home: Path, work: Path, *, challengers: bool = True, days: int = 3, sessions: int = 500
) -> dict:
    """Champions (logistic conversion, sknn recommender) and, with `challengers`, a majority
    conversion model and a broken sknn, registered and published under `home` the way the
    Dagster assets do. Returns versions and the training sessions."""
    examples, views = training_data(work, days=days, sessions=sessions)
    registry = Registry(home / "artifacts" / "registry")
    published = home / "artifacts" / "published"
    batch = features.batch_from_frame(examples)
    y = dataset.labels(batch.events)
    versions = {}
    for role, algorithm in (("champion", "logistic"), ("challenger", "majority")):
        if role == "challenger" and not challengers:
            continue
        model = models.make_model(algorithm).fit(batch, y)
        manifest = models.register_model(
            registry, model, metrics={"pr_auc": 0.2}, training_window=WINDOW
        )
        registry.assign("conversion", role, manifest.version, "test")
        versions[("conversion", role)] = manifest.version
    sknn = make_model("sknn").fit(views)
    versions[("recommender", "champion")] = register_recommender(registry, sknn)
    registry.assign("recommender", "champion", versions[("recommender", "champion")], "test")
    if challengers:
        broken = make_model("sknn", k_neighbors=50).fit(views)
        versions[("recommender", "challenger")] = register_recommender(
            registry, broken, broken=True
        )
        registry.assign(
            "recommender", "challenger", versions[("recommender", "challenger")], "test"
        )
    for problem in ("conversion", "recommender"):
        registry.publish(problem, published)
    return {
        "versions": versions,
        "sessions": views,
        "examples": examples,
        "registry": registry,
        "published": published,
    }


# --- tests --------------------------------------------------------------------------------


def test_fast_conversion_path_scores_like_the_model(tmp_path):
    """Serving scores sklearn models on prefix_features directly: the same numbers as the
    model's own predict_proba on batch_from_events (the training-side entry point)."""
    examples, _ = training_data(tmp_path, days=2, sessions=300)
    batch = features.batch_from_frame(examples)
    model = models.make_model("logistic").fit(batch, dataset.labels(batch.events))
    sessions = [g for _, g in batch.events.groupby("session_key")][:40]
    for session in sessions:
        events = [{c: r[c] for c in features.EVENT_COLUMNS} for r in session.to_dict("records")]
        expected = model.predict_proba(features.batch_from_events(events))[0]
        assert conversion_probability(model, events) == pytest.approx(expected, abs=1e-12)
    majority = models.make_model("majority").fit(batch, dataset.labels(batch.events))
    assert conversion_probability(majority, events) == pytest.approx(majority.rate)


def test_assignment_is_stable_and_follows_the_weights():
    weights = [("a", 0.7), ("b", 0.2), ("c", 0.1)]
    ids = [f"session-{i}" for i in range(30_000)]
    first = [stats.assign("exp-1", s, weights) for s in ids]
    assert first == [stats.assign("exp-1", s, weights) for s in ids]  # deterministic
    counts = Counter(first)
    n = len(ids)
    for name, w in weights:  # each share within 4 standard errors
        assert abs(counts[name] / n - w) < 4 * math.sqrt(w * (1 - w) / n), counts
    _, p = stats.srm(counts, dict(weights))
    assert p > 0.001
    # a new experiment reshuffles: agreement is what independence gives (sum of w^2 = 0.54)
    other = [stats.assign("exp-2", s, weights) for s in ids]
    agreement = np.mean([x == y for x, y in zip(first, other, strict=True)])
    assert abs(agreement - 0.54) < 0.02


def test_experiment_from_roles_and_from_a_file():
    versions = {"champion": "v1", "challenger": "v2"}
    shadow = resolve("conversion", None, versions, 0.0)
    assert shadow.shadow == "challenger" and [v.role for v in shadow.variants] == ["champion"]
    split = resolve("conversion", None, versions, 0.25)
    assert split.weights == {"champion": 0.75, "challenger": 0.25}
    assert [v.role for v in split.variants] == ["challenger", "champion"]  # as the controller
    assert split.name == "conversion:v1:vs:v2" and split.shadow is None
    assert resolve("conversion", None, {"challenger": "v2"}, 0.5) is None
    alone = resolve("recommender", None, {"champion": "v1"}, 0.5)
    assert alone.weights == {"champion": 1.0}

    configured = parse(
        {
            "recommender": {
                "name": "ab",
                "variants": [
                    {"name": "control", "role": "champion", "weight": 1},
                    {"name": "treatment", "role": "challenger", "weight": 1},
                ],
            }
        },
        "test",
    )["recommender"]
    assert resolve("recommender", configured, versions, 0) is configured
    inactive = resolve("recommender", configured, {"champion": "v1"}, 0)
    assert inactive.name == "ab:inactive" and inactive.weights == {"champion": 1.0}


VALID = {"name": "a", "role": "champion", "weight": 1}


def _with(**variant: object) -> dict:
    return {"conversion": {"name": "x", "variants": [{"name": "a", **variant}]}}


@pytest.mark.parametrize(
    "data, names",
    [
        ({"ranking": {}}, "ranking"),
        ({"conversion": {"name": "x"}}, "variants"),
        (_with(role="boss", weight=1), "role"),
        (_with(role="champion", weight=0), "weight"),
        (_with(role="champion"), "weight"),
        ({"conversion": {"name": "x", "variants": 5}}, "variants"),
        ({"conversion": {"name": "x", "stage": 5, "variants": [VALID]}}, "stage"),
    ],
)
def test_experiment_file_errors_name_the_field(data, names):
    with pytest.raises(ConfigError, match=names):
        parse(data, "experiments.json")


def ramp(stage: str, share: float, name: str = "recommender:v1:vs:v2") -> dict:
    """The recommender experiment as the rollout controller writes it (challenger first)."""
    return {
        "recommender": {
            "name": name,
            "stage": stage,
            "variants": [
                {"name": "challenger", "role": "challenger", "weight": share},
                {"name": "champion", "role": "champion", "weight": 1 - share},
            ],
            "shadow": None,
        }
    }


def test_growing_the_challenger_only_moves_champion_sessions():
    """The ramp keeps the name and changes the weights: every session in the challenger at 5%
    is still there at 25% and 50%, and the shares follow the weights."""
    ids = [f"visitor-{i}" for i in range(20_000)]
    served: dict[float, set[str]] = {}
    for share in (0.05, 0.25, 0.5):
        experiment = parse(ramp(f"{share:.0%}", share), "experiments.json")["recommender"]
        assert experiment.stage == f"{share:.0%}"
        served[share] = {s for s in ids if experiment.assign(s).role == "challenger"}
        assert abs(len(served[share]) / len(ids) - share) < 4 * math.sqrt(
            share * (1 - share) / len(ids)
        )
    assert served[0.05] <= served[0.25] <= served[0.5]
    # listed the other way round, growing the challenger would move sessions both ways
    flipped = parse(ramp("25%", 0.25), "x")["recommender"]
    flipped = Experiment(flipped.name, "recommender", flipped.variants[::-1])
    assert not served[0.05] <= {s for s in ids if flipped.assign(s).role == "challenger"}


def test_store_reads_the_published_experiments(tmp_path):
    """Precedence (operator's file > experiments.json > published roles), an invalid file
    refused and counted once, retried when its content changes, the `:inactive` rule."""
    from serving.config import PROBLEMS
    from serving.metrics import Metrics
    from serving.store import ModelStore

    built = publish_models(tmp_path / "home", tmp_path / "work", days=2, sessions=200)
    published, versions = built["published"], built["versions"]
    champion, challenger = (versions[("recommender", r)] for r in ("champion", "challenger"))
    operator = {"conversion": {"name": "operator", "variants": [VALID]}}
    metrics = Metrics()
    store = ModelStore(published, PROBLEMS, metrics, parse(operator, "operator.json"))
    file = published / "experiments.json"

    def running() -> tuple[str, str | None, dict]:
        e = store.snapshot.experiments["recommender"]
        return e.name, e.stage, e.weights

    def refusals() -> float:
        return metrics.value("skiff_experiment_config_refusals_total")

    store.refresh()
    assert running() == (f"recommender:{champion}:shadow:{challenger}", None, {"champion": 1})
    name = f"recommender:{champion}:vs:{challenger}"
    both = {**ramp("5%", 0.05, name), "conversion": {"name": "ignored", "variants": [VALID]}}
    file.write_text(json.dumps(both))
    assert store.refresh()
    assert running() == (name, "5%", {"challenger": 0.05, "champion": 0.95})
    assert store.snapshot.experiments["conversion"].name == "operator"  # the operator's wins
    assert store.refresh() == []  # same content: nothing re-read into the snapshot

    before = store.snapshot
    for bad in ("{not json", json.dumps(ramp("25%", 0)), json.dumps({"ranking": {}})):
        file.write_text(bad)
        assert store.refresh() == [] and store.refresh() == []
        assert store.snapshot is before
    assert refusals() == 3  # once per bad content, not once per reload
    file.write_text(json.dumps(ramp("25%", 0.25, name)))
    store.refresh()
    assert running() == (name, "25%", {"challenger": 0.25, "champion": 0.75})

    (published / "recommender" / "challenger.json").unlink()  # its role is gone
    store.refresh()
    assert running() == (f"{name}:inactive", None, {"champion": 1.0})
    file.unlink()
    store.refresh()
    assert running() == (f"recommender:{champion}", None, {"champion": 1.0})
    assert refusals() == 3


def test_variant_assignment_uses_the_experiment_name():
    experiment = Experiment(
        "x", "conversion", (Variant("a", "champion", 1), Variant("b", "challenger", 1))
    )
    assert {experiment.assign(f"s{i}").name for i in range(50)} == {"a", "b"}
    assert experiment.assign("s1") == experiment.assign("s1")


def test_report_url(settings, monkeypatch):
    html = settings.reports / "monitoring" / "drift 2026-01-05.html"
    assert report_url(settings, html) == (
        "http://127.0.0.1:3001/reports/monitoring/drift%202026-01-05.html"
    )
    monkeypatch.setenv("SKIFF_SERVE_URL", "https://skiff.example.com/")
    assert report_url(settings, "monitoring/a.html") == (
        "https://skiff.example.com/reports/monitoring/a.html"
    )
    with pytest.raises(ValueError, match="not under"):
        report_url(settings, settings.home / "warehouse.duckdb")


def test_micro_batches_answer_like_single_calls(tmp_path):
    """Concurrent requests go to the model as one batch, and each gets what it alone would."""
    import asyncio

    from serving.batching import MicroBatcher
    from serving.metrics import Metrics
    from serving.predict import recommendation_lists

    _, sessions = training_data(tmp_path, days=2, sessions=300)
    model = make_model("sknn").fit(sessions)
    requests = [(s[: 1 + i % 3], 5 + i % 7) for i, s in enumerate(sessions[:40]) if s]
    calls: list[int] = []

    def batch(items):
        calls.append(len(items))
        return recommendation_lists(model, items)

    async def run(batcher: MicroBatcher):
        return await asyncio.gather(*(batcher.submit("m", batch, r) for r in requests))

    metrics = Metrics()
    answers = asyncio.run(run(MicroBatcher(metrics, max_batch=16)))
    assert answers == [model.recommend(items, k) for items, k in requests]
    assert calls == [16, 16, len(requests) - 32]
    assert metrics.value("skiff_model_batch_items_total") == len(requests)

    def broken(items):
        raise RuntimeError("model down")

    async def fail():
        batcher = MicroBatcher(metrics)
        return await asyncio.gather(
            *(batcher.submit("m", broken, r) for r in requests[:3]), return_exceptions=True
        )

    assert all(isinstance(e, RuntimeError) for e in asyncio.run(fail()))


def test_each_app_has_its_own_metrics(settings):
    """Two apps in one process count apart; the exposition parses, with a real histogram and
    the process's metrics; a counter refuses labels it does not declare."""
    from prometheus_client.parser import text_string_to_metric_families

    from serving.app import create_app
    from serving.config import ServeConfig

    first, second = (create_app(settings, ServeConfig()).state.service.metrics for _ in "ab")
    first.inc("skiff_feedback_total", action="click")
    first.observe("/v1/feedback", 0.004)
    assert first.value("skiff_feedback_total", action="click") == 1
    assert second.value("skiff_feedback_total", action="click") == 0
    families = {f.name: f for f in text_string_to_metric_families(first.render().decode())}
    latency = families["skiff_http_request_duration_seconds"]
    buckets = {s.labels["le"]: s.value for s in latency.samples if s.name.endswith("_bucket")}
    assert (buckets["0.0025"], buckets["0.005"], buckets["+Inf"]) == (0, 1, 1)
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    with pytest.raises(ValueError, match="label"):
        first.inc("skiff_feedback_total", verdict="click")


def test_backoff_doubles_up_to_its_cap_with_jitter():
    import random

    from serving.store import Backoff

    backoff, rng = Backoff(first=1.0, cap=8.0), random.Random(7)
    for failures, step in ((1, 1), (2, 2), (3, 4), (4, 8), (5, 8), (500, 8)):
        delays = [backoff.delay(failures, rng) for _ in range(200)]
        assert step / 2 <= min(delays) and max(delays) <= step, (failures, step)
        assert max(delays) - min(delays) > step / 4  # jittered, not one value


def test_store_retries_a_failed_load_with_backoff_until_it_loads(tmp_path):
    """A version whose file is missing is tried again once its backoff elapsed (not before),
    the old model serving meanwhile; once the file is back it loads with no pointer change.
    A new pointer is tried at once, its failures counted from one."""
    from serving.config import PROBLEMS
    from serving.metrics import Metrics
    from serving.store import Backoff, ModelStore

    built = publish_models(tmp_path / "home", tmp_path / "work", challengers=False, days=2)
    registry, published = built["registry"], built["published"]
    old = built["versions"][("conversion", "champion")]
    now = [0.0]
    metrics = Metrics()
    store = ModelStore(published, PROBLEMS, metrics, backoff=Backoff(10, 40), clock=lambda: now[0])
    key = ("conversion", "champion")
    store.refresh()

    def publish_without_its_file(rate: float) -> tuple[str, Path, bytes]:
        model = models.make_model("majority")
        model.rate = rate
        version = models.register_model(
            registry, model, metrics={"pr_auc": 0.1}, training_window=WINDOW
        ).version
        registry.assign("conversion", "champion", version, "retry test")
        registry.publish("conversion", published, roles=("champion",))
        file = published / "conversion" / version / models.CONFIG_FILE
        content = file.read_bytes()
        file.unlink()
        return version, file, content

    def failures() -> float:
        return metrics.value(
            "skiff_model_reload_failures_total", problem="conversion", role="champion"
        )

    def served() -> str:
        return store.snapshot.model(*key).version

    new, file, content = publish_without_its_file(0.125)
    store.refresh()
    assert failures() == 1 and store.failing[key].failures == 1 and served() == old
    assert 5 <= store.failing[key].retry_at <= 10  # 50-100% of the first step
    store.refresh()  # not due yet: not tried
    assert failures() == 1
    now[0] = store.failing[key].retry_at
    store.refresh()
    assert failures() == 2 and 10 <= store.failing[key].retry_at - now[0] <= 20
    assert store.failures()["conversion/champion"]["version"] == new and served() == old
    file.write_bytes(content)  # the file arrives; loaded at the next due try
    now[0] = store.failing[key].retry_at
    assert store.refresh() and served() == new and store.failures() == {}

    publish_without_its_file(0.25)
    store.refresh()
    store.refresh()
    assert failures() == 3 and store.failing[key].failures == 1 and served() == new
    newer_still, file, content = publish_without_its_file(0.375)
    store.refresh()  # a new pointer: tried at once, though the last failure's wait runs
    assert failures() == 4 and store.failing[key].version == newer_still
    assert store.failing[key].failures == 1
    file.write_bytes(content)
    now[0] += 10
    assert store.refresh() and served() == newer_still and store.failing == {}


def test_a_closed_batcher_refuses_new_batches(tmp_path):
    import asyncio

    from serving.batching import MicroBatcher
    from serving.metrics import Metrics

    batcher = MicroBatcher(Metrics())

    async def one() -> list:
        return await batcher.submit("m", lambda items: [i * 2 for i in items], 21)

    assert asyncio.run(one()) == 42
    batcher.close()
    with pytest.raises(RuntimeError, match="shutdown"):
        asyncio.run(one())


def test_local_reports_refuse_folders_and_symlinks_out_of_the_root(tmp_path):
    from serving.reports import Reports

    root, outside = tmp_path / "reports", tmp_path / "secret.txt"
    (root / "monitoring").mkdir(parents=True)
    (root / "monitoring" / "drift.html").write_text("<h1>drift</h1>")
    outside.write_text("not a report")
    (root / "monitoring" / "link.html").symlink_to(outside)
    (root / "inside.html").symlink_to(root / "monitoring" / "drift.html")
    reports = Reports(root)
    handle, size = reports.open("monitoring/drift.html")
    with handle:
        assert (handle.read(), size) == (b"<h1>drift</h1>", 14)
    with reports.open("inside.html")[0] as handle:  # a link that stays inside is a file
        assert handle.read() == b"<h1>drift</h1>"
    for missing in ("monitoring/link.html", "monitoring", "monitoring/none.html"):
        with pytest.raises(FileNotFoundError):
            reports.open(missing)
