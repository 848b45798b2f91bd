"""Links to what the server serves, for code that must not import it (Dagster metadata).

Part of the `skiff` leaf on purpose: `orchestration` imports this module to link the HTML
reports it writes under `$SKIFF_HOME/reports/`, which `skiff serve` serves read-only under
`/reports/`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from skiff.settings import Settings

DEFAULT_SERVE_URL = "http://127.0.0.1:8000"


def serve_url() -> str:
    """Where users reach the server: SKIFF_SERVE_URL, default http://127.0.0.1:8000."""
    return (os.environ.get("SKIFF_SERVE_URL") or DEFAULT_SERVE_URL).rstrip("/")


def report_url(settings: Settings, path: str | Path) -> str:
    """The URL of a file under `settings.reports` (absolute, or relative to it).

    >>> report_url(settings, settings.reports / "monitoring" / "drift-2026-01-05.html")
    'http://127.0.0.1:8000/reports/monitoring/drift-2026-01-05.html'
    """
    reports = Path(settings.reports).resolve()
    target = Path(path)
    target = (target if target.is_absolute() else reports / target).resolve()
    if not target.is_relative_to(reports):
        raise ValueError(f"{path} is not under the reports folder {reports}")
    return f"{serve_url()}/reports/{quote(target.relative_to(reports).as_posix())}"
