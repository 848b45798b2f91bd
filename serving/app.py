"""The HTTP service: the published champion (and challenger) models, experiments, feedback.

It reads only what Dagster published (`settings.published`) and writes only its event log
(`$SKIFF_HOME/serving/`); it never opens the warehouse, whose DuckDB file lock would stop the
pipeline. Start it with `skiff serve`; the endpoints and their examples are at /docs.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import BackgroundTasks, FastAPI, Path, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import predict
from serving.batching import MicroBatcher
from serving.config import ServeConfig
from serving.eventlog import EventLog
from serving.experiments import Experiment, Variant, load_file
from serving.limits import BodyLimit, Rejected, body
from serving.metrics import Metrics, MetricsMiddleware
from serving.schemas import (
    ConversionRequest,
    ConversionScore,
    Feedback,
    FeedbackAck,
    ProductRecommendations,
    RecommendationRequest,
    Recommendations,
)
from serving.store import Loaded, ModelStore, Snapshot
from skiff.settings import Settings

log = logging.getLogger("skiff.serving")

EXPOSURE_SYNC_SECONDS = 0.5
REFUSALS = {422: {"description": "Refused: `message` names the field and what is wrong."}}
UNAVAILABLE = {503: {"description": "No model of this problem is published yet."}}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def create_app(settings: Settings, config: ServeConfig) -> FastAPI:
    metrics = Metrics()
    configured = load_file(config.experiments_file) if config.experiments_file else {}
    store = ModelStore(
        settings.published, ("conversion", "recommender"), metrics, configured,
        config.challenger_traffic,
    )  # fmt: skip
    events = EventLog(settings.home / "serving")
    batcher = MicroBatcher(metrics)

    async def poll() -> None:
        while True:
            await anyio.sleep(config.reload_seconds)
            try:
                await anyio.to_thread.run_sync(store.refresh)
            except Exception:  # the poller must outlive a storage hiccup
                log.exception("checking the published models failed")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        predict.single_threaded()
        await anyio.to_thread.run_sync(store.refresh)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(poll)
            tasks.start_soon(events.sync_forever, EXPOSURE_SYNC_SECONDS)
            yield
            tasks.cancel_scope.cancel()
        events.close()

    app = FastAPI(
        title="Skiff serving",
        version="1",
        summary="Session conversion and next-item recommendation from the published models, "
        "with champion/challenger experiments and a feedback log.",
        lifespan=lifespan,
    )
    app.state.store, app.state.metrics, app.state.events = store, metrics, events
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, metrics=metrics)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    settings.reports.mkdir(parents=True, exist_ok=True)
    app.mount("/reports", StaticFiles(directory=settings.reports, html=True), name="reports")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.inc("skiff_rejected_requests_total", reason="validation")
        return JSONResponse(body(exc.errors()), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code != 400:
            return await http_exception_handler(request, exc)
        # FastAPI answers 400 when the JSON parser itself fails (e.g. nesting too deep)
        metrics.inc("skiff_rejected_requests_total", reason="unparsable")
        error = {"loc": ["body"], "msg": "could not be parsed as JSON", "type": "json_invalid"}
        return JSONResponse(body([error]), status_code=422)

    @app.exception_handler(Rejected)
    async def rejected(request: Request, exc: Rejected) -> JSONResponse:
        metrics.inc("skiff_rejected_requests_total", reason=exc.kind)
        return JSONResponse(body(exc.errors), status_code=422)

    def at_most(field: str, count: int) -> None:
        if count > config.max_events:
            raise Rejected(
                ["body", field],
                f"at most {config.max_events} per request (SKIFF_SERVE_MAX_EVENTS), got {count}",
                "too_long",
            )

    async def score(served: Loaded, session: list[dict]) -> float:
        batch = functools.partial(predict.conversion_probabilities, served.model)
        return await batcher.submit(id(served.model), batch, session)

    def experiment_of(snapshot: Snapshot, problem: str) -> Experiment:
        experiment = snapshot.experiments.get(problem)
        if experiment is None:
            raise _Unavailable(problem)
        return experiment

    def expose(
        experiment: Experiment | None,
        variant: Variant,
        served: Loaded,
        session_id: str | None,
        answer: dict[str, Any],
    ) -> str:
        exposure_id = uuid.uuid4().hex
        record = {
            "kind": "exposure",
            "id": exposure_id,
            "at": _now(),
            "problem": served.problem,
            "experiment": experiment.name if experiment else None,
            "session_id": session_id,
            "variant": variant.name,
            "role": variant.role,
            "model_version": served.version,
            "weights": experiment.weights if experiment else None,
            **answer,
        }
        try:
            events.write(record)
        except OSError:  # serving outlives its log; the failure is counted and logged
            metrics.inc("skiff_event_log_errors_total")
            log.exception("could not log exposure %s", exposure_id)
        metrics.inc("skiff_exposures_total", problem=served.problem, variant=variant.name)
        return exposure_id

    async def shadow(
        snapshot: Snapshot,
        experiment: Experiment,
        exposure_id: str,
        answer_of: Callable[[Loaded], Awaitable[dict]],
    ) -> None:
        """Score the shadow role after the response went out, and log it beside the exposure."""
        loaded = snapshot.model(experiment.problem, experiment.shadow or "")
        if loaded is None:
            return
        try:
            answer = await answer_of(loaded)
        except Exception:
            metrics.inc("skiff_model_errors_total", problem=loaded.problem, role=loaded.role)
            log.exception("shadow %s %s failed", loaded.problem, loaded.version)
            return
        try:
            events.write(
                {
                    "kind": "shadow",
                    "exposure_id": exposure_id,
                    "at": _now(),
                    "problem": loaded.problem,
                    "role": loaded.role,
                    "model_version": loaded.version,
                    **answer,
                }
            )
        except OSError:
            metrics.inc("skiff_event_log_errors_total")
            log.exception("could not log the shadow score of %s", exposure_id)
        metrics.inc("skiff_shadow_scores_total", problem=loaded.problem, role=loaded.role)

    @app.post(
        "/v1/conversion/score",
        response_model=ConversionScore,
        responses={**REFUSALS, **UNAVAILABLE},
        tags=["conversion"],
    )
    async def score_conversion(
        request: ConversionRequest, background: BackgroundTasks
    ) -> ConversionScore:
        """The probability that a session ends in a purchase, from its events so far (the
        features are built by the same code as in training)."""
        at_most("events", len(request.events))
        snapshot = store.snapshot
        experiment = experiment_of(snapshot, "conversion")
        variant = experiment.assign(request.session_id)
        served = snapshot.model("conversion", variant.role)
        session = sorted((e.model_dump() for e in request.events), key=lambda e: e["event_at"])
        probability = await score(served, session)
        exposure_id = expose(
            experiment, variant, served, request.session_id, {"probability": probability}
        )
        if experiment.shadow:

            async def shadow_score(m: Loaded) -> dict:
                return {"probability": await score(m, session)}

            background.add_task(shadow, snapshot, experiment, exposure_id, shadow_score)
        return ConversionScore(
            probability=probability,
            model_version=served.version,
            algorithm=served.manifest.algorithm,
            experiment=experiment.name,
            variant=variant.name,
            exposure_id=exposure_id,
        )

    @app.post(
        "/v1/recommendations",
        response_model=Recommendations,
        responses={**REFUSALS, **UNAVAILABLE},
        tags=["recommendations"],
    )
    async def recommend(
        request: RecommendationRequest, background: BackgroundTasks
    ) -> Recommendations:
        """The k products a session is most likely to view next, from the products it viewed.
        Unknown products are skipped and counted; with no known product, popular products."""
        at_most("items", len(request.items))
        snapshot = store.snapshot
        experiment = experiment_of(snapshot, "recommender")
        variant = experiment.assign(request.session_id)
        served = snapshot.model("recommender", variant.role)
        items, path, unknown = await predict.recommend(
            served, request.items, request.k, metrics, batcher
        )
        metrics.inc("skiff_recommendations_total", path=path)
        if unknown:
            metrics.inc("skiff_unknown_products_total", unknown, endpoint="recommendations")
        exposure_id = expose(
            experiment, variant, served, request.session_id, {"items": items, "path": path}
        )
        if experiment.shadow:

            async def shadow_items(m: Loaded) -> dict:
                shown, shadow_path, _ = await predict.recommend(
                    m, request.items, request.k, metrics, batcher
                )
                return {"items": shown, "path": shadow_path}

            background.add_task(shadow, snapshot, experiment, exposure_id, shadow_items)
        return Recommendations(
            items=items,
            path=path,
            unknown_items=unknown,
            model_version=served.version,
            algorithm=served.manifest.algorithm,
            experiment=experiment.name,
            variant=variant.name,
            exposure_id=exposure_id,
        )

    @app.get(
        "/v1/recommendations/products/{sku}",
        response_model=ProductRecommendations,
        responses={404: {"description": "The champion does not know this product."}},
        tags=["recommendations"],
    )
    async def product_list(
        sku: str = Path(min_length=1, max_length=128),
        k: int = Query(20, ge=1, le=100),
    ) -> ProductRecommendations | JSONResponse:
        """The champion's precomputed next products after this one (next_items.parquet of the
        published version). Outside any experiment; the exposure is logged for feedback."""
        snapshot = store.snapshot
        served = snapshot.model("recommender", "champion")
        if served is None:
            raise _Unavailable("recommender")
        items = served.lookup.get(sku)
        if not items:
            metrics.inc("skiff_unknown_products_total", endpoint="products")
            return JSONResponse(
                {
                    "message": f"sku: {sku!r} is not in the lookup of {served.version}",
                    "detail": [{"loc": ["path", "sku"], "msg": "unknown product"}],
                },
                status_code=404,
            )
        champion = Variant("champion", "champion", 1.0)
        items = list(items[:k])
        exposure_id = expose(None, champion, served, None, {"items": items, "path": "item_lookup"})
        return ProductRecommendations(
            sku=sku, items=items, model_version=served.version, exposure_id=exposure_id
        )

    @app.post("/v1/feedback", response_model=FeedbackAck, responses=REFUSALS, tags=["experiments"])
    async def feedback(request: Feedback) -> FeedbackAck | JSONResponse:
        """What the user did with a response (click, add, purchase). Acknowledged only once
        the record is on disk (fsync). Exposure ids are checked offline, by experiment_results,
        since the exposure may come from another replica."""
        record = {"kind": "feedback", "at": _now(), **request.model_dump()}
        try:
            await events.write_durable(record)
        except OSError:
            metrics.inc("skiff_event_log_errors_total")
            log.exception("could not record feedback for %s", request.exposure_id)
            return JSONResponse({"message": "the feedback could not be recorded"}, 503)
        metrics.inc("skiff_feedback_total", action=request.action)
        return FeedbackAck(recorded=True, exposure_id=request.exposure_id, action=request.action)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "Not ready."}})
    async def readyz() -> JSONResponse:
        """Ready once the champion of every required problem (SKIFF_SERVE_REQUIRE) is loaded."""
        snapshot = store.snapshot
        loaded = {f"{p}/{r}": m.version for (p, r), m in sorted(snapshot.models.items())}
        missing = [p for p in config.require if snapshot.model(p, "champion") is None]
        status = 503 if missing else 200
        return JSONResponse(
            {"ready": not missing, "models": loaded, "missing_champions": missing}, status
        )

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        """Prometheus text format: requests, latency, errors, model versions, reloads."""
        return PlainTextResponse(
            metrics.render(store.gauges()), media_type="text/plain; version=0.0.4"
        )

    @app.get("/noop", tags=["operations"])
    async def noop() -> dict:
        """Does nothing: the benchmark's floor for this server."""
        return {}

    @app.exception_handler(_Unavailable)
    async def unavailable(request: Request, exc: _Unavailable) -> JSONResponse:
        return JSONResponse(
            {
                "message": f"no {exc.problem} model is published yet: materialize its champion "
                "in Dagster (skiff demo does)"
            },
            status_code=503,
        )

    return app


class _Unavailable(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def serve(settings: Settings, config: ServeConfig) -> int:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch or sklearn load
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(settings, config)
    log.info("published models: %s; event log: %s", settings.published, settings.home / "serving")
    # Keep idle connections longer than a load balancer does (60 s on most), so the server
    # never closes one just as the balancer sends a request on it.
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level="info",
        access_log=False,
        timeout_keep_alive=75,
    )
    return 0
