"""Request and response bodies, with the examples /docs shows. Unknown fields are refused
(a typo gets a 422 naming the field rather than being ignored)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ml.conversion.features import to_ms

MAX_EPOCH_MS = 4_102_444_800_000  # 2100-01-01
Text = Annotated[str, Field(min_length=1, max_length=128)]
Action = Literal["detail", "add", "remove", "click"]

SESSION = "3f1c9a5e0b7d4e2f8a6c1b9d7e5f3a2c"
SKUS = ["a2f4c6e8b0d1f3a5c7e9b1d3f5a7c9e1", "b3e5d7f9a1c2e4b6d8f0a2c4e6b8d0f2"]


class Event(BaseModel):
    """One browsing event (the Coveo schema's fields, without the session id)."""

    model_config = ConfigDict(extra="forbid")

    event_type: Literal["pageview", "event_product"]
    product_action: Action | None = Field(
        None, description="For product events: detail, add, remove or click (not purchase)."
    )
    product_sku: Text | None = None
    event_at: Annotated[int, Field(ge=0, le=MAX_EPOCH_MS)] | dt.datetime = Field(
        description="Epoch milliseconds, or an ISO 8601 time (no zone = UTC)."
    )
    category: Annotated[str, Field(max_length=256)] | None = None
    price_bucket: Annotated[int, Field(ge=1, le=10)] | None = None

    @field_validator("product_action", mode="before")
    @classmethod
    def _not_purchase(cls, value: object) -> object:
        if value == "purchase":
            raise ValueError("purchase ends the prefix: score the events before it")
        return value

    @field_validator("event_at")
    @classmethod
    def _epoch_ms(cls, value: int | dt.datetime) -> int:
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.UTC)
            if (
                not dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
                <= value
                < dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
            ):
                raise ValueError("must be between 1970 and 2100")
            return to_ms(value)
        return value


class ConversionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "session_id": SESSION,
                    "events": [
                        {"event_type": "pageview", "event_at": 1767607200000},
                        {
                            "event_type": "event_product",
                            "product_action": "detail",
                            "product_sku": SKUS[0],
                            "event_at": 1767607212000,
                            "category": "c1/c12",
                            "price_bucket": 4,
                        },
                        {
                            "event_type": "event_product",
                            "product_action": "add",
                            "product_sku": SKUS[0],
                            "event_at": "2026-01-05T10:00:40Z",
                            "category": "c1/c12",
                            "price_bucket": 4,
                        },
                    ],
                }
            ]
        },
    )

    session_id: Text = Field(description="Assigns the experiment variant (stable per session).")
    events: list[Event] = Field(
        min_length=1,
        description="The session's events so far, before any purchase; at most "
        "SKIFF_SERVE_MAX_EVENTS (default 500). Sorted by time on arrival.",
    )


class ConversionScore(BaseModel):
    probability: float = Field(description="Probability that the session ends in a purchase.")
    model_version: str
    algorithm: str
    experiment: str
    variant: str
    exposure_id: str = Field(description="Send it back with POST /v1/feedback.")


class RecommendationRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"session_id": SESSION, "items": SKUS, "k": 10}]},
    )

    session_id: Text = Field(description="Assigns the experiment variant (stable per session).")
    items: list[Text] = Field(
        description="Products viewed so far, oldest first; may be empty (popular products). "
        "At most SKIFF_SERVE_MAX_EVENTS (default 500)."
    )
    k: int = Field(20, ge=1, le=100, description="How many products to return.")


class Recommendations(BaseModel):
    items: list[str]
    path: Literal["model", "item_lookup", "popularity"] = Field(
        description="What answered: the model; the precomputed list (the model's own answer "
        "for one product) of the only known product, or of the latest one when the model "
        "failed; or popular products (no known product in the history)."
    )
    unknown_items: int = Field(description="Viewed products the model does not know (skipped).")
    model_version: str
    algorithm: str
    experiment: str
    variant: str
    exposure_id: str


class ProductRecommendations(BaseModel):
    sku: str
    items: list[str]
    model_version: str
    exposure_id: str


class Feedback(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "exposure_id": "9b2e4c6a8d0f4b1e9c3a5d7f1e3b5a7c",
                    "action": "click",
                    "item": SKUS[1],
                }
            ]
        },
    )

    exposure_id: str = Field(
        pattern=r"^[0-9a-f]{32}$", description="The exposure_id of the response acted on."
    )
    action: Literal["click", "add", "purchase"]
    item: Text | None = Field(None, description="The product clicked, added or bought.")


class FeedbackAck(BaseModel):
    recorded: bool = Field(description="True: the record is on disk (fsynced).")
    exposure_id: str
    action: str
