"""Prometheus metrics in the text exposition format (0.0.4), written by hand: a few counters,
one latency histogram per route, and gauges read from the model store when scraped.

Label values come from a closed set (route templates, problems, roles, versions, outcomes),
never from request data, so a flood of odd URLs cannot grow the series without bound.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

Labels = tuple[tuple[str, str], ...]

_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

COUNTERS = {
    "skiff_http_requests_total": "HTTP requests by route, method and status code.",
    "skiff_http_errors_total": "Requests that failed in the server (status 5xx) by route.",
    "skiff_model_reloads_total": "Published models loaded (startup and hot reloads).",
    "skiff_model_reload_failures_total": "Published models refused (failed verification or "
    "loading); the previous model kept serving.",
    "skiff_model_errors_total": "Model calls that raised (the request fell back or failed).",
    "skiff_recommendations_total": "Recommendation answers by the path that answered.",
    "skiff_unknown_products_total": "Products in requests that the serving model does not know.",
    "skiff_exposures_total": "Exposures logged by problem and variant.",
    "skiff_shadow_scores_total": "Shadow scores computed (not shown) by problem and role.",
    "skiff_feedback_total": "Feedback records acknowledged by action.",
    "skiff_event_log_errors_total": "Writes to the event log that failed.",
    "skiff_rejected_requests_total": "Requests refused with a 422 by reason.",
    "skiff_model_batches_total": "Batched model calls (see serving.batching).",
    "skiff_model_batch_items_total": "Requests answered by batched model calls.",
}


def _labels(**labels: object) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format(labels: Labels, extra: Labels = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = {n: defaultdict(float) for n in COUNTERS}
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def inc(self, name: str, value: float = 1, **labels: object) -> None:
        with self._lock:
            self._counters[name][_labels(**labels)] += value

    def value(self, name: str, **labels: object) -> float:
        return self._counters[name].get(_labels(**labels), 0.0)

    def observe(self, route: str, seconds: float) -> None:
        with self._lock:
            counts = self._buckets.setdefault(route, [0] * (len(LATENCY_BUCKETS) + 1))
            counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._sums[route] += seconds
            self._counts[route] += 1

    def render(self, gauges: Iterable[tuple[str, str, dict[str, object], float]] = ()) -> str:
        """The exposition text; `gauges` are (name, help, labels, value) read at scrape time."""
        lines: list[str] = []
        with self._lock:
            for name, help_text in COUNTERS.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
                for labels, value in sorted(self._counters[name].items()):
                    lines.append(f"{name}{_format(labels)} {value:g}")
            name = "skiff_http_request_duration_seconds"
            lines += [
                f"# HELP {name} Time from request to the end of the response, by route.",
                f"# TYPE {name} histogram",
            ]
            for route, counts in sorted(self._buckets.items()):
                labels = _labels(route=route)
                cumulative = 0
                for bound, count in zip((*LATENCY_BUCKETS, "+Inf"), counts, strict=True):
                    cumulative += count
                    le = (("le", f"{bound:g}" if bound != "+Inf" else bound),)
                    lines.append(f"{name}_bucket{_format(labels, le)} {cumulative}")
                lines.append(f"{name}_sum{_format(labels)} {self._sums[route]:.6f}")
                lines.append(f"{name}_count{_format(labels)} {self._counts[route]}")
        declared: set[str] = set()
        for name, help_text, labels, value in gauges:
            if name not in declared:
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
                declared.add(name)
            lines.append(f"{name}{_format(_labels(**labels))} {value:g}")
        return "\n".join(lines) + "\n"


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
