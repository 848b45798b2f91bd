"""The server as the shop: `simulate` runs sessions against it over HTTP and reports each
variant's true and observed click-through and conversion (`SimulationReport`)."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import httpx

from ml.simulate.session import RECOMMENDER, Answer, Session, run_session
from ml.simulate.world import DEFAULT_SHOPPER, ShopperModel, World

log = logging.getLogger("skiff.simulate")


class _Http:
    """The shop as the real server: requests as a client sends them; any failure (a
    non-200 answer, a timeout, a refused connection) is counted by endpoint and reason and
    the session goes on without that answer."""

    scores = True

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.lock = threading.Lock()
        self.requests = 0
        self.errors: Counter[str] = Counter()

    def _post(self, path: str, body: dict) -> dict | None:
        reason = None
        try:
            response = self.client.post(path, json=body)
            if response.status_code != 200:
                reason = str(response.status_code)
        except httpx.HTTPError as exc:
            reason = type(exc).__name__
        with self.lock:
            self.requests += 1
            if reason is not None:
                self.errors[f"{path} {reason}"] += 1
        return None if reason is not None else response.json()

    def _answer(self, data: dict | None, key: str) -> Answer | None:
        if data is None:
            return None
        return Answer(
            data[key],
            data["variant"],
            data["experiment"],
            data["model_version"],
            data["exposure_id"],
        )

    def recommend(self, session_id: str, items: list[str], k: int) -> Answer | None:
        body = {"session_id": session_id, "items": items, "k": k}
        return self._answer(self._post("/v1/recommendations", body), "items")

    def score(self, session_id: str, events: list[dict]) -> Answer | None:
        body = {"session_id": session_id, "events": events}
        return self._answer(self._post("/v1/conversion/score", body), "probability")

    def feedback(self, answer: Answer, action: str, item: str | None) -> None:
        body = {"exposure_id": answer.exposure_id, "action": action, "item": item}
        self._post("/v1/feedback", body)


@dataclass(frozen=True)
class VariantReport:
    """One (problem, experiment, variant) as the server answered it, with the truth.

    A session counts in every group it had an exposure in. Click-through is per exposure
    (widgets; None for conversion), conversion per session."""

    problem: str
    experiment: str
    variant: str
    model_versions: tuple[str, ...]
    sessions: int
    exposures: int
    expected_clicks: float
    clicks: int
    true_ctr: float | None
    observed_ctr: float | None
    nudged: int
    purchases: int
    true_conversion: float
    observed_conversion: float


@dataclass(frozen=True)
class SimulationReport:
    base_url: str
    regime: str
    seed: int
    sessions_planned: int
    sessions_run: int  # fewer than planned when the time budget ran out
    requests: int
    errors: dict[str, int]  # "<endpoint> <status or exception>" -> count
    seconds: float
    variants: tuple[VariantReport, ...]

    @property
    def error_share(self) -> float:
        return sum(self.errors.values()) / self.requests if self.requests else 0.0

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "error_share": self.error_share}, indent=2)

    def table(self) -> str:
        """Per variant: true and observed click-through and conversion."""
        head = (
            f"{'problem':<12} {'variant':<12} {'sessions':>8} {'exposures':>9} "
            f"{'true CTR':>8} {'CTR':>7} {'true conv':>9} {'conv':>7}  model"
        )
        lines = [head]
        for v in self.variants:
            ctr = "" if v.true_ctr is None else f"{v.true_ctr:8.3f} {v.observed_ctr:7.3f}"
            lines.append(
                f"{v.problem:<12} {v.variant:<12} {v.sessions:>8,} {v.exposures:>9,} "
                f"{ctr:>16} {v.true_conversion:9.3f} {v.observed_conversion:7.3f}  "
                f"{','.join(v.model_versions)}"
            )
        errors = sum(self.errors.values())
        lines.append(
            f"{self.sessions_run:,}/{self.sessions_planned:,} sessions in {self.seconds:.1f} s, "
            f"{self.requests:,} requests, {errors:,} errors ({self.error_share:.1%})"
            + "".join(f"\n  {k}: {n:,}" for k, n in sorted(self.errors.items()))
        )
        return "\n".join(lines)


def ready(base_url: str, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Whether the server answers /readyz with 200, and what it said."""
    try:
        response = httpx.get(f"{base_url.rstrip('/')}/readyz", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return response.status_code == 200, response.text


def simulate(
    base_url: str,
    world: World,
    sessions: int,
    seed: int,
    *,
    rate: float | None = None,
    concurrency: int = 4,
    timeout_s: float = 600.0,
    request_timeout_s: float = 10.0,
    shopper: ShopperModel = DEFAULT_SHOPPER,
    progress: Callable[[str], None] | None = None,
) -> SimulationReport:
    """`sessions` shoppers against the server at `base_url`, `concurrency` at a time, started
    at `rate` sessions per second (None: as fast as they finish). Sessions not started within
    `timeout_s` are not run; a started one finishes (each request is bounded by
    `request_timeout_s`). Progress about every 10% of the sessions, to `progress` (default:
    the log)."""
    if sessions < 0 or concurrency < 1 or (rate is not None and rate <= 0):
        raise ValueError(
            f"sessions ({sessions}) must be >= 0, concurrency ({concurrency}) >= 1 and "
            f"rate ({rate}) None or > 0"
        )
    say = progress or log.info
    began = time.monotonic()
    results: list[Session | None] = [None] * sessions
    finished: list[int] = []
    every = max(1, math.ceil(sessions / 10))
    limits = httpx.Limits(max_connections=concurrency)
    with httpx.Client(base_url=base_url, timeout=request_timeout_s, limits=limits) as client:
        shop = _Http(client)

        def one(i: int) -> None:
            start = began + (i / rate if rate is not None else 0.0)
            if start - began > timeout_s or time.monotonic() - began > timeout_s:
                return
            time.sleep(max(0.0, start - time.monotonic()))
            results[i] = run_session(world, shop, shopper, seed, i)
            with shop.lock:
                finished.append(i)
                count, errors = len(finished), sum(shop.errors.values())
            if count % every == 0 or count == sessions:
                say(
                    f"simulate: {count:,}/{sessions:,} sessions, "
                    f"{time.monotonic() - began:.1f} s, {errors:,} errors"
                )

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for future in [pool.submit(one, i) for i in range(sessions)]:
                future.result()
    run = [s for s in results if s is not None]
    return SimulationReport(
        base_url=base_url,
        regime=world.regime,
        seed=seed,
        sessions_planned=sessions,
        sessions_run=len(run),
        requests=shop.requests,
        errors=dict(sorted(shop.errors.items())),
        seconds=round(time.monotonic() - began, 3),
        variants=_variants(run),
    )


def _variants(run: list[Session]) -> tuple[VariantReport, ...]:
    """Group the exposures by (problem, experiment, variant), sessions in index order."""
    groups: dict[tuple[str, str, str], dict] = defaultdict(
        lambda: {"versions": set(), "sessions": [], "exposures": 0, "expected": 0.0, "clicks": 0}
    )
    for s in run:
        for e in s.exposures:
            key = (e.problem, str(e.answer.experiment), str(e.answer.variant))
            g = groups[key]
            g["versions"].add(str(e.answer.model_version))
            if not g["sessions"] or g["sessions"][-1] is not s:
                g["sessions"].append(s)
            g["exposures"] += 1
            g["expected"] += e.expected_click
            g["clicks"] += e.clicked
    out = []
    for (problem, experiment, variant), g in sorted(groups.items()):
        members = g["sessions"]
        widgets = problem == RECOMMENDER
        out.append(
            VariantReport(
                problem=problem,
                experiment=experiment,
                variant=variant,
                model_versions=tuple(sorted(g["versions"])),
                sessions=len(members),
                exposures=g["exposures"],
                expected_clicks=g["expected"],
                clicks=g["clicks"],
                true_ctr=g["expected"] / g["exposures"] if widgets else None,
                observed_ctr=g["clicks"] / g["exposures"] if widgets else None,
                nudged=sum(s.nudged for s in members),
                purchases=sum(s.purchased for s in members),
                true_conversion=sum(s.purchase_probability for s in members) / len(members),
                observed_conversion=sum(s.purchased for s in members) / len(members),
            )
        )
    return tuple(out)
