"""Reports (markdown leaderboards, Evidently HTML) and small cached files, through the store.

Every report goes to `<settings.reports_root>/<relpath>`: `$SKIFF_HOME/reports/` by default,
`$SKIFF_ARTIFACTS_URL/reports` when artifacts live in object storage, so a step running in its
own pod writes where the server (which serves `/reports/` from the same root) and the next step
read. `write_report` returns the report's link (`skiff.urls.report_url`), which is what
materialization metadata records.

Decisions:
- Writes are whole or not at all (`orchestration.store`, the primitive the hand-offs use too):
  a reader never sees half a report.
- A relative path is checked before anything is written (`skiff.urls.report_relpath`, the check
  the server's `/reports/` route applies too): plain names only, no `..`, nothing absolute, so
  no caller can write beside the reports.
- A report a run writes (a leaderboard, experiment results) goes under a path keyed by the run,
  `<folder>/runs/<run_id>/<name>`, which its materialization links, and is copied to
  `<folder>/<name>`, the latest, for people: two runs at once never overwrite each other's
  linked report (`write_run_report`).
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import TYPE_CHECKING

from orchestration.store import read_url, write_url
from skiff.urls import report_relpath, report_url

if TYPE_CHECKING:
    from skiff.settings import Settings


def join(root: str | Path, relpath: str) -> str:
    """`root` (a local folder or any fsspec URL) joined with a checked relative path."""
    return f"{str(root).rstrip('/')}/{report_relpath(relpath)}"


def report_location(settings: Settings, relpath: str) -> str:
    """Where the report `relpath` is stored: a local path, or a URL such as `s3://...`."""
    return join(settings.reports_root, relpath)


def write_report(settings: Settings, relpath: str, content: str | bytes) -> str:
    """Write the report `<settings.reports_root>/<relpath>` and return its link.

    `content` is text (written as UTF-8) or bytes. Raises ValueError for a path that is not
    relative or escapes the root (`../x`), before anything is written.
    """
    relpath = report_relpath(relpath)
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    write_url(report_location(settings, relpath), data)
    return report_url(settings, relpath)


def run_relpath(relpath: str, run_id: str) -> str:
    """`<folder>/runs/<run_id>/<name>` for the report `<folder>/<name>` of one run."""
    folder, name = posixpath.split(report_relpath(relpath))
    return report_relpath(posixpath.join(folder, "runs", run_id, name))


def write_run_report(settings: Settings, relpath: str, run_id: str, content: str | bytes) -> str:
    """Write a run's report at `run_relpath(relpath, run_id)` and as the latest at `relpath`;
    return the run's link (what stays true of this run whoever writes the latest next)."""
    url = write_report(settings, run_relpath(relpath, run_id), content)
    write_report(settings, relpath, content)
    return url


def read_report(settings: Settings, relpath: str) -> str | None:
    """The text of the report `relpath`, or None when it was never written."""
    data = read_url(report_location(settings, relpath))
    return None if data is None else data.decode("utf-8")
