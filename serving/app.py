"""The HTTP service: the published champion (and challenger) models, experiments, feedback.

It reads only what Dagster published (`settings.published`) and the reports it wrote
(`settings.reports_root`, under /reports), and writes only its event log
(`$SKIFF_HOME/serving/`); it never opens the warehouse, whose DuckDB file lock would stop the
pipeline. Model calls run in a worker thread (`serving.batching`), so a slow batch never holds
up /readyz, /metrics or feedback. Start it with `skiff serve`; the endpoints and their
examples are at /docs (from the app's own files, `serving.docs`). The routes are in
`serving.routes` and `serving.reports`, what they share (store, log, metrics, the experiment
flow) in `serving.service`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import predict, reports, routes
from serving.config import ServeConfig
from serving.docs import add_docs
from serving.limits import BodyLimit, Rejected, body
from serving.metrics import MetricsMiddleware
from serving.service import Service, Unavailable
from skiff.settings import Settings

log = logging.getLogger("skiff.serving")

EXPOSURE_SYNC_SECONDS = 0.5


def create_app(settings: Settings, config: ServeConfig) -> FastAPI:
    service = Service.build(settings, config)
    app = FastAPI(
        title="Skiff serving",
        version="1",
        summary="Session conversion and next-item recommendation from the published models, "
        "with champion/challenger experiments and a feedback log.",
        lifespan=_lifespan,
        docs_url=None,  # served from the app's own files: serving.docs
        redoc_url=None,
    )
    add_docs(app)
    app.state.service = service
    app.state.reports = service.reports  # what serving.reports reads
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, metrics=service.metrics)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    app.include_router(routes.scoring)
    app.include_router(routes.operations)
    app.include_router(reports.router)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Rejected, _rejected)
    app.add_exception_handler(Unavailable, _unavailable)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: Service = app.state.service
    predict.single_threaded()
    await anyio.to_thread.run_sync(service.store.refresh)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_poll, service)
        tasks.start_soon(service.events.sync_forever, EXPOSURE_SYNC_SECONDS)
        yield
        tasks.cancel_scope.cancel()
    await anyio.to_thread.run_sync(service.batcher.close)  # the running batch finishes
    service.events.close()


async def _poll(service: Service) -> None:
    while True:
        await anyio.sleep(service.config.reload_seconds)
        try:
            await anyio.to_thread.run_sync(service.store.refresh)
        except Exception:  # the poller must outlive a storage hiccup
            log.exception("checking the published models failed")
        await anyio.to_thread.run_sync(service.catalogue.refresh)  # never raises once loaded


def _refused(request: Request, reason: str, errors: list[dict]) -> JSONResponse:
    request.app.state.service.metrics.inc("skiff_rejected_requests_total", reason=reason)
    return JSONResponse(body(errors), status_code=422)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _refused(request, "validation", exc.errors())


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code != 400:
        return await http_exception_handler(request, exc)
    # FastAPI answers 400 when the JSON parser itself fails (e.g. nesting too deep)
    error = {"loc": ["body"], "msg": "could not be parsed as JSON", "type": "json_invalid"}
    return _refused(request, "unparsable", [error])


async def _rejected(request: Request, exc: Rejected) -> JSONResponse:
    return _refused(request, exc.kind, exc.errors)


async def _unavailable(request: Request, exc: Unavailable) -> JSONResponse:
    return JSONResponse(
        {
            "message": f"no {exc.problem} model is published yet: materialize its champion "
            "in Dagster (skiff demo does)"
        },
        status_code=503,
    )


def serve(settings: Settings, config: ServeConfig) -> int:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch or sklearn load
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(settings, config)
    log.info(
        "published models: %s; reports: %s; event log: %s",
        settings.published,
        settings.reports_root,
        settings.home / "serving",
    )
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
