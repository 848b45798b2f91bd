"""Links to what the server serves, for code that must not import it (Dagster metadata).

Part of the `skiff` leaf on purpose: `orchestration` imports this module to link the reports
it writes under `settings.reports_root` (`$SKIFF_HOME/reports/` by default,
`$SKIFF_ARTIFACTS_URL/reports` when artifacts live in object storage). A report's link is
`<base>/<relpath>`, the base being (`reports_base_url`):
- `SKIFF_REPORTS_URL` when set: wherever the reports are reachable in production (a bucket
  website, a proxy);
- else `SKIFF_SERVE_URL/reports` when SKIFF_SERVE_URL is set: `skiff serve` serves `/reports/`
  read-only from the same store, so in production setting SKIFF_SERVE_URL to where users reach
  the server is enough;
- else `http://127.0.0.1:3001/reports`, which `skiff ui` serves beside the Dagster UI: on a
  laptop a report link works from the UI alone (and `skiff serve` serves them too, on its port).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from skiff.settings import Settings

DEFAULT_SERVE_URL = "http://127.0.0.1:8000"
DEFAULT_REPORTS_URL = "http://127.0.0.1:3001/reports"  # served by `skiff ui`
# One segment of a report path (`report_relpath`).
SEGMENT = re.compile(r"[A-Za-z0-9_=+@,~:-][A-Za-z0-9_.=+@,~: -]*")


def serve_url() -> str:
    """Where users reach the server: SKIFF_SERVE_URL, default http://127.0.0.1:8000."""
    return (os.environ.get("SKIFF_SERVE_URL") or DEFAULT_SERVE_URL).rstrip("/")


def reports_base_url() -> str:
    """The URL the reports' relative paths are appended to: SKIFF_REPORTS_URL when set, else
    `serve_url()/reports` when SKIFF_SERVE_URL is set (what `skiff serve` mounts), else
    DEFAULT_REPORTS_URL (what `skiff ui` serves)."""
    base = os.environ.get("SKIFF_REPORTS_URL", "").strip().rstrip("/")
    if base:
        return base
    if os.environ.get("SKIFF_SERVE_URL", "").strip():
        return f"{serve_url()}/reports"
    return DEFAULT_REPORTS_URL


def report_relpath(relpath: str | PurePosixPath) -> str:
    """`relpath` checked: a relative POSIX path of plain names, the one check of a report path,
    for what the pipeline writes (orchestration/reports.py) and what the server serves
    (serving/reports.py).

    A plain name is letters, digits and `_ . = + @ , ~ : -` and spaces, not starting with a dot
    (so no `.` or `..`, no hidden file). Refused (ValueError naming the path): empty, absolute,
    a URL, a backslash, an empty segment, `..`, or any other character (`%` and NUL among
    them: a URL is decoded once, so `%2e%2e` is refused whether it arrives encoded or not) — a
    report path must stay under the reports root whatever the store.
    """
    text = str(relpath)
    if not text.strip():
        raise ValueError("a report path is empty")
    if "\\" in text or "://" in text or text.startswith("/"):
        raise ValueError(
            f"report path {text!r} must be relative to the reports root, with / separators"
        )
    segments = text.split("/")
    if ".." in segments:
        raise ValueError(f"report path {text!r} escapes the reports root (.. is not allowed)")
    if (bad := next((s for s in segments if not SEGMENT.fullmatch(s)), None)) is not None:
        raise ValueError(
            f"report path {text!r}: {bad!r} is not a plain name (letters, digits, "
            "`_ . = + @ , ~ : -` and spaces, not starting with a dot)"
        )
    return text


def report_url(settings: Settings, path: str | Path) -> str:
    """The URL of a report: `path` relative to the reports root (preferred), or, for older
    callers, a local absolute path under `settings.reports`.

    The file need not exist here (it may live in object storage); the link is where it is
    served from (`reports_base_url`).

    >>> report_url(settings, "monitoring/conversion_quality/2026-01-05.html")
    'http://127.0.0.1:3001/reports/monitoring/conversion_quality/2026-01-05.html'
    """
    if isinstance(path, Path) and path.is_absolute():
        reports = Path(settings.reports).resolve()
        target = path.resolve()
        if not target.is_relative_to(reports):
            raise ValueError(f"{path} is not under the reports folder {reports}")
        path = target.relative_to(reports).as_posix()
    return f"{reports_base_url()}/{quote(report_relpath(path))}"
