"""Prometheus metrics (prometheus_client): counters, one latency histogram by route, the
process's own metrics, and the model store's gauges read at scrape time.

Each app has its own `CollectorRegistry`, so several apps in one process (the tests) count
apart. Label values come from a closed set (route templates, problems, roles, versions,
outcomes), never from request data, so a flood of odd URLs cannot grow the series without bound.

`skiff serve` is one process; replicas are scraped one by one. Under several worker processes
(gunicorn, `uvicorn --workers`) prometheus_client's multiprocess mode would be needed
(`PROMETHEUS_MULTIPROC_DIR` and a `MultiProcessCollector` at scrape time), and it supports
neither custom collectors (the store's gauges) nor the process collector.
"""

from __future__ import annotations

import time

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The `*_created` series would double the count of series for timestamps nobody reads.
prometheus_client.disable_created_metrics()

_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_PLAIN_0_0_4

COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "skiff_http_requests_total": (
        "HTTP requests by route, method and status code.", ("route", "method", "status")
    ),
    "skiff_http_errors_total": (
        "Requests that failed in the server (status 5xx) by route.", ("route",)
    ),
    "skiff_model_reloads_total": (
        "Published models loaded (startup and hot reloads).", ("problem", "role")
    ),
    "skiff_model_reload_failures_total": (
        "Failed tries to load a published model (unreachable, incomplete or failing "
        "verification); the previous model kept serving and the load is retried with backoff.",
        ("problem", "role"),
    ),
    "skiff_model_errors_total": (
        "Model calls that raised (the request fell back or failed).", ("problem", "role")
    ),
    "skiff_experiment_config_refusals_total": (
        "Published experiments.json files refused (unparsable or invalid); the running "
        "experiments kept.",
        (),
    ),
    "skiff_recommendations_total": (
        "Recommendation answers by the path that answered.", ("path",)
    ),
    "skiff_explored_recommendations_total": (
        "Recommendation answers shuffled for exploration (see serving.showing).", ()
    ),
    "skiff_unknown_products_total": (
        "Products in requests that the serving model does not know.", ("endpoint",)
    ),
    "skiff_exposures_total": ("Exposures logged by problem and variant.", ("problem", "variant")),
    "skiff_shadow_scores_total": (
        "Shadow scores computed (not shown) by problem and role.", ("problem", "role")
    ),
    "skiff_feedback_total": ("Feedback records acknowledged by action.", ("action",)),
    "skiff_event_log_errors_total": ("Writes to the event log that failed.", ()),
    "skiff_rejected_requests_total": ("Requests refused with a 422 by reason.", ("reason",)),
    "skiff_model_batches_total": ("Batched model calls (see serving.batching).", ()),
    "skiff_model_batch_items_total": ("Requests answered by batched model calls.", ()),
}  # fmt: skip


class Metrics:
    """The app's registry, and its counters by name (`inc` checks the labels they declare)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._counters = {
            name: Counter(name, help_text, labels, registry=self.registry)
            for name, (help_text, labels) in COUNTERS.items()
        }
        self._latency = Histogram(
            "skiff_http_request_duration_seconds",
            "Time from request to the end of the response, by route.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        prometheus_client.GCCollector(registry=self.registry)

    def inc(self, name: str, value: float = 1, **labels: object) -> None:
        counter = self._counters[name]
        (counter.labels(**labels) if labels else counter).inc(value)

    def value(self, name: str, **labels: object) -> float:
        found = self.registry.get_sample_value(name, {k: str(v) for k, v in labels.items()})
        return found or 0.0

    def observe(self, route: str, seconds: float) -> None:
        self._latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        """The text exposition format 0.0.4 (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


_PLAIN_ROUTES = {"/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"}


def _route_of(path: str) -> str:
    """A label for requests no API route matched (FastAPI's own pages, the reports mount,
    refusals before routing, 404s): never the raw path."""
    if path in _PLAIN_ROUTES:
        return path
    return "/reports" if path.startswith("/reports/") else "unmatched"


class MetricsMiddleware:
    """Counts and times every request by its route template (plain ASGI: no per-request
    task or body copy, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or _route_of(scope["path"])
            self.metrics.observe(route, time.perf_counter() - began)
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.inc("skiff_http_requests_total", route=route, method=method, status=status)
            if status >= 500:
                self.metrics.inc("skiff_http_errors_total", route=route)
