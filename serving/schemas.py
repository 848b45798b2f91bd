"""Request and response bodies, with the examples /docs shows. Unknown fields are refused
(a typo gets a 422 naming the field rather than being ignored)."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from typing import Annotated, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ml import contract
from ml.conversion.features import to_ms

MAX_EPOCH_MS = 4_102_444_800_000  # 2100-01-01
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
END = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
Text = Annotated[str, Field(min_length=1, max_length=128)]
# the request field of each contract column
FIELDS = {
    "session_id_hash": "session_id",
    "event_type": "event_type",
    "product_action": "product_action",
    "product_sku_hash": "product_sku",
    "server_timestamp_epoch_ms": "event_at",
}

SESSION = "3f1c9a5e0b7d4e2f8a6c1b9d7e5f3a2c"
SKUS = ["a2f4c6e8b0d1f3a5c7e9b1d3f5a7c9e1", "b3e5d7f9a1c2e4b6d8f0a2c4e6b8d0f2"]


class Event(BaseModel):
    """One browsing event (the Coveo schema's fields, without the session id). Its type,
    action and sku are checked by `ml.contract.check_event`, ingestion's own rules, once the
    request parsed (`ConversionRequest.checked_events`)."""

    model_config = ConfigDict(extra="forbid")

    event_type: Annotated[str, Field(max_length=64)] = Field(
        description="pageview or event_product.", examples=["event_product"]
    )
    product_action: Annotated[str, Field(max_length=64)] | None = Field(
        None,
        description="For product events: detail, add, remove or click (not purchase: it ends "
        "the prefix); none on a pageview.",
    )
    product_sku: Annotated[str, Field(max_length=128)] | None = Field(
        None, description="Required on product events."
    )
    event_at: int | dt.datetime = Field(
        description="Epoch milliseconds, or an ISO 8601 time (no zone = UTC), 1970 to 2100."
    )
    category: Annotated[str, Field(max_length=256)] | None = None
    price_bucket: Annotated[int, Field(ge=1, le=10)] | None = None

    @field_validator("event_at", mode="before")
    @classmethod
    def _epoch_ms(cls, value: object) -> int:
        """Epoch ms as the contract has them (an integer, or its digits as text), or an ISO
        8601 time; anything else (a float, a bool, "1.7e12", "-5") is `bad_timestamp`."""
        ms = None
        if isinstance(value, str) and re.fullmatch(contract.TIMESTAMP_PATTERN, value.strip()):
            value = int(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = dt.datetime.fromisoformat(value.strip())
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.UTC)
            ms = to_ms(value) if EPOCH <= value < END else None
        elif isinstance(value, int) and not isinstance(value, bool):
            ms = value if 0 <= value <= MAX_EPOCH_MS else None
        if ms is None:
            raise PydanticCustomError(
                "bad_timestamp",
                "bad_timestamp: {rule}, or an ISO 8601 time, between 1970 and 2100",
                {"rule": contract.REASON_RULES["bad_timestamp"]},
            )
        return ms


Session = Annotated[str, Field(max_length=128)] | None


def contract_error(loc: list, reason: str, value: object) -> dict:
    """A pydantic-style error for a value the contract refuses: the field, reason and rule."""
    rule = contract.REASON_RULES[reason]
    return {"loc": loc, "msg": f"{reason}: {rule} (got {value!r})", "type": reason}


def check_session(session_id: str | None) -> str:
    """The session id as ingestion keeps it, or a 422 (missing_session_id)."""
    cleaned, reason = contract.check_event(
        {"session_id_hash": session_id, "event_type": "pageview", "server_timestamp_epoch_ms": 0}
    )
    if reason:
        raise RequestValidationError([contract_error(["body", "session_id"], reason, session_id)])
    return cleaned["session_id_hash"]


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

    session_id: Session = Field(description="Assigns the experiment variant (stable per session).")
    events: list[Event] = Field(
        min_length=1,
        description="The session's events so far, before any purchase; at most "
        "SKIFF_SERVE_MAX_EVENTS (default 500). Sorted by time on arrival.",
    )

    def checked_events(self) -> tuple[str, list[dict]]:
        """The session id and the events, time-ordered, as ingestion would load them (enums
        lower-cased, blanks as missing); a 422 naming every event that ingestion would
        quarantine (field, reason and rule), or that holds a purchase."""
        session = check_session(self.session_id)
        events, errors = [], []
        for i, event in enumerate(self.events):
            cleaned, reason = contract.check_event(
                {
                    "session_id_hash": session,
                    "event_type": event.event_type,
                    "product_action": event.product_action,
                    "product_sku_hash": event.product_sku,
                    "server_timestamp_epoch_ms": event.event_at,
                }
            )
            if reason:
                field = FIELDS[contract.REASON_COLUMNS[reason]]
                errors.append(
                    contract_error(["body", "events", i, field], reason, getattr(event, field))
                )
            elif cleaned["product_action"] == "purchase":
                errors.append(
                    {
                        "loc": ["body", "events", i, "product_action"],
                        "msg": "purchase ends the prefix: score the events before it",
                        "type": "purchase_in_prefix",
                    }
                )
            events.append(
                {
                    "event_type": cleaned["event_type"],
                    "product_action": cleaned["product_action"],
                    "product_sku": cleaned["product_sku_hash"],
                    "event_at": event.event_at,
                    "category": event.category,
                    "price_bucket": event.price_bucket,
                }
            )
        if errors:
            raise RequestValidationError(errors)
        return session, sorted(events, key=lambda e: e["event_at"])


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

    session_id: Session = Field(description="Assigns the experiment variant (stable per session).")
    items: list[Text] = Field(
        description="Products viewed so far, oldest first; may be empty (popular products). "
        "At most SKIFF_SERVE_MAX_EVENTS (default 500)."
    )
    k: int = Field(20, ge=1, le=100, description="How many products to return.")
    exclude_viewed: bool | None = Field(
        None,
        description="Never show a product of `items` (default SKIFF_SERVE_EXCLUDE_VIEWED: true).",
    )
    exclude_unavailable: bool | None = Field(
        None,
        description="Never show a product the catalogue (SKIFF_SERVE_CATALOGUE) does not list "
        "(default SKIFF_SERVE_EXCLUDE_UNAVAILABLE: true when a catalogue is configured).",
    )
    max_per_category: int | None = Field(
        None,
        ge=0,
        le=100,
        description="At most this many products of one catalogue category; 0: no cap "
        "(default SKIFF_SERVE_MAX_PER_CATEGORY: 0).",
    )


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
