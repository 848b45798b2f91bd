"""The server as production runs it, end to end: a real uvicorn server on 127.0.0.1 (this
module run as a script: `serving.app.serve` with one extra conversion algorithm registered),
real HTTP, models registered and published through `ml.registry`, and a real S3-compatible
server (moto, `tests.objectstore`) holding the published models and the reports.

- Inference runs off the event loop: while a batch of a model that computes for 3 s in pure
  Python (holding the GIL but for the interpreter's switch interval, the worst case for a
  thread) runs, /readyz, /metrics, /healthz and feedback answer in well under 0.5 s, and the
  requests that arrived meanwhile go together into the next batch.
- Loading from object storage leaves no temporary copy in the server's private TMPDIR.
- A published version whose file is missing (mid-publish) is retried with backoff: the old
  model keeps serving, the failure shows in /readyz and /metrics, and once the file arrives
  the new version serves without the pointer changing again.
- /reports serves the objects under `<SKIFF_ARTIFACTS_URL>/reports`, 404 on a missing one,
  and refuses every way out of that root.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Self

import httpx
import numpy as np
import pytest

from ml.conversion import models
from ml.registry import Registry
from serving.reports import safe_relpath
from tests.servers import free_port, running, sample_events
from tests.test_serving import WINDOW, publish_models

pytestmark = pytest.mark.e2e

SLOW_SECONDS = 3.0
QUICK = 0.5  # what an operations endpoint must answer within while a batch runs
SCORE = "/v1/conversion/score"
# the developer's own settings must not leak into the server under test
LEAKY = ("SKIFF_SERVE", "SKIFF_EXPERIMENTS", "SKIFF_CHALLENGER", "SKIFF_ARTIFACTS_URL")


# --- a conversion model that computes for a while ---------------------------------------------


class SlowEstimator:
    """Scores a batch of feature rows in `seconds` of pure-Python work, whatever its size."""

    def __init__(self, rate: float, seconds: float) -> None:
        self.rate = rate
        self.seconds = seconds

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:  # holds the GIL, as Python code does
            pass
        p = np.full(len(rows), self.rate)
        return np.column_stack([1 - p, p])


class SlowModel(models.MajorityModel):
    """The majority model, scored through a slow estimator (the server's fast path for
    models with an `estimator`: one call per batch)."""

    algorithm: ClassVar[str] = "slow-majority"

    def __init__(self, seconds: float = SLOW_SECONDS) -> None:
        super().__init__()
        self.seconds = seconds

    @property
    def params(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    @property
    def estimator(self) -> SlowEstimator:
        return SlowEstimator(self.rate, self.seconds)

    @classmethod
    def load(cls, folder: Path) -> Self:
        config = models._read_config(folder, cls.algorithm)
        model = cls(**config["params"])
        model.rate = float(config["rate"])
        return model


def main() -> None:
    """The server under test: `skiff serve`'s app, configured by the environment, with the
    slow algorithm known to `ml.conversion.models.load_model`."""
    from serving.app import serve
    from serving.config import ServeConfig
    from skiff.settings import ensure_home, load_settings

    models.ALGORITHMS[SlowModel.algorithm] = SlowModel
    raise SystemExit(serve(ensure_home(load_settings()), ServeConfig.from_env()))


# --- helpers ----------------------------------------------------------------------------------


def server_env(home: Path, port: int, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(LEAKY) and not k.startswith("SKIFF_MANIFEST_KEY")
    }
    return env | {
        "SKIFF_HOME": str(home),
        "SKIFF_ENV": "local",
        "SKIFF_SERVE_PORT": str(port),
        "SKIFF_SERVE_RELOAD_SECONDS": "0.2",
        "SKIFF_SERVE_RELOAD_RETRY_SECONDS": "0.2",
        "SKIFF_SERVE_RELOAD_RETRY_MAX_SECONDS": "0.8",
        **extra,
    }


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value in a Prometheus exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name + (f"{{{wanted}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def timed(
    method: str, url: str, client: httpx.Client | None = None, **kwargs: Any
) -> tuple[httpx.Response, float]:
    """A request and its round trip; `client` (connected already) keeps the client's own set-up
    out of the time."""
    began = time.perf_counter()
    response = (client or httpx).request(method, url, timeout=30, **kwargs)
    return response, time.perf_counter() - began


def wait_for(what: str, check: Any, seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what} did not happen in {seconds:.0f} s"
        time.sleep(0.1)


# --- inference off the event loop -------------------------------------------------------------


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[str]:
    home = tmp_path / "home"
    registry = Registry(home / "artifacts" / "registry")
    model = SlowModel()
    model.rate = 0.25
    manifest = models.register_model(
        registry, model, metrics={"pr_auc": 0.1}, training_window=WINDOW
    )
    registry.assign("conversion", "champion", manifest.version, "slow model test")
    registry.publish("conversion", home / "artifacts" / "published")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = server_env(home, port, SKIFF_SERVE_REQUIRE="conversion")
    argv = [sys.executable, "-m", "tests.test_serving_production"]
    with running(argv, tmp_path / "server.log", f"{url}/readyz", env):
        yield url


def test_operations_answer_while_a_slow_batch_runs(slow_server: str):
    url = slow_server
    answers: dict[str, tuple[int, dict, float]] = {}

    def score(name: str) -> None:
        body = {"session_id": name, "events": sample_events()}
        response, took = timed("POST", f"{url}{SCORE}", json=body)
        answers[name] = (response.status_code, response.json(), took)

    client = httpx.Client()
    client.get(f"{url}/healthz")  # connected before the batch starts
    first = threading.Thread(target=score, args=("first",))
    first.start()
    time.sleep(0.4)  # the first batch is computing now, for SLOW_SECONDS
    queued = [threading.Thread(target=score, args=(f"queued-{i}",)) for i in range(3)]
    for thread in queued:
        thread.start()
    time.sleep(0.1)
    took, responses = {}, {}
    for name, method, path, body in (
        ("readyz", "GET", "/readyz", None),
        ("metrics", "GET", "/metrics", None),
        ("healthz", "GET", "/healthz", None),
        ("feedback", "POST", "/v1/feedback", {"exposure_id": "e" * 32, "action": "click"}),
    ):
        responses[name], took[name] = timed(method, f"{url}{path}", client, json=body)
    assert {name: r.status_code for name, r in responses.items()} == dict.fromkeys(took, 200)
    assert max(took.values()) < QUICK, took
    assert first.is_alive(), "the slow batch ended before the checks: they proved nothing"
    readyz = []
    while first.is_alive() and len(readyz) < 20:
        readyz.append(timed("GET", f"{url}/readyz", client)[1])
    print(f"\nwhile a {SLOW_SECONDS:.0f} s batch ran: {took}; /readyz x{len(readyz)} max "
          f"{max(readyz):.3f} s")  # fmt: skip
    assert len(readyz) >= 3 and max(readyz) < QUICK, readyz
    # the first batch was in flight, the three requests behind it waiting for the next one
    text = responses["metrics"].text
    assert metric(text, "skiff_model_batches_total") == 1
    assert metric(text, "skiff_model_batch_items_total") == 1

    for thread in (first, *queued):
        thread.join(timeout=30)
    client.close()
    assert {name: (status, body["probability"]) for name, (status, body, _) in answers.items()} == {
        name: (200, 0.25) for name in ("first", "queued-0", "queued-1", "queued-2")
    }
    assert all(answers[f"queued-{i}"][2] > 1.5 * SLOW_SECONDS - 0.5 for i in range(3)), answers
    text = httpx.get(f"{url}/metrics").text
    assert metric(text, "skiff_model_batches_total") == 2  # the three queued went together
    assert metric(text, "skiff_model_batch_items_total") == 4


# --- object storage: temporary copies, hot reload, reports -------------------------------------


@pytest.fixture(scope="module")
def s3_served(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Champions (logistic conversion, sknn recommender) published to a fresh bucket, and a
    server on it with a private, empty TMPDIR."""
    import s3fs

    bucket = f"s3://skiff-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    fs.mkdir(bucket.removeprefix("s3://"))
    home = tmp_path_factory.mktemp("s3-served")
    built = publish_models(home, home / "landing", challengers=False, days=2, sessions=200)
    published = f"{bucket}/published"
    for problem in ("conversion", "recommender"):
        built["registry"].publish(problem, published)
    tmp = home / "tmp"
    tmp.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = server_env(home, port, SKIFF_ARTIFACTS_URL=bucket, TMPDIR=str(tmp))
    argv = [sys.executable, "-m", "tests.test_serving_production"]
    with running(argv, home / "server.log", f"{url}/readyz", env):
        yield {**built, "url": url, "bucket": bucket, "fs": fs, "tmp": tmp, "home": home}


