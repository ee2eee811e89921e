"""Shared fixtures: real S3 backends on loopback, started once per test session."""

from __future__ import annotations

import os

import pytest

from inproxy.testing.servers import MotoServer, SeaweedFS

# SDKs must never probe a cloud metadata address from the tests.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
for _name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def seaweed():
    """A SeaweedFS server that verifies SigV4 signatures."""
    server = SeaweedFS().start()
    try:
        yield server.info
    finally:
        server.stop(timeout=5)  # weed sometimes ignores SIGTERM after large transfers


@pytest.fixture(scope="session")
def moto():
    """moto's S3 server: broad S3 semantics, but it accepts any signature."""
    with MotoServer() as server:
        yield server.info
