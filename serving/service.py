"""What every route shares: the model store, event log, metrics and batcher of one app, and
the experiment flow of a scoring request (assign a variant -> answer -> log the exposure ->
score the shadow role after the response).

Every exposure records what the release guardrails read: the stage of the experiment, the
time the answer took (`latency_ms`: the model call, batching wait included, not the HTTP
round trip), whether the model call raised (`error`), and the size of the request's history
(`history_events`, `history_adds`), a pre-exposure covariate for variance reduction. When the
model call raises and nothing can answer, the exposure is logged with `error` true and no
answer fields, counted, and the exception goes on to the client as a 500, as before. Every
exposure of an experiment logs its `mode` ("ab" or "interleaving").

A request's randomness (the recommender's exploration and team draft, `serving.showing`) comes
from `Assignment.rng`, a generator seeded by the exposure id: a uuid4, so fresh entropy for
every request, and an explored or interleaved answer can be recomputed from its log record and
the model's list.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from fastapi import BackgroundTasks

from serving import predict
from serving.batching import MicroBatcher
from serving.config import PROBLEMS, ServeConfig
from serving.eventlog import EventLog
from serving.experiments import Experiment, Variant, load_file
from serving.limits import Rejected
from serving.metrics import Metrics
from serving.reports import Reports
from serving.rules import CatalogueFile, Rules
from serving.store import Backoff, Loaded, ModelStore, Snapshot
from skiff.settings import Settings

log = logging.getLogger("skiff.serving")

A = TypeVar("A")
AnswerOf = Callable[[Loaded], Awaitable[A]]


def now() -> str:
    """The time of a log record: UTC, ISO 8601, milliseconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _ms_since(began: float) -> float:
    return (time.perf_counter() - began) * 1000


@dataclass(frozen=True)
class History:
    """The size of what a request carried: its events (conversion) or viewed products
    (recommendations), and its add-to-cart events."""

    events: int
    adds: int = 0


