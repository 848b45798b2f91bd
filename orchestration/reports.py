"""Reports (markdown leaderboards, Evidently HTML) and small cached files, through the store.

Every report goes to `<settings.reports_root>/<relpath>`: `$SKIFF_HOME/reports/` by default,
`$SKIFF_ARTIFACTS_URL/reports` when artifacts live in object storage, so a step running in its
own pod writes where the server (which serves `/reports/` from the same root) and the next step
read. `write_report` returns the report's link (`skiff.urls.report_url`), which is what
materialization metadata records.

Decisions:
- Local writes are write-then-rename (a temporary name in the same folder, then `os.replace`),
  so a reader never sees half a report. On object storage one PUT is atomic already: a reader
  sees the old object or the new one.
- A relative path is checked before anything is written (`skiff.urls.report_relpath`): no `..`,
  nothing absolute, so no caller can write beside the reports.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec

from ml.registry import is_local
from skiff.urls import report_relpath, report_url

if TYPE_CHECKING:
    from skiff.settings import Settings


def join(root: str | Path, relpath: str) -> str:
    """`root` (a local folder or any fsspec URL) joined with a checked relative path."""
    return f"{str(root).rstrip('/')}/{report_relpath(relpath)}"


def write_bytes(url: str, data: bytes, *, exclusive: bool = False) -> bool:
    """Write `data` to `url` (a local path or any fsspec URL) so that no reader sees a partial
    file. With `exclusive`, an existing file is left as it is (for immutable content keyed by
    what produced it: the first writer wins, the others wrote the same). True when written."""
    fs, path = fsspec.core.url_to_fs(url)
    if is_local(fs):
        target = Path(path)
        if exclusive and target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return True
    if not exclusive:
        fs.pipe_file(path, data)
        return True
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    return True


def read_bytes(url: str) -> bytes | None:
    """The content of `url`, or None when there is no such file."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


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
    write_bytes(report_location(settings, relpath), data)
    return report_url(settings, relpath)


def read_report(settings: Settings, relpath: str) -> str | None:
    """The text of the report `relpath`, or None when it was never written."""
    data = read_bytes(report_location(settings, relpath))
    return None if data is None else data.decode("utf-8")
