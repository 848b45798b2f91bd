"""Links to what the server serves, for code that must not import it (Dagster metadata).

Part of the `skiff` leaf on purpose: `orchestration` imports this module to link the reports
it writes under `settings.reports_root` (`$SKIFF_HOME/reports/` by default,
`$SKIFF_ARTIFACTS_URL/reports` when artifacts live in object storage). A report's link is
`SKIFF_REPORTS_URL/<relpath>` when that base is set (wherever the reports are reachable in
production: the server's public URL + `/reports`, or a bucket website), else
`SKIFF_SERVE_URL/reports/<relpath>`: `skiff serve` serves `/reports/` read-only from the same
store, so in production setting SKIFF_SERVE_URL to where users reach the server is enough.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from skiff.settings import Settings

DEFAULT_SERVE_URL = "http://127.0.0.1:8000"


def serve_url() -> str:
    """Where users reach the server: SKIFF_SERVE_URL, default http://127.0.0.1:8000."""
    return (os.environ.get("SKIFF_SERVE_URL") or DEFAULT_SERVE_URL).rstrip("/")


def reports_base_url() -> str:
    """The URL the reports' relative paths are appended to: SKIFF_REPORTS_URL when set, else
    `serve_url()/reports` (what `skiff serve` mounts)."""
    base = os.environ.get("SKIFF_REPORTS_URL", "").strip().rstrip("/")
    return base or f"{serve_url()}/reports"


def report_relpath(relpath: str | PurePosixPath) -> str:
    """`relpath` checked and normalised: a relative POSIX path of one or more plain names.

    Refused (ValueError naming the path): empty, absolute, a URL, a backslash, or any `..`
    part — a report path must stay under the reports root whatever the store.
    """
    text = str(relpath)
    if not text.strip():
        raise ValueError("a report path is empty")
    if "\\" in text or "://" in text or text.startswith("/"):
        raise ValueError(
            f"report path {text!r} must be relative to the reports root, with / separators"
        )
    parts = [part for part in PurePosixPath(text).parts if part != "."]
    if not parts or ".." in parts:
        raise ValueError(f"report path {text!r} escapes the reports root (.. is not allowed)")
    return "/".join(parts)


def report_url(settings: Settings, path: str | Path) -> str:
    """The URL of a report: `path` relative to the reports root (preferred), or, for older
    callers, a local absolute path under `settings.reports`.

    The file need not exist here (it may live in object storage); the link is where it is
    served from (`reports_base_url`).

    >>> report_url(settings, "monitoring/conversion_quality/2026-01-05.html")
    'http://127.0.0.1:8000/reports/monitoring/conversion_quality/2026-01-05.html'
    """
    if isinstance(path, Path) and path.is_absolute():
        reports = Path(settings.reports).resolve()
        target = path.resolve()
        if not target.is_relative_to(reports):
            raise ValueError(f"{path} is not under the reports folder {reports}")
        path = target.relative_to(reports).as_posix()
    return f"{reports_base_url()}/{quote(report_relpath(path))}"
