"""The endpoints: scoring (`scoring`) and operations (`operations`); each reads the app's
`Service` (state of `create_app`) through the `app_service` dependency."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from serving import predict, showing
from serving.experiments import Variant
from serving.metrics import CONTENT_TYPE
from serving.schemas import (
    ConversionRequest,
    ConversionScore,
    Feedback,
    FeedbackAck,
    ProductRecommendations,
    RecommendationRequest,
    Recommendations,
    check_session,
)
from serving.service import Assignment, History, Service, Unavailable, now
from serving.store import Loaded

log = logging.getLogger("skiff.serving")

REFUSALS = {422: {"description": "Refused: `message` names the field and what is wrong."}}
UNAVAILABLE = {503: {"description": "No model of this problem is published yet."}}


async def app_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(app_service)]
scoring = APIRouter()
operations = APIRouter(tags=["operations"])


@scoring.post(
    "/v1/conversion/score",
    response_model=ConversionScore,
    responses={**REFUSALS, **UNAVAILABLE},
    tags=["conversion"],
)
async def score_conversion(
    request: ConversionRequest, background: BackgroundTasks, service: ServiceDep
) -> ConversionScore:
    """The probability that a session ends in a purchase, from its events so far (the
    features are built by the same code as in training)."""
    service.at_most("events", len(request.events))
    session_id, session = request.checked_events()  # ingestion's checks (ml.contract)
    adds = sum(e["product_action"] == "add" for e in session)
    exposure = await service.exposed(
        "conversion",
        session_id,
        History(len(session), adds),
        background,
        lambda model: service.probability(model, session),
        lambda p: {"probability": p},
    )
    return ConversionScore(probability=exposure.answer, **exposure.fields())


@scoring.post(
    "/v1/recommendations",
    response_model=Recommendations,
    responses={**REFUSALS, **UNAVAILABLE},
    tags=["recommendations"],
)
async def recommend(
    request: RecommendationRequest, background: BackgroundTasks, service: ServiceDep
) -> Recommendations:
    """The k products a session is most likely to view next, from the products it viewed.
    Unknown products are skipped and counted; with no known product, popular products. A small
    share of answers explores (a shuffle of the model's top products), and an interleaving
    experiment's challenger sessions see the champion's and the challenger's lists merged.
    Business rules (deployment settings, overridden by the request's fields) filter what is
    shown: already viewed products, products the catalogue does not list, a cap per category;
    the model is asked for more so that k products remain when it has them."""
    service.at_most("items", len(request.items))
    session_id = check_session(request.session_id)
    rules = service.rules(
        request.items,
        request.exclude_viewed,
        request.exclude_unavailable,
        request.max_per_category,
    )

    def top(model: Loaded, n: int) -> Awaitable[predict.Recommended]:
        return predict.recommend(model, request.items, n, service.metrics, service.batcher, rules)

    def show(assignment: Assignment) -> Awaitable[predict.Recommended]:
        exploration = service.config.exploration
        return showing.shown(
            assignment, top, request.items, request.k, exploration, service.metrics, rules
        )

    exposure = await service.exposed(
        "recommender",
        session_id,
        History(len(request.items)),
        background,
        lambda model: top(model, request.k),
        lambda answer: {
            "items": answer.items,
            "path": answer.path,
            "error": answer.failed,
            **answer.logged,
            "rules": rules.logged,
        },
        show,
    )
    answer = exposure.answer
    service.metrics.inc("skiff_recommendations_total", path=answer.path)
    if answer.unknown:
        service.metrics.inc(
            "skiff_unknown_products_total", answer.unknown, endpoint="recommendations"
        )
    return Recommendations(
        items=answer.items, path=answer.path, unknown_items=answer.unknown, **exposure.fields()
    )


@scoring.get(
    "/v1/recommendations/products/{sku}",
    response_model=ProductRecommendations,
    responses={404: {"description": "The champion does not know this product."}},
    tags=["recommendations"],
)
async def product_list(
    service: ServiceDep,
    sku: str = Path(min_length=1, max_length=128),
    k: int = Query(20, ge=1, le=100),
) -> ProductRecommendations | JSONResponse:
    """The champion's precomputed next products after this one (next_items.parquet of the
    published version, at most 20), filtered by the deployment's business rules (this product
    counts as viewed). Outside any experiment; the exposure is logged for feedback."""
    served = service.store.snapshot.model("recommender", "champion")
    if served is None:
        raise Unavailable("recommender")
    began = time.perf_counter()
    items = served.lookup.get(sku)
    if not items:
        service.metrics.inc("skiff_unknown_products_total", endpoint="products")
        return JSONResponse(
            {
                "message": f"sku: {sku!r} is not in the lookup of {served.version}",
                "detail": [{"loc": ["path", "sku"], "msg": "unknown product"}],
            },
            status_code=404,
        )
    champion = Variant("champion", "champion", 1.0)
    rules = service.rules([sku], None, None, None)  # the deployment's rules
    items = rules.apply(items, k)
    latency = (time.perf_counter() - began) * 1000
    answer = {"items": items, "path": "item_lookup", "rules": rules.logged}
    exposure_id = service.expose(None, champion, served, None, History(1), latency, answer)
    return ProductRecommendations(
        sku=sku, items=items, model_version=served.version, exposure_id=exposure_id
    )


@scoring.post("/v1/feedback", response_model=FeedbackAck, responses=REFUSALS, tags=["experiments"])
async def feedback(request: Feedback, service: ServiceDep) -> FeedbackAck | JSONResponse:
    """What the user did with a response (click, add, purchase). Acknowledged only once
    the record is on disk (fsync). Exposure ids are checked offline, by experiment_results,
    since the exposure may come from another replica."""
    record = {"kind": "feedback", "at": now(), **request.model_dump()}
    try:
        await service.events.write_durable(record)
    except OSError:
        service.metrics.inc("skiff_event_log_errors_total")
        log.exception("could not record feedback for %s", request.exposure_id)
        return JSONResponse({"message": "the feedback could not be recorded"}, 503)
    service.metrics.inc("skiff_feedback_total", action=request.action)
    return FeedbackAck(recorded=True, exposure_id=request.exposure_id, action=request.action)


@operations.get("/healthz")
async def healthz() -> dict:
    """The process answers."""
    return {"status": "ok"}


@operations.get("/readyz", responses={503: {"description": "Not ready."}})
async def readyz(service: ServiceDep) -> JSONResponse:
    """Ready once the champion of every required problem (SKIFF_SERVE_REQUIRE) is loaded;
    also the experiment each problem runs (its name, stage, weights, shadow and mode), and the
    published versions that failed to load and are being retried (`reload_failures`: the
    version, consecutive failures, last error, since when, seconds to the next try); a failing
    reload does not make a server that holds a champion unready."""
    snapshot = service.store.snapshot
    loaded = {f"{p}/{r}": m.version for (p, r), m in sorted(snapshot.models.items())}
    missing = [p for p in service.config.require if snapshot.model(p, "champion") is None]
    experiments = {
        problem: {
            "name": e.name,
            "stage": e.stage,
            "weights": e.weights,
            "shadow": e.shadow,
            "mode": e.mode,
        }
        for problem, e in sorted(snapshot.experiments.items())
    }
    body = {
        "ready": not missing,
        "models": loaded,
        "missing_champions": missing,
        "experiments": experiments,
        "reload_failures": service.store.failures(),
    }
    return JSONResponse(body, 503 if missing else 200)


@operations.get("/metrics", response_class=PlainTextResponse)
async def prometheus(service: ServiceDep) -> PlainTextResponse:
    """Prometheus text format: requests, latency, errors, model versions, reloads."""
    return PlainTextResponse(service.metrics.render(), media_type=CONTENT_TYPE)


@operations.get("/noop")
async def noop() -> dict:
    """Does nothing: the benchmark's floor for this server."""
    return {}
