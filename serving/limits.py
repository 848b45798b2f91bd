"""Refusals: every bad request gets a 422 whose body names the field, in one shape::

    {"message": "events: at most 500 events per request, got 501",
     "detail": [{"loc": ["body", "events"], "msg": "...", "type": "too_long"}]}

`BodyLimit` refuses a body over the configured size before anything parses it (from its
Content-Length, or while it streams in when there is none).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.metrics import Metrics


class Rejected(HTTPException):
    """A request the schema accepts but a limit refuses. An HTTPException, so that FastAPI's
    body parsing lets it through to the app's handler instead of answering 400."""

    def __init__(self, loc: Sequence[str | int], msg: str, kind: str) -> None:
        super().__init__(status_code=422, detail=msg)
        self.kind = kind
        self.errors = [{"loc": list(loc), "msg": msg, "type": kind}]


def body(errors: Sequence[dict]) -> dict:
    """The 422 body for pydantic-style errors: each error's field path and message."""
    detail = [{"loc": [_printable(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
              for e in errors]  # fmt: skip

    def where(loc: list) -> str:
        path = loc[1:] if len(loc) > 1 and loc[0] in ("body", "path", "query") else loc
        return ".".join(str(part) for part in path) or "body"

    return {
        "message": "; ".join(f"{where(e['loc'])}: {e['msg']}" for e in detail),
        "detail": detail,
    }


def _printable(part: str | int) -> str | int:
    """A field name as sent may hold lone surrogates, which UTF-8 cannot encode."""
    return part if isinstance(part, int) else part.encode("utf-8", "backslashreplace").decode()


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    def too_large(self, size: str) -> Rejected:
        return Rejected(
            ["body"],
            f"the request body is {size} bytes, over the limit of {self.max_bytes} "
            "(SKIFF_SERVE_MAX_BODY_BYTES)",
            "too_large",
        )

    async def _refuse(self, send: Send, error: Rejected) -> None:
        self.metrics.inc("skiff_rejected_requests_total", reason=error.kind)
        payload = json.dumps(body(error.errors)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 422,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send, self.too_large(length.decode()))
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise self.too_large(f"more than {self.max_bytes}")
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except Rejected as error:  # read outside FastAPI's handlers (none of our routes)
            if started:
                raise
            await self._refuse(send, error)
