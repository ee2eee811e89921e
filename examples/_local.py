"""What the examples take from this machine: a private S3 server behind a Backend, and client
programs installed beside this Python.  Not inproxy itself: a real application has its own
S3 service and tools, and builds its Backend from their settings."""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path
from typing import Iterator

from inproxy import Backend
from inproxy.testing.servers import MotoServer, SeaweedFS, SeaweedFSError, find_weed


def _local_s3_server():
    """A private S3 server on 127.0.0.1: SeaweedFS (it verifies signatures) if installed, else moto."""
    try:
        find_weed()
        return SeaweedFS()
    except SeaweedFSError:
        return MotoServer()


@contextlib.contextmanager
def local_backend() -> Iterator[Backend]:
    """The Backend of a private S3 server on 127.0.0.1, which runs until the block ends."""
    with _local_s3_server() as server:
        info = server.info
        yield Backend(endpoint=info.endpoint_url, region=info.region,
                      credentials={"access_key": info.access_key, "secret_key": info.secret_key})


def find_tool(name: str, package: str) -> str:
    """The path of the program ``name``: installed into this venv by pip, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: pip install {package}")
    return found
