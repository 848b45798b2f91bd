"""The server end to end: `skiff serve` (uvicorn) on 127.0.0.1, real HTTP, real published
artifacts built by `tests.test_serving.publish_models`.

The module's server runs an experiment file: recommender 50/50 between the champion (sknn)
and a challenger whose model raises on every call (so its answers come from the lookup), and
conversion on the champion with the challenger in shadow mode, and exploration off
(`--explore 0`), since its tests compare the served lists with the models' own. The hot reload
test runs last: it changes what is published. The ramp server keeps the default exploration
(5% of the recommender answers shuffled); its tests compare variants, not lists.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ml import experiments as stats
from ml.recommend.models import make_model
from ml.registry import load_published
from serving.demo import serve_hint
from serving.predict import conversion_probability
from serving.store import load_version
from skiff.settings import REPO_ROOT, load_settings
from tests.servers import free_port, sample_events
from tests.test_conversion_ml import REMOVE_FIRST, event_sequences, time_ordered
from tests.test_serving import publish_models, register_recommender

pytestmark = pytest.mark.e2e

SKIFF = str(Path(sys.executable).parent / "skiff")
MAX_EVENTS = 50
MAX_BODY = 20_000
EXPERIMENTS = {
    "recommender": {
        "name": "recs-ab",
        "variants": [
            {"name": "control", "role": "champion", "weight": 0.5},
            {"name": "treatment", "role": "challenger", "weight": 0.5},
        ],
    },
    "conversion": {
        "name": "conversion-shadow",
        "variants": [{"name": "control", "role": "champion", "weight": 1}],
        "shadow": "challenger",
    },
}
RECS_WEIGHTS = [("control", 0.5), ("treatment", 0.5)]
# the developer's own settings must not leak into the servers under test
SERVER_VARIABLES = ("SKIFF_SERVE", "SKIFF_EXPERIMENTS", "SKIFF_CHALLENGER", "SKIFF_ARTIFACTS_URL")
# These tests compare served lists with the models' own, so the business rule on by default
# (never show a viewed product) is off; tests/test_serving_rules.py tests the rules.
RULES_OFF = {"SKIFF_SERVE_EXCLUDE_VIEWED": "false"}


@contextlib.contextmanager
def serve(
    home: Path, log: Path, *flags: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`skiff serve` on a free port until ready (/readyz 200); stopped (SIGINT) at exit. `env`:
    server variables (default RULES_OFF)."""
    port = free_port()
    variables = RULES_OFF if env is None else env
    env = {k: v for k, v in os.environ.items() if not k.startswith(SERVER_VARIABLES)}
    env |= {"SKIFF_HOME": str(home), "SKIFF_ENV": "local", **variables}
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [SKIFF, "serve", "--port", str(port), "--reload-seconds", "0.2", *flags],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield url, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("skiff")
    built = publish_models(home, tmp_path_factory.mktemp("landing"))
    (home / "experiments.json").write_text(json.dumps(EXPERIMENTS))
    (home / "reports" / "monitoring").mkdir(parents=True)
    (home / "reports" / "monitoring" / "drift.html").write_text("<h1>drift</h1>")
    return {**built, "home": home}


@pytest.fixture(scope="module")
def server(state: dict) -> Iterator[str]:
    home = state["home"]
    flags = ["--experiments", str(home / "experiments.json")]
    flags += ["--max-events", str(MAX_EVENTS), "--max-body-bytes", str(MAX_BODY)]
    flags += ["--explore", "0"]  # the served lists are compared with the models' own
    with serve(home, home / "server.log", *flags) as (url, _):
        yield url


def _session_for(variant: str, start: int = 0) -> str:
    """A session id the recommender experiment assigns to `variant` (computed locally)."""
    i = start
    while stats.assign("recs-ab", f"s-{i}", RECS_WEIGHTS) != variant:
        i += 1
    return f"s-{i}"


