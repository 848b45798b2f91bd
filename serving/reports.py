"""`/reports/<path>`: the HTML reports the pipeline wrote, read from `settings.reports_root`
(the local reports folder, or `<SKIFF_ARTIFACTS_URL>/reports` on object storage) through
fsspec, so the links in Dagster's metadata (`skiff.urls.report_url`) work in production too.

A path is served only when it passes `skiff.urls.report_relpath`, the check the pipeline's
writes pass too: every segment a plain name (no `.` or `..`, no hidden file, no empty segment
so no absolute path, no backslash, `%` or NUL: the URL is decoded once, by the server, so
`%2e%2e` arrives as `..` and is refused, and `%252e` arrives as `%2e` and is refused too).
Anything else, and a missing file, is a 404 that says nothing of the store. A path ending in
`/` serves its `index.html`. A local root also refuses a symlink that leads out of it. The
content type comes from the suffix (`mimetypes`); the body is streamed in chunks read off the
event loop.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import posixpath
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import fsspec
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ml.registry import is_local
from skiff.urls import report_relpath

log = logging.getLogger("skiff.serving")

CHUNK = 1 << 20
INDEX = "index.html"


def safe_relpath(path: str) -> str | None:
    """`path` (decoded, relative to the reports root) if it is safe to serve
    (`skiff.urls.report_relpath`), else None; a folder (empty or ending in "/") gets its
    index.html."""
    try:
        return report_relpath(f"{path}{INDEX}" if path == "" or path.endswith("/") else path)
    except ValueError:
        return None


class Reports:
    """Read-only access to the files under one reports root (any fsspec URL)."""

    def __init__(self, root: str | Path) -> None:
        self.url = str(root)
        self._fs, self._root = fsspec.core.url_to_fs(self.url)
        self._local = is_local(self._fs)

    def open(self, relpath: str) -> tuple[Any, int]:
        """An open binary handle on the file and its size; FileNotFoundError when there is no
        such file under the root (a folder, or a symlink out of a local root, counts as none)."""
        path = posixpath.join(self._root, relpath)
        if self._local:
            real, root = os.path.realpath(path), os.path.realpath(self._root)
            if os.path.commonpath([real, root]) != root:
                raise FileNotFoundError(relpath)
        info = self._fs.info(path)
        if info.get("type") != "file":
            raise FileNotFoundError(relpath)
        return self._fs.open(path, "rb"), int(info.get("size") or 0)


def _not_found() -> JSONResponse:
    return JSONResponse({"message": "no such report"}, status_code=404)


def _content_type(relpath: str) -> str:
    kind = mimetypes.guess_type(relpath)[0] or "application/octet-stream"
    return f"{kind}; charset=utf-8" if kind.startswith("text/") else kind


async def _chunks(handle: Any) -> AsyncIterator[bytes]:
    try:
        while chunk := await anyio.to_thread.run_sync(handle.read, CHUNK):
            yield chunk
    finally:
        await anyio.to_thread.run_sync(handle.close)


router = APIRouter(tags=["operations"])


@router.api_route("/reports/{path:path}", methods=["GET", "HEAD"], response_model=None)
async def report(path: str, request: Request) -> Response:
    """A report the pipeline wrote (drift, experiments), from the reports store."""
    relpath = safe_relpath(path)
    if relpath is None:
        return _not_found()
    reports: Reports = request.app.state.reports
    try:
        handle, size = await anyio.to_thread.run_sync(reports.open, relpath)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return _not_found()
    except Exception as exc:  # the store unreachable (s3fs raises botocore's errors too)
        log.error("could not read report %s from %s: %s", relpath, reports.url, exc)
        return JSONResponse({"message": "the reports store could not be read"}, 503)
    headers = {
        "content-length": str(size),
        "cache-control": "no-cache",  # a day's report is rewritten when the day is rerun
        "x-content-type-options": "nosniff",
    }
    if request.method == "HEAD":
        await anyio.to_thread.run_sync(handle.close)
        return Response(headers=headers, media_type=_content_type(relpath))
    return StreamingResponse(_chunks(handle), headers=headers, media_type=_content_type(relpath))


def reports_app(root: str | Path) -> FastAPI:
    """An app of the reports alone, `/reports/<path>` from `root`: what `skiff ui` serves beside
    the Dagster UI so that the UI's report links answer without `skiff serve`."""
    app = FastAPI(title="Skiff reports", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.reports = Reports(root)
    app.include_router(router)
    # a browser asks every origin for its icon: no icon, and no 404 in the console for it
    app.add_api_route("/favicon.ico", lambda: Response(status_code=204), include_in_schema=False)
    return app