def test_no_temporary_copies_remain_after_loading_from_object_storage(s3_served: dict):
    url, versions = s3_served["url"], s3_served["versions"]
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["models"] == {
        "conversion/champion": versions[("conversion", "champion")],
        "recommender/champion": versions[("recommender", "champion")],
    }
    assert sorted(p.name for p in s3_served["tmp"].iterdir()) == []
    # the models are in memory: they answer with their copies gone
    score = httpx.post(f"{url}{SCORE}", json={"session_id": "t", "events": sample_events()})
    assert score.status_code == 200 and 0 < score.json()["probability"] < 1
    viewed = s3_served["sessions"][0][:2]
    recs = httpx.post(f"{url}/v1/recommendations", json={"session_id": "t", "items": viewed})
    assert recs.status_code == 200 and recs.json()["items"]


def test_reports_are_served_from_the_store(s3_served: dict):
    url, bucket, fs = s3_served["url"], s3_served["bucket"], s3_served["fs"]
    html = b"<html><body><h1>drift 2026-01-05</h1></body></html>"
    fs.pipe_file(f"{bucket}/reports/monitoring/drift 2026-01-05.html", html)
    fs.pipe_file(f"{bucket}/reports/experiments/summary.json", b'{"ok": true}')
    fs.pipe_file(f"{bucket}/reports/experiments/index.html", b"<p>index</p>")
    fs.pipe_file(f"{bucket}/secret.txt", b"not a report")

    page = httpx.get(f"{url}/reports/monitoring/drift%202026-01-05.html")
    assert page.status_code == 200 and page.content == html
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    summary = httpx.get(f"{url}/reports/experiments/summary.json")
    assert (summary.json(), summary.headers["content-type"]) == ({"ok": True}, "application/json")
    assert httpx.get(f"{url}/reports/experiments/").text == "<p>index</p>"
    head = httpx.head(f"{url}/reports/monitoring/drift%202026-01-05.html")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(html))
    assert httpx.get(f"{url}/reports/monitoring/missing.html").status_code == 404

    sneaky = (
        "/reports/../secret.txt",
        "/reports/%2e%2e/secret.txt",
        "/reports/..%2fsecret.txt",
        "/reports/monitoring/../../secret.txt",
        "/reports/%252e%252e/secret.txt",
        "/reports//secret.txt",
        "/reports/..%5csecret.txt",
        "/reports/.%2e/published/conversion/champion.json",
    )
    with httpx.Client() as client:
        for path in sneaky:
            request = client.build_request("GET", url + path)
            request.url = httpx.URL(url + path)  # keep the dots: no client-side normalization
            response = client.send(request)
            assert response.status_code == 404, (path, response.text)
            assert b"not a report" not in response.content


