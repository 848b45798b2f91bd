"""A real S3-compatible server (moto in server mode) on 127.0.0.1, for object-storage tests.

`s3_server` starts one `moto_server` process per test session (per xdist worker) on a free
port and points boto/s3fs at it through the environment (`AWS_ENDPOINT_URL` and test
credentials), which child processes (the multiprocess executor, `skiff serve`) inherit.
`s3_bucket` gives each test its own fresh bucket as an fsspec URL, `s3://<bucket>`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "skiff-test",
    "AWS_SECRET_ACCESS_KEY": "skiff-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _moto_server() -> str:
    found = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(found).exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]'): make setup")
    return found


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a running moto S3 server; the environment points at it."""
    port = _free_port()
    process = subprocess.Popen(
        [_moto_server(), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"moto_server did not start on {endpoint}") from None
            time.sleep(0.1)
    saved = {name: os.environ.get(name) for name in (*CREDENTIALS, "AWS_ENDPOINT_URL")}
    os.environ.update(CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new, empty bucket on the test server, as an fsspec URL (`s3://skiff-<hex>`)."""
    import s3fs

    name = f"skiff-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}"
