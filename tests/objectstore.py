"""A real S3-compatible server (moto in server mode) on 127.0.0.1, for object-storage tests.

`s3_server` starts one moto server process per test session (per xdist worker) on a free
port and points boto/s3fs at it through the environment (`AWS_ENDPOINT_URL` and test
credentials), which child processes (the multiprocess executor, `skiff serve`) inherit.
`s3_bucket` gives each test its own fresh bucket as an fsspec URL, `s3://<bucket>`.

The server answers one request at a time (`server_command`), not with a thread per request
as `moto_server` does. Real S3 makes a conditional PUT (`If-None-Match: *`, the registry
lock's exclusive create) atomic; moto checks the condition and then stores without a lock, so
two threads of `moto_server` could both create the same key and both writers believed they
held the lock (CI lost a history line that way). Served one at a time, the check and the
store cannot interleave. werkzeug closes every connection after its response, so a waiting
client never holds the server.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.servers import free_port, running, wait_for_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "skiff-test",
    "AWS_SECRET_ACCESS_KEY": "skiff-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}

# What `moto_server` runs (moto/server.py), with threaded=False.
_SERVE = """
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app,
)
host, port = sys.argv[1], int(sys.argv[2])
app = DomainDispatcherApplication(create_backend_app)
run_simple(host, port, app, threaded=False, request_handler=MotoRequestHandler)
"""


def server_command(host: str, port: int) -> list[str]:
    """The argv of a moto S3 server on host:port that serves one request at a time."""
    try:
        import moto.moto_server.werkzeug_app  # noqa: F401
    except ImportError:
        pytest.skip("moto's server is not installed (pip install 'moto[server]'): make setup")
    return [sys.executable, "-c", _SERVE, host, str(port)]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a running moto S3 server; the environment points at it."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with running(server_command("127.0.0.1", port), log), pytest.MonkeyPatch.context() as env:
        wait_for_port(port, seconds=30)
        for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
            env.setenv(name, value)  # restored when the session ends
        yield os.environ["AWS_ENDPOINT_URL"]


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new, empty bucket on the test server, as an fsspec URL (`s3://skiff-<hex>`)."""
    import s3fs

    name = f"skiff-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}"