def test_safe_relpath():
    assert safe_relpath("monitoring/drift 2026-01-05.html") == "monitoring/drift 2026-01-05.html"
    assert safe_relpath("") == "index.html"
    assert safe_relpath("experiments/") == "experiments/index.html"
    for bad in ("../x", "a/../x", "/etc/passwd", "a//b", ".env", "a\\b", "%2e%2e/x", "a\x00b"):
        assert safe_relpath(bad) is None, bad


def test_a_failed_reload_is_retried_until_the_files_arrive(s3_served: dict):
    """The new version's pointer lands while one of its files is missing: the old model keeps
    serving and the failure shows; the file arrives and the new version serves, the pointer
    untouched since."""
    url, fs, home = s3_served["url"], s3_served["fs"], s3_served["home"]
    registry: Registry = s3_served["registry"]
    published = f"{s3_served['bucket']}/published"
    old = s3_served["versions"][("conversion", "champion")]
    model = models.make_model("majority")
    model.rate = 0.125
    new = models.register_model(
        registry, model, metrics={"pr_auc": 0.1}, training_window=WINDOW
    ).version
    registry.assign("conversion", "champion", new, "hot reload retry test")
    staging = home / "staging"
    registry.publish("conversion", staging, roles=("champion",))
    files = sorted(p for p in (staging / "conversion" / new).rglob("*") if p.is_file())
    late = next(p for p in files if p.name == models.CONFIG_FILE)
    for path in files:
        if path != late:
            fs.put_file(str(path), f"{published}/conversion/{new}/{path.name}")
    fs.put_file(
        str(staging / "conversion" / "champion.json"), f"{published}/conversion/champion.json"
    )

    labels = {"problem": "conversion", "role": "champion"}

    def refused() -> bool:
        text = httpx.get(f"{url}/metrics").text
        return metric(text, "skiff_model_reload_failures_total", **labels) >= 1

    wait_for("a failed load of the incomplete version", refused)

    def failing() -> dict | None:
        failures = httpx.get(f"{url}/readyz").json().get("reload_failures", {})
        found = failures.get("conversion/champion")
        return found if found and found["version"] == new and found["failures"] >= 3 else None

    failure = wait_for("three tries of the incomplete version", failing)
    assert models.CONFIG_FILE in failure["error"] and "missing" in failure["error"]
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200 and ready.json()["models"]["conversion/champion"] == old
    text = httpx.get(f"{url}/metrics").text
    assert metric(text, "skiff_model_reload_failing", **labels) >= 3
    assert metric(text, "skiff_model_reload_failures_total", **labels) >= 3
    score = httpx.post(f"{url}{SCORE}", json={"session_id": "r", "events": sample_events()}).json()
    assert score["model_version"] == old

    fs.put_file(str(late), f"{published}/conversion/{new}/{late.name}")  # the file arrives

    def served_new() -> dict | None:
        body = {"session_id": "r", "events": sample_events()}
        answer = httpx.post(f"{url}{SCORE}", json=body).json()
        return answer if answer["model_version"] == new else None

    answer = wait_for("serving the new version", served_new, seconds=10)
    assert answer["probability"] == pytest.approx(0.125)
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["reload_failures"] == {} and ready["models"]["conversion/champion"] == new
    text = httpx.get(f"{url}/metrics").text
    assert metric(text, "skiff_model_reload_failing", **labels) == 0
    assert sorted(p.name for p in s3_served["tmp"].iterdir()) == []  # nor after the retries


if __name__ == "__main__":
    main()
