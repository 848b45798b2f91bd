"""The S3 test server itself: a bucket per test, visible to a child process."""

import subprocess
import sys

import fsspec


def test_each_test_gets_an_empty_bucket_that_child_processes_reach(s3_bucket):
    fs, root = fsspec.core.url_to_fs(s3_bucket)
    assert fs.ls(root) == []
    fs.pipe_file(f"{root}/probe.txt", b"written here")
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fsspec, sys; print(fsspec.open(sys.argv[1], 'rb').open().read().decode())",
            f"{s3_bucket}/probe.txt",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "written here"