class Unavailable(Exception):
    """No model of this problem is published yet (a 503)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


@dataclass(frozen=True)
class Assignment:
    """What answers one request: the experiment, the session's variant and its model, from
    the snapshot the request read, and the id its exposure is logged under."""

    snapshot: Snapshot
    experiment: Experiment
    variant: Variant
    served: Loaded
    exposure_id: str

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(uuid.UUID(self.exposure_id).int)


ShowOf = Callable[[Assignment], Awaitable[A]]


@dataclass(frozen=True)
class Exposure(Generic[A]):
    """A logged answer: what answered (model, experiment, variant) and the answer itself."""

    served: Loaded
    experiment: Experiment
    variant: Variant
    exposure_id: str
    answer: A

    def fields(self) -> dict[str, str]:
        """The fields every scoring response carries besides its answer."""
        return {
            "model_version": self.served.version,
            "algorithm": self.served.manifest.algorithm,
            "experiment": self.experiment.name,
            "variant": self.variant.name,
            "exposure_id": self.exposure_id,
        }


@dataclass(frozen=True)
class Service:
    config: ServeConfig
    store: ModelStore
    events: EventLog
    metrics: Metrics
    batcher: MicroBatcher
    reports: Reports
    catalogue: CatalogueFile

    @classmethod
    def build(cls, settings: Settings, config: ServeConfig) -> Service:
        metrics = Metrics()
        configured = load_file(config.experiments_file) if config.experiments_file else {}
        store = ModelStore(
            settings.published,
            PROBLEMS,
            metrics,
            configured,
            config.challenger_traffic,
            backoff=Backoff(config.reload_retry_seconds, config.reload_retry_max_seconds),
        )
        metrics.registry.register(store)  # its gauges are read at each scrape
        events = EventLog(settings.home / "serving")
        batcher = MicroBatcher(metrics, threads=config.inference_threads)
        catalogue = CatalogueFile(config.catalogue)
        catalogue.refresh()  # a catalogue that cannot be read stops the start, naming it
        reports = Reports(settings.reports_root)
        return cls(config, store, events, metrics, batcher, reports, catalogue)

    def rules(
        self,
        viewed: list[str],
        exclude_viewed: bool | None,
        exclude_unavailable: bool | None,
        max_per_category: int | None,
    ) -> Rules:
        """The business rules of one recommendation request: its fields, else the
        deployment's (`serving.rules`); a 422 for a rule that needs a catalogue there is not."""
        config = self.config
        viewing = config.exclude_viewed if exclude_viewed is None else exclude_viewed
        cap = config.max_per_category if max_per_category is None else max_per_category
        catalogue = self.catalogue.catalogue
        unavailable = catalogue is not None and config.exclude_unavailable
        if exclude_unavailable is not None:
            unavailable = exclude_unavailable
        for field, wanted in (("exclude_unavailable", unavailable), ("max_per_category", cap)):
            if wanted and catalogue is None:
                raise Rejected(
                    ["body", field],
                    "needs the catalogue of products, and none is configured "
                    "(SKIFF_SERVE_CATALOGUE)",
                    "no_catalogue",
                )
        logged = {
            "exclude_viewed": viewing,
            "exclude_unavailable": unavailable,
            "max_per_category": cap,
        }
        return Rules(
            frozenset(viewed) if viewing else frozenset(), catalogue, unavailable, cap, logged
        )

    def at_most(self, field: str, count: int) -> None:
        if count > self.config.max_events:
            raise Rejected(
                ["body", field],
                f"at most {self.config.max_events} per request (SKIFF_SERVE_MAX_EVENTS), "
                f"got {count}",
                "too_long",
            )

    async def probability(self, served: Loaded, session: list[dict]) -> float:
        batch = functools.partial(predict.conversion_probabilities, served.model)
        return await self.batcher.submit(id(served.model), batch, session)

    async def exposed(
        self,
        problem: str,
        session_id: str | None,
        history: History,
        background: BackgroundTasks,
        answer_of: AnswerOf[A],
        logged: Callable[[A], dict[str, Any]],
        show: ShowOf[A] | None = None,
    ) -> Exposure[A]:
        """Answer with the model of the session's variant and log the exposure (`logged` gives
        the answer's fields in the log, `"error": True` among them when the model raised and a
        fallback answered); a shadow role answers after the response went out. `show`, when
        given, computes what is shown instead of `answer_of(the variant's model)` (the
        recommender's exploration and interleaving); the shadow role is always `answer_of`."""
        snapshot = self.store.snapshot
        experiment = snapshot.experiments.get(problem)
        if experiment is None:
            raise Unavailable(problem)
        variant = experiment.assign(session_id)
        served = snapshot.model(problem, variant.role)
        assignment = Assignment(snapshot, experiment, variant, served, uuid.uuid4().hex)
        exposure_id = assignment.exposure_id
        began = time.perf_counter()
        try:
            answer = await (show(assignment) if show else answer_of(served))
        except Exception:
            latency = _ms_since(began)
            self.metrics.inc("skiff_model_errors_total", problem=problem, role=served.role)
            self.expose(
                experiment, variant, served, session_id, history, latency, None, exposure_id
            )
            raise
        latency = _ms_since(began)
        fields = logged(answer)
        self.expose(experiment, variant, served, session_id, history, latency, fields, exposure_id)
        if experiment.shadow:
            background.add_task(self._shadow, snapshot, experiment, exposure_id, answer_of, logged)
        return Exposure(served, experiment, variant, exposure_id, answer)

    def expose(
        self,
        experiment: Experiment | None,
        variant: Variant,
        served: Loaded,
        session_id: str | None,
        history: History,
        latency_ms: float,
        answer: dict[str, Any] | None,
        exposure_id: str | None = None,
    ) -> str:
        """Log one exposure (under a new id unless given); `answer` None: the model call raised
        and nothing answered."""
        exposure_id = exposure_id or uuid.uuid4().hex
        record = {
            "kind": "exposure",
            "id": exposure_id,
            "at": now(),
            "problem": served.problem,
            "experiment": experiment.name if experiment else None,
            "stage": experiment.stage if experiment else None,
            "session_id": session_id,
            "variant": variant.name,
            "role": variant.role,
            "model_version": served.version,
            "weights": experiment.weights if experiment else None,
            "latency_ms": latency_ms,
            "error": answer is None,
            "history_events": history.events,
            "history_adds": history.adds,
            **({"mode": experiment.mode} if experiment else {}),
            **(answer or {}),
        }
        try:
            self.events.write(record)
        except OSError:  # serving outlives its log; the failure is counted and logged
            self.metrics.inc("skiff_event_log_errors_total")
            log.exception("could not log exposure %s", exposure_id)
        self.metrics.inc("skiff_exposures_total", problem=served.problem, variant=variant.name)
        return exposure_id

    async def _shadow(
        self,
        snapshot: Snapshot,
        experiment: Experiment,
        exposure_id: str,
        answer_of: AnswerOf[A],
        logged: Callable[[A], dict[str, Any]],
    ) -> None:
        """Score the shadow role after the response went out, and log it beside the exposure."""
        loaded = snapshot.model(experiment.problem, experiment.shadow or "")
        if loaded is None:
            return
        began = time.perf_counter()
        answer: dict[str, Any] | None
        try:
            answer = logged(await answer_of(loaded))
        except Exception:
            answer = None
            self.metrics.inc("skiff_model_errors_total", problem=loaded.problem, role=loaded.role)
            log.exception("shadow %s %s failed", loaded.problem, loaded.version)
        try:
            self.events.write(
                {
                    "kind": "shadow",
                    "exposure_id": exposure_id,
                    "at": now(),
                    "problem": loaded.problem,
                    "role": loaded.role,
                    "model_version": loaded.version,
                    "latency_ms": _ms_since(began),
                    "error": answer is None,
                    **(answer or {}),
                }
            )
        except OSError:
            self.metrics.inc("skiff_event_log_errors_total")
            log.exception("could not log the shadow score of %s", exposure_id)
        if answer is not None:
            self.metrics.inc("skiff_shadow_scores_total", problem=loaded.problem, role=loaded.role)
