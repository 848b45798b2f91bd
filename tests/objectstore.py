"""A real S3-compatible server (moto in server mode) on 127.0.0.1, for object-storage tests.

`s3_server` starts one `moto_server` process per test session (per xdist worker) on a free
port and points boto/s3fs at it through the environment (`AWS_ENDPOINT_URL` and test
credentials), which child processes (the multiprocess executor, `skiff serve`) inherit.
`s3_bucket` gives each test its own fresh bucket as an fsspec URL, `s3://<bucket>`.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port, running, wait_for_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "skiff-test",
    "AWS_SECRET_ACCESS_KEY": "skiff-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _moto_server() -> str:
    found = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(found).exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]'): make setup")
    return found


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a running moto S3 server; the environment points at it."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    saved = {name: os.environ.get(name) for name in (*CREDENTIALS, "AWS_ENDPOINT_URL")}
    with running([_moto_server(), "-H", "127.0.0.1", "-p", str(port)], log):
        wait_for_port(port, seconds=30)
        os.environ.update(CREDENTIALS)
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
        try:
            yield os.environ["AWS_ENDPOINT_URL"]
        finally:
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
