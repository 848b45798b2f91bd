"""The durable log of exposures and feedback: JSON lines, one file per UTC day, under
`$SKIFF_HOME/serving/` (format and reader in `ml.experiments`).

Each record is one `write` to a file opened with O_APPEND, so lines of concurrent writers
(threads, or several server processes on one host) never interleave, and a record is in the
kernel's page cache (it survives a crash of the server process) before the response goes out.
`write_durable` also fsyncs before returning: feedback is acknowledged only once it is on
disk. Exposures are fsynced in the background within `sync_seconds`, so a scoring request
does not wait for the disk; losing the last second of exposures takes a crash of the machine.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import anyio

from ml.experiments import log_file

log = logging.getLogger("skiff.serving")


class EventLog:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._files: dict[dt.date, int] = {}
        self.dirty = False

    def _fd(self, day: dt.date) -> int:
        fd = self._files.get(day)
        if fd is None:
            path = log_file(self.folder, day)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            _fsync_dir(self.folder)  # the new file's name survives a machine crash too
            self._files[day] = fd
            for old in [d for d in self._files if d < day - dt.timedelta(days=1)]:
                os.close(self._files.pop(old))
        return fd

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (in the page cache when this returns)."""
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            fd = self._fd(dt.datetime.now(dt.UTC).date())
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            self.dirty = True

    def sync(self) -> None:
        """fsync every open file (blocking: call from a worker thread)."""
        with self._lock:
            fds = list(self._files.values())
            self.dirty = False
        for fd in fds:
            os.fsync(fd)

    async def write_durable(self, record: dict[str, Any]) -> None:
        """Append and fsync: on disk when this returns."""
        self.write(record)
        await anyio.to_thread.run_sync(self.sync)

    async def sync_forever(self, seconds: float) -> None:
        """Background task: fsync what was written since the last pass."""
        while True:
            await anyio.sleep(seconds)
            if self.dirty:
                try:
                    await anyio.to_thread.run_sync(self.sync)
                except OSError:
                    log.exception("fsync of the event log failed")

    def close(self) -> None:
        with self._lock:
            for fd in self._files.values():
                os.fsync(fd)
                os.close(fd)
            self._files.clear()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
