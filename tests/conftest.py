"""Shared fixtures: real S3 backends on loopback (started once per test session), the
recording relay in front of SeaweedFS, a local OIDC provider, and the check that no
secret reaches a proxy-side log record."""

from __future__ import annotations

import logging
import os

import pytest

from inproxy.testing.servers import MotoServer, SeaweedFS

from jwks_server import OIDCProvider, assert_not_logged
from recording_relay import Relay

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


@pytest.fixture(scope="module")
def relay(seaweed):
    """SeaweedFS behind a :class:`~recording_relay.Relay`: what reached the backend is recorded."""
    relay = Relay(seaweed.endpoint_url)
    yield relay
    relay.close()


@pytest.fixture(scope="module")
def direct(seaweed):
    """boto3 straight to SeaweedFS with its own keys: the backend as it really is."""
    from util import s3_client  # boto3: here, not at import, for the modules that skip without it

    return s3_client(seaweed.endpoint_url, seaweed.access_key, seaweed.secret_key, region=seaweed.region)


@pytest.fixture
async def idp():
    """A local OIDC provider (``tests/jwks_server.py``) serving discovery and a JWKS."""
    async with OIDCProvider() as provider:
        yield provider


@pytest.fixture
def no_leaks(caplog):
    """A list to put secrets in; after the test, none of them may appear in a proxy-side log record."""
    caplog.set_level(logging.DEBUG)
    watched: list[str] = []
    yield watched
    assert_not_logged(caplog, watched)
