"""pytest plugin (entry point ``pytest11``): fixtures that give tests a running inproxy.

``inproxy_server`` yields a :class:`ProxyFixture`: a proxy running in a
background thread in front of an in-process moto S3 server, with one client
key that may do everything, and a boto3 client factory::

    def test_upload(inproxy_server):
        s3 = inproxy_server.boto3_client()
        s3.create_bucket(Bucket="any")
        s3.put_object(Bucket="any", Key="k", Body=b"x")

Needs the ``test`` extra (moto, boto3).  Tests that want their own hooks can
build a :class:`~inproxy.ProxyServer` directly; the backend alone is the
session-scoped ``inproxy_moto`` fixture.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest

from ..backend import Backend
from ..hooks import AllowAll
from ..server import ProxyServer
from .servers import MotoServer, S3ServerInfo


@dataclass
class ProxyFixture:
    """A running proxy and the client credentials it accepts."""

    proxy: ProxyServer
    backend: S3ServerInfo
    access_key: str
    secret_key: str = field(repr=False)
    region: str = "us-east-1"

    @property
    def endpoint_url(self) -> str:
        return self.proxy.endpoint_url

    def boto3_client(self, **kwargs: Any):
        """A boto3 S3 client for the proxy (path style, explicit keys and region)."""
        import boto3
        from botocore.config import Config

        options = dict(endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                       aws_secret_access_key=self.secret_key, region_name=self.region,
                       config=Config(s3={"addressing_style": "path"}))
        options.update(kwargs)
        return boto3.client("s3", **options)


@pytest.fixture(scope="session")
def inproxy_moto() -> Iterator[S3ServerInfo]:
    """An in-process moto S3 server on 127.0.0.1 (accepts any signature)."""
    with MotoServer() as server:
        yield server.info


@pytest.fixture
def inproxy_server(inproxy_moto: S3ServerInfo) -> Iterator[ProxyFixture]:
    """A proxy in a background thread in front of ``inproxy_moto``; its one client key may do anything."""
    backend = Backend(endpoint=inproxy_moto.endpoint_url, region=inproxy_moto.region,
                      credentials={"access_key": inproxy_moto.access_key,
                                   "secret_key": inproxy_moto.secret_key})
    access_key, secret_key = "INPROXY" + secrets.token_hex(6).upper(), secrets.token_urlsafe(30)
    with ProxyServer.run_in_thread(backends={"*": backend}, keys={access_key: secret_key},
                                   authorizer=AllowAll()) as proxy:
        yield ProxyFixture(proxy, inproxy_moto, access_key, secret_key, inproxy_moto.region)
