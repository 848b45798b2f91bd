"""Bytes in a local folder or an object store, whole or not at all: the one primitive under the
hand-off store (orchestration/handoff.py) and the reports and caches (orchestration/reports.py).

Locally a write goes to a hidden temporary name in the same folder, then `os.replace`, so a
reader never sees half a file. On an object store one PUT is atomic already: a reader sees the
old object or the new one.
"""

import os
import uuid
from pathlib import Path

import fsspec
from fsspec import AbstractFileSystem

from ml.registry import is_local


def write_bytes(fs: AbstractFileSystem, path: str, data: bytes, *, exclusive: bool = False) -> bool:
    """Write `data` at `path` of `fs` so that no reader sees a partial file. With `exclusive`,
    an existing file is left as it is (for immutable content keyed by what produced it: the
    first writer wins, the others wrote the same). True when written."""
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


def read_bytes(fs: AbstractFileSystem, path: str) -> bytes | None:
    """The content of `path` of `fs`, or None when there is no such file."""
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def write_url(url: str, data: bytes, *, exclusive: bool = False) -> bool:
    """`write_bytes` at a URL (a local path or any fsspec URL)."""
    fs, path = fsspec.core.url_to_fs(url)
    return write_bytes(fs, path, data, exclusive=exclusive)


def read_url(url: str) -> bytes | None:
    """`read_bytes` at a URL (a local path or any fsspec URL)."""
    fs, path = fsspec.core.url_to_fs(url)
    return read_bytes(fs, path)