def _log_records(home: Path) -> list[dict]:
    records = []
    for path in sorted((home / "serving").glob("events-*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines()]
    return records


def test_scores_and_recommendations(server: str, state: dict):
    versions = state["versions"]
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/readyz").json()
    assert ready["ready"] and len(ready["models"]) == 4

    # conversion: the champion answers; the number is the one this process computes locally
    events = sample_events(5)
    answer = httpx.post(
        f"{server}/v1/conversion/score", json={"session_id": "buyer-1", "events": events}
    ).json()
    champion = load_version(state["published"], "conversion", "champion")
    assert answer["model_version"] == versions[("conversion", "champion")]
    assert answer["probability"] == pytest.approx(
        conversion_probability(champion.model, events), abs=1e-9
    )
    assert (answer["experiment"], answer["variant"]) == ("conversion-shadow", "control")
    assert len(answer["exposure_id"]) == 32
    # events out of order are sorted by time first
    shuffled = events[::-1]
    again = httpx.post(
        f"{server}/v1/conversion/score", json={"session_id": "buyer-1", "events": shuffled}
    ).json()
    assert again["probability"] == pytest.approx(answer["probability"], abs=1e-12)

    # recommendations: the champion's model; the broken challenger falls back to the lookup
    recommender = load_version(state["published"], "recommender", "champion")
    viewed = state["sessions"][0][:3]
    control = httpx.post(
        f"{server}/v1/recommendations",
        json={"session_id": _session_for("control"), "items": [*viewed, "never-seen"], "k": 7},
    ).json()
    assert control["path"] == "model" and control["variant"] == "control"
    assert control["items"] == recommender.model.recommend(viewed, 7)
    assert control["unknown_items"] == 1
    assert control["model_version"] == versions[("recommender", "champion")]
    treatment = httpx.post(
        f"{server}/v1/recommendations",
        json={"session_id": _session_for("treatment"), "items": viewed, "k": 5},
    ).json()
    challenger = load_version(state["published"], "recommender", "challenger")
    assert treatment["path"] == "item_lookup" and treatment["variant"] == "treatment"
    assert treatment["items"] == challenger.lookup[viewed[-1]][:5]
    single = httpx.post(
        f"{server}/v1/recommendations",
        json={"session_id": _session_for("control"), "items": ["never-seen", viewed[0]], "k": 6},
    ).json()  # one known product: its precomputed list, which is the model's own answer
    assert single["path"] == "item_lookup" and single["unknown_items"] == 1
    assert single["items"] == recommender.model.recommend([viewed[0]], 6)
    # no known product: each variant's own model's popular products
    for variant, loaded in (("control", recommender), ("treatment", challenger)):
        for items in ([], ["never-seen", "nor-this"]):
            body = {"session_id": _session_for(variant, start=100), "items": items, "k": 4}
            cold = httpx.post(f"{server}/v1/recommendations", json=body).json()
            assert (cold["variant"], cold["path"]) == (variant, "popularity")
            assert cold["items"] == loaded.model.recommend([], 4)
            assert cold["unknown_items"] == len(items)

    # the precomputed list of one product
    sku = viewed[0]
    listed = httpx.get(f"{server}/v1/recommendations/products/{sku}", params={"k": 3}).json()
    assert listed["items"] == recommender.lookup[sku][:3]
    missing = httpx.get(f"{server}/v1/recommendations/products/never-seen")
    assert missing.status_code == 404 and "never-seen" in missing.json()["message"]


def test_assignment_over_http_is_stable_and_matches_the_hash(server: str, state: dict):
    viewed = state["sessions"][1][:2]
    seen = Counter()
    with httpx.Client(base_url=server) as client:
        for i in range(200):
            body = {"session_id": f"visitor-{i}", "items": viewed, "k": 3}
            first = client.post("/v1/recommendations", json=body).json()["variant"]
            assert client.post("/v1/recommendations", json=body).json()["variant"] == first
            assert first == stats.assign("recs-ab", f"visitor-{i}", RECS_WEIGHTS)
            seen[first] += 1
    assert 60 < seen["control"] < 140  # 50/50 (the 30k-id tolerance test is in test_serving)


def test_feedback_and_the_log(server: str, state: dict):
    home = state["home"]
    shown = httpx.post(
        f"{server}/v1/conversion/score", json={"session_id": "logged", "events": sample_events(2)}
    ).json()
    for action in ("click", "purchase"):
        ack = httpx.post(
            f"{server}/v1/feedback",
            json={"exposure_id": shown["exposure_id"], "action": action, "item": "sku-1"},
        )
        assert ack.status_code == 200 and ack.json()["recorded"] is True
    records = _log_records(home)
    exposure = next(r for r in records if r.get("id") == shown["exposure_id"])
    assert exposure["variant"] == "control" and exposure["session_id"] == "logged"
    assert exposure["weights"] == {"control": 1.0}
    deadline = time.monotonic() + 5  # the shadow score is written after the response
    while not any(
        r["kind"] == "shadow" and r["exposure_id"] == shown["exposure_id"]
        for r in _log_records(home)
    ):
        assert time.monotonic() < deadline, "no shadow score logged"
        time.sleep(0.1)
    shadow = next(r for r in _log_records(home) if r.get("exposure_id") == shown["exposure_id"])
    assert shadow["role"] == "challenger"
    # what the server writes is what experiment_results reads
    log = stats.read_log(home / "serving")
    table = stats.sessions_table(log.exposures, log.feedback)
    row = table[table["session_id"] == "logged"].iloc[0]
    assert (row["exposures"], row["clicked"], row["purchased"]) == (1, 1, 1)


def test_operations_endpoints(server: str, state: dict):
    httpx.post(f"{server}/v1/recommendations", json={"session_id": "m", "items": ["x"], "k": 2})
    text = httpx.get(f"{server}/metrics").text
    champion = state["versions"][("recommender", "champion")]
    for line in (
        'skiff_http_requests_total{method="POST",route="/v1/recommendations",status="200"}',
        'skiff_http_request_duration_seconds_bucket{le="0.01",route="/v1/recommendations"}',
        'skiff_http_request_duration_seconds_bucket{le="+Inf",route="/v1/conversion/score"}',
        'skiff_model_info{algorithm="sknn",problem="recommender",role="champion",'
        f'version="{champion}"}} 1',
        'skiff_recommendations_total{path="popularity"}',
        'skiff_unknown_products_total{endpoint="recommendations"}',
        'skiff_model_errors_total{problem="recommender",role="challenger"}',
        'skiff_experiment_weight{experiment="recs-ab",problem="recommender",stage="",'
        'variant="treatment"} 0.5',
    ):
        assert line in text, line
    assert "# TYPE skiff_http_request_duration_seconds histogram" in text
    for process in ("process_cpu_seconds_total ", "process_resident_memory_bytes ", "python_info{"):
        assert process in text, process

    assert httpx.get(f"{server}/docs").status_code == 200
    schemas = httpx.get(f"{server}/openapi.json").json()["components"]["schemas"]
    for name in ("ConversionRequest", "RecommendationRequest", "Feedback"):
        assert schemas[name]["examples"], name

    assert httpx.get(f"{server}/reports/monitoring/drift.html").text == "<h1>drift</h1>"
    for sneaky in ("/reports/../experiments.json", "/reports/%2e%2e/experiments.json"):
        request = httpx.Request("GET", server + sneaky)
        request.url = httpx.URL(server + sneaky)  # keep the dots: no client-side normalization
        with httpx.Client() as client:
            assert client.send(request).status_code == 404, sneaky


def _one(**changes: object) -> dict:
    """A conversion request whose single product event has `changes`."""
    return {"session_id": "s", "events": [{**sample_events(2)[1], **changes}]}


SCORE, RECS, FEEDBACK = "/v1/conversion/score", "/v1/recommendations", "/v1/feedback"


def test_the_demo_curl_line_works(server: str, state: dict, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SKIFF_SERVE_URL", server)
    monkeypatch.setenv("SKIFF_HOME", str(state["home"]))
    monkeypatch.delenv("SKIFF_ARTIFACTS_URL", raising=False)
    hint = serve_hint(load_settings())
    assert "skiff serve" in hint
    curl = hint.splitlines()[-1].strip()
    assert curl.startswith("curl ")
    answer = json.loads(subprocess.run(curl, shell=True, capture_output=True, check=True).stdout)
    assert answer["path"] == "model" and len(answer["items"]) == 5


@pytest.mark.parametrize(
    "path, body, field",
    [
        (SCORE, {"session_id": "s", "events": []}, "events"),
        (SCORE, {"session_id": "s"}, "events"),
        (SCORE, {"session_id": 5, "events": sample_events(1)}, "session_id"),
        (SCORE, _one(event_at="soon"), "events.0.event_at"),
        (SCORE, _one(event_at="1969-12-31T23:00:00"), "events.0.event_at"),
        (SCORE, _one(product_action="wish"), "events.0.product_action"),
        (SCORE, _one(product_action="purchase"), "purchase"),
        (SCORE, _one(price_bucket=11), "events.0.price_bucket"),
        (SCORE, _one(colour="red"), "events.0.colour"),
        (SCORE, {"session_id": "s", "events": sample_events(MAX_EVENTS + 1)}, "events: at most 50"),
        (RECS, {"session_id": "s", "items": "abc"}, "items"),
        (RECS, {"session_id": "s", "items": ["a"], "k": 0}, "k"),
        (RECS, {"session_id": "s", "items": [""]}, "items.0"),
        (RECS, {"session_id": "s", "items": ["a"] * (MAX_EVENTS + 1)}, "items: at most"),
        (RECS, {"session_id": "s", "items": ["x" * 100] * 300}, "body: the request body is"),
        (FEEDBACK, {"exposure_id": "not-an-id", "action": "click"}, "exposure_id"),
        (FEEDBACK, {"exposure_id": "0" * 32, "action": "share"}, "action"),
    ],
)
def test_bad_requests_get_a_422_naming_the_field(server: str, path: str, body: dict, field: str):
    response = httpx.post(server + path, json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["message"], response.json()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
EVENT = st.fixed_dictionaries(
    {
        "event_type": st.sampled_from(["pageview", "event_product"]) | JSON,
        "event_at": st.integers(-(2**70), 2**70) | st.datetimes().map(str) | JSON,
    },
    optional={
        "product_action": st.sampled_from(["detail", "add", "remove", "click", "purchase", None]),
        "product_sku": st.text(max_size=200) | st.none(),
        "category": st.text(max_size=300) | st.none(),
        "price_bucket": st.integers(-5, 15) | st.floats() | st.none(),
    },
)
BODIES = {
    "/v1/conversion/score": st.fixed_dictionaries(
        {"session_id": st.text(max_size=200) | JSON, "events": st.lists(EVENT, max_size=8) | JSON}
    ),
    "/v1/recommendations": st.fixed_dictionaries(
        {
            "session_id": st.text(max_size=200) | JSON,
            "items": st.lists(st.text(max_size=40), max_size=8) | JSON,
        },
        optional={"k": st.integers(-10, 200) | JSON},
    ),
    "/v1/feedback": st.fixed_dictionaries(
        {
            "exposure_id": st.from_regex(r"[0-9a-f]{32}", fullmatch=True) | st.text(max_size=40),
            "action": st.sampled_from(["click", "add", "purchase", "view"]) | JSON,
        },
        optional={"item": st.text(max_size=200) | JSON},
    ),
}


@pytest.mark.parametrize("path", sorted(BODIES))
def test_fuzzed_bodies_never_get_a_500(server: str, path: str):
    """Schema-shaped bodies with every field sometimes wrong, and any JSON at all."""
    with httpx.Client(base_url=server, timeout=10) as client:

        @settings(
            max_examples=120,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(body=BODIES[path] | JSON)
        def check(body: object) -> None:
            response = client.post(
                path, content=json.dumps(body), headers={"content-type": "application/json"}
            )
            assert response.status_code in (200, 422), (body, response.text)

        check()
        for raw in (
            b"",
            b"{",
            b"\xff\xfe",
            b"[" * 5000,
            b'{"session_id": NaN}',
            b'{"session_id": "s", "events": [{"\\ud800": 1}], "\\udfff": 2}',
        ):
            response = client.post(path, content=raw, headers={"content-type": "application/json"})
            assert response.status_code == 422, (raw[:20], response.text)
    metrics = httpx.get(f"{server}/metrics").text
    assert "skiff_http_errors_total{" not in metrics


def _ingestible(event: dict) -> dict:
    """`event` as the contract accepts it (the generator also draws pageviews with an action
    and product events without one or without a sku, which ingestion quarantines): a pageview
    loses its action, a product event gets `detail` and `sku-a` where it lacks them, and the
    sku is stripped as ingestion strips it."""
    sku = (event["product_sku"] or "").strip() or None
    if event["event_type"] == "pageview":
        return {**event, "product_action": None, "product_sku": sku}
    return {
        **event,
        "product_action": event["product_action"] or "detail",
        "product_sku": sku or "sku-a",
    }


def _iso(ms: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)).isoformat()


def test_every_valid_event_sequence_gets_a_probability(server: str, state: dict):
    """Sequences the API accepts, in any order of types and actions (a remove first, repeats,
    equal and shuffled times, up to the event limit, times in ms or ISO 8601): each gets a 200
    with a finite probability in [0, 1], the one the champion gives locally."""
    champion = load_version(state["published"], "conversion", "champion").model
    with httpx.Client(base_url=server, timeout=10) as client:

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(events=event_sequences(MAX_EVENTS), iso=st.lists(st.booleans(), min_size=1))
        @example(events=REMOVE_FIRST[:1], iso=[False])
        @example(events=REMOVE_FIRST * 10, iso=[True, False])
        def check(events: list[dict], iso: list[bool]) -> None:
            events = [_ingestible(e) for e in events]
            sent = [
                {**e, "event_at": _iso(e["event_at"])} if iso[i % len(iso)] else e
                for i, e in enumerate(events)
            ]
            response = client.post(SCORE, json={"session_id": "fuzz", "events": sent})
            assert response.status_code == 200, (events, response.text)
            probability = response.json()["probability"]
            assert math.isfinite(probability) and 0 <= probability <= 1, probability
            local = conversion_probability(champion, time_ordered(events))
            assert probability == pytest.approx(local, abs=1e-9)

        check()
    assert "skiff_http_errors_total{" not in httpx.get(f"{server}/metrics").text


def test_feedback_survives_kill_9(state: dict):
    """An acknowledged feedback is in the log after the server is killed without warning."""
    home = state["home"]
    exposure_id = "ab" * 16
    with serve(home, home / "killed.log") as (url, proc):
        ack = httpx.post(f"{url}/v1/feedback", json={"exposure_id": exposure_id, "action": "add"})
        assert ack.status_code == 200
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    with serve(home, home / "restarted.log") as (url, _):
        later = httpx.post(f"{url}/v1/feedback", json={"exposure_id": "cd" * 16, "action": "add"})
        assert later.status_code == 200
        records = _log_records(home)  # every line parses: nothing torn
    ids = [r["exposure_id"] for r in records if r["kind"] == "feedback"]
    assert exposure_id in ids and "cd" * 16 in ids


# --- the release loop's side: experiments.json from the rollout controller, richer records --


@pytest.fixture(scope="module")
def ramp_state(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Another published state, served without an operator's file: the conversion challenger
    raises on every call (fitted on 2 features, scored on all of them)."""
    from ml.conversion import models

    home = tmp_path_factory.mktemp("ramp")
    built = publish_models(home, tmp_path_factory.mktemp("ramp-landing"), days=2, sessions=300)
    broken = models.make_model("logistic")
    broken.estimator = broken._estimator().fit([[0.0, 0.0], [1.0, 1.0]], [0, 1])
    registry = built["registry"]
    manifest = models.register_model(registry, broken, metrics={}, training_window={})
    registry.assign("conversion", "challenger", manifest.version, "broken on purpose")
    registry.publish("conversion", built["published"])
    built["versions"][("conversion", "challenger")] = manifest.version
    return {**built, "home": home}


@pytest.fixture(scope="module")
def ramp_server(ramp_state: dict) -> Iterator[str]:
    home = ramp_state["home"]
    with serve(home, home / "server.log") as (url, _):
        yield url


def _publish_experiments(published: Path, content: str) -> None:
    """Write experiments.json the way the rollout controller does: whole, then renamed."""
    temporary = published / "experiments.json.tmp"
    temporary.write_text(content)
    os.replace(temporary, published / "experiments.json")


def _wait_for(check, what: str, seconds: float = 10) -> float:
    """Poll `check()` until true; the seconds it took."""
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < seconds, what
        time.sleep(0.05)
    return time.monotonic() - began


def _challenger_sessions(server: str, ids: list[str], item: str) -> set[str]:
    """The session ids (of `ids`) the server answers from the recommender challenger (4
    clients at once)."""
    from concurrent.futures import ThreadPoolExecutor

    def variants(part: list[str]) -> dict[str, str]:
        with httpx.Client(base_url=server, timeout=10) as client:
            body = {"items": [item], "k": 3}
            return {s: client.post(RECS, json={**body, "session_id": s}).json()["variant"]
                    for s in part}  # fmt: skip

    answered: dict[str, str] = {}
    with ThreadPoolExecutor(4) as pool:
        for part in pool.map(variants, [ids[i::4] for i in range(4)]):
            answered |= part
    return {s for s, variant in answered.items() if variant == "challenger"}


def _record(home: Path, exposure_id: str, kind: str = "exposure") -> dict:
    key = "id" if kind == "exposure" else "exposure_id"
    found = [r for r in _log_records(home) if r["kind"] == kind and r.get(key) == exposure_id]
    assert len(found) == 1, (kind, exposure_id, found)
    return found[0]


def test_records_carry_what_the_release_loop_reads(ramp_server: str, ramp_state: dict):
    """Exposures log stage, latency, error and the request's history; the conversion
    challenger runs in shadow (the default) and its failures are logged as shadow errors."""
    home, viewed = ramp_state["home"], ramp_state["sessions"][0][:3]
    events = sample_events(7)  # 2 of them add to cart
    scored = httpx.post(f"{ramp_server}{SCORE}", json={"session_id": "rich", "events": events})
    assert scored.status_code == 200, scored.text
    exposure = _record(home, scored.json()["exposure_id"])
    assert exposure["probability"] == scored.json()["probability"]
    assert (exposure["stage"], exposure["error"]) == (None, False)
    assert (exposure["history_events"], exposure["history_adds"]) == (7, 2)
    assert 0 < exposure["latency_ms"] < 5_000
    recs = httpx.post(f"{ramp_server}{RECS}", json={"session_id": "rich", "items": viewed})
    record = _record(home, recs.json()["exposure_id"])
    assert record["path"] == "model" and record["items"] == recs.json()["items"]
    # the default exploration: 5% of answers shuffle the top 20 (= k); a propensity is
    # 0.95 + 0.05/20 where the item is at its rank, else 0.05/20 (tests/test_serving_explore.py)
    assert (record["mode"], record["context"], exposure["mode"]) == ("ab", viewed, "ab")
    assert record["logging_policy"] == "shuffle:top20:0.05"
    assert len(record["propensities"]) == len(record["items"]) == 20
    assert {round(p, 9) for p in record["propensities"]} <= {0.9525, 0.0025}
    assert (record["history_events"], record["history_adds"], record["error"]) == (3, 0, False)
    assert record["latency_ms"] > 0
    _wait_for(
        lambda: any(r.get("exposure_id") == exposure["id"] for r in _log_records(home)),
        "no shadow record",
    )
    shadow = _record(home, exposure["id"], "shadow")
    assert shadow["role"] == "challenger" and shadow["error"] is True
    assert "probability" not in shadow and 0 < shadow["latency_ms"] < 5_000


def test_published_experiments_ramp_the_challenger(ramp_server: str, ramp_state: dict):
    """experiments.json moves traffic within a reload and only champion sessions move; an
    invalid file keeps the running weights and is counted; a failing model call is a 500
    logged with error=true; a removed file falls back to the published roles."""
    home, published, versions = ramp_state["home"], ramp_state["published"], ramp_state["versions"]
    champion, challenger = (versions[("recommender", r)] for r in ("champion", "challenger"))
    name = f"recommender:{champion}:vs:{challenger}"
    item, viewed = ramp_state["sessions"][1][0], ramp_state["sessions"][0][:3]
    ids = [f"shopper-{i}" for i in range(2_000)]

    def stage() -> str | None:
        return httpx.get(f"{ramp_server}/readyz").json()["experiments"]["recommender"]["stage"]

    def ramp(share: float, label: str) -> str:
        spec = {
            "name": name,
            "stage": label,
            "variants": [
                {"name": "challenger", "role": "challenger", "weight": share},
                {"name": "champion", "role": "champion", "weight": 1 - share},
            ],
            "shadow": None,
        }
        conversion = {**spec, "name": "conversion-ramp", "stage": "50%"}
        conversion["variants"] = [{**v, "weight": 0.5} for v in spec["variants"]]
        return json.dumps({"recommender": spec, "conversion": conversion})

    assert _challenger_sessions(ramp_server, ids, item) == set()  # shadow mode: none shown
    served = {}
    for share, label in ((0.05, "5%"), (0.25, "25%")):
        _publish_experiments(published, ramp(share, label))
        took = _wait_for(lambda label=label: stage() == label, f"{label} not applied")
        assert took < 2  # the server reloads every 0.2 s
        served[share] = _challenger_sessions(ramp_server, ids, item)
        weights = [("challenger", share), ("champion", 1 - share)]
        assert served[share] == {s for s in ids if stats.assign(name, s, weights) == "challenger"}
        assert abs(len(served[share]) / len(ids) - share) < 4 * math.sqrt(share * (1 - share) / 2e3)
    assert served[0.05] <= served[0.25]
    metrics = httpx.get(f"{ramp_server}/metrics").text
    gauge = f'skiff_experiment_weight{{experiment="{name}",problem="recommender",stage="25%",'
    assert gauge + 'variant="challenger"} 0.25' in metrics

    # an exposure of the 25% stage carries it; the broken challenger's fallback is an error
    sid = sorted(served[0.25])[0]
    recs = httpx.post(f"{ramp_server}{RECS}", json={"session_id": sid, "items": viewed}).json()
    record = _record(home, recs["exposure_id"])
    assert (record["stage"], record["role"], record["path"], record["error"]) == (
        "25%",
        "challenger",
        "item_lookup",
        True,
    )
    assert record["weights"] == {"challenger": 0.25, "champion": 0.75}

    # the conversion challenger raises: a 500, and an exposure with error=true, no answer
    weights = [("challenger", 0.5), ("champion", 0.5)]
    sid = next(s for s in ids if stats.assign("conversion-ramp", s, weights) == "challenger")
    errors = 'skiff_model_errors_total{problem="conversion",role="challenger"}'
    failed = httpx.post(
        f"{ramp_server}{SCORE}", json={"session_id": sid, "events": sample_events(4)}
    )
    assert failed.status_code == 500
    (record,) = [
        r
        for r in _log_records(home)
        if r.get("problem") == "conversion" and r.get("session_id") == sid
    ]
    assert (record["role"], record["error"], record["stage"]) == ("challenger", True, "50%")
    assert "probability" not in record and record["history_events"] == 4
    assert record["latency_ms"] > 0
    assert errors in httpx.get(f"{ramp_server}/metrics").text

    # an invalid file is refused: the 25% weights keep running; a fixed file is applied
    refused = "skiff_experiment_config_refusals_total 1.0"
    _publish_experiments(published, ramp(0.5, "50%").replace('"weight": 0.5', '"weight": -1'))
    _wait_for(lambda: refused in httpx.get(f"{ramp_server}/metrics").text, "not refused")
    assert stage() == "25%"
    assert _challenger_sessions(ramp_server, ids, item) == served[0.25]
    _publish_experiments(published, ramp(0.5, "50%"))
    _wait_for(lambda: stage() == "50%", "the fixed file was not applied")

    (published / "experiments.json").unlink()
    _wait_for(lambda: stage() is None, "the removed file still runs")
    running = httpx.get(f"{ramp_server}/readyz").json()["experiments"]["recommender"]
    assert running["name"] == f"recommender:{champion}:shadow:{challenger}"
    assert refused in httpx.get(f"{ramp_server}/metrics").text


def _load(server: str, stop: threading.Event, outcomes: list, versions: Counter, viewed) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = client.post(
                    "/v1/recommendations",
                    json={"session_id": _session_for("control", i % 50), "items": viewed},
                )
                outcomes.append(r.status_code)
                if r.status_code == 200:
                    versions[r.json()["model_version"]] += 1
                s = client.post(
                    "/v1/conversion/score", json={"session_id": f"c{i}", "events": sample_events(4)}
                )
                outcomes.append(s.status_code)
            except httpx.HTTPError as exc:
                outcomes.append(repr(exc))


def test_hot_reload_under_load_and_a_tampered_artifact_is_refused(server: str, state: dict):
    registry, published = state["registry"], state["published"]
    viewed = state["sessions"][2][:3]
    old = state["versions"][("recommender", "champion")]
    stop, outcomes, versions = threading.Event(), [], Counter()
    workers = [
        threading.Thread(target=_load, args=(server, stop, outcomes, versions, viewed))
        for _ in range(4)
    ]
    for w in workers:
        w.start()
    try:
        time.sleep(1)
        new = register_recommender(
            registry, make_model("sknn", k_neighbors=20).fit(state["sessions"])
        )
        registry.assign("recommender", "champion", new, "hot reload test")
        registry.publish("recommender", published, roles=("champion",))
        deadline = time.monotonic() + 20
        while versions[new] < 20:
            assert time.monotonic() < deadline, f"never served {new}: {versions}"
            time.sleep(0.1)

        # a version whose lookup was altered after its manifest was written: refused
        staging = state["home"] / "staging"
        bad = register_recommender(
            registry, make_model("sknn", k_neighbors=10).fit(state["sessions"])
        )
        registry.assign("recommender", "champion", bad, "tamper test")
        registry.publish("recommender", staging, roles=("champion",))
        with open(staging / "recommender" / bad / "next_items.parquet", "ab") as handle:
            handle.write(b"tampered")
        shutil.copytree(staging / "recommender" / bad, published / "recommender" / bad)
        pointer = published / "recommender" / "champion.json.tmp"
        shutil.copy(staging / "recommender" / "champion.json", pointer)
        os.replace(pointer, published / "recommender" / "champion.json")
        failure = 'skiff_model_reload_failures_total{problem="recommender",role="champion"} '
        deadline = time.monotonic() + 20
        while failure + "0.0" in (text := httpx.get(f"{server}/metrics").text) or (
            failure not in text
        ):
            assert time.monotonic() < deadline, "the tampered version was not refused"
            time.sleep(0.1)
        served_before = versions[new]
        time.sleep(1)
        assert versions[new] > served_before and versions[bad] == 0
        # refused, shown, and tried again with backoff (it stays refused: its hash is wrong)
        refused = httpx.get(f"{server}/readyz").json()["reload_failures"]["recommender/champion"]
        assert refused["version"] == bad and "does not match" in refused["error"], refused
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
    assert versions[old] > 0 and versions[new] > 0
    failed = [o for o in outcomes if o != 200]
    assert not failed and len(outcomes) > 200, (len(outcomes), Counter(map(str, failed)))
    info = f'role="champion",version="{new}"}} 1'
    assert info in httpx.get(f"{server}/metrics").text
    assert (
        load_published(published, "conversion")[0].version
        == state["versions"][("conversion", "champion")]
    )
