"""Small helpers shared by the tests (not fixtures: plain functions)."""

from __future__ import annotations

import uuid

import boto3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from yarl import URL

from inproxy import Backend
from inproxy.testing.servers import S3ServerInfo


def backend_for(info: S3ServerInfo, **kwargs) -> Backend:
    """A Backend that signs with the test server's own keys."""
    return Backend(endpoint=info.endpoint_url, region=info.region,
                   credentials={"access_key": info.access_key, "secret_key": info.secret_key}, **kwargs)


def new_bucket(info: S3ServerInfo, prefix: str) -> str:
    """A bucket created on the test server, named ``prefix-<random>``."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    s3_client(info.endpoint_url, info.access_key, info.secret_key).create_bucket(Bucket=name)
    return name


def s3_client(endpoint_url: str, access_key: str, secret_key: str, *, session_token: str | None = None,
              region: str = "us-east-1", addressing_style: str = "path", verify=None, **config):
    """A boto3 S3 client with explicit keys, path style, SigV4 presigning and no retries."""
    cfg = Config(s3={"addressing_style": addressing_style}, signature_version="s3v4",
                 retries={"total_max_attempts": 1, "mode": "standard"}, **config)
    return boto3.client("s3", endpoint_url=endpoint_url, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, aws_session_token=session_token,
                        region_name=region, config=cfg, verify=verify)


class _DeclaredPayloadAuth(S3SigV4Auth):
    """botocore's S3 SigV4 with the payload hash we declare (streamed or unsent bodies)."""

    def __init__(self, credentials, payload_hash: str) -> None:
        super().__init__(credentials, "s3", "us-east-1")
        self._payload_hash = payload_hash

    def payload(self, request):
        return self._payload_hash


def signed_headers(method: str, url: str, headers: dict | None = None, *, payload_hash: str,
                   key: str, secret: str) -> dict[str, str]:
    """Headers of a request signed by botocore (not by inproxy's own signer), Host included."""
    request = AWSRequest(method=method, url=url, headers=dict(headers or {}))
    _DeclaredPayloadAuth(BotoCredentials(key, secret), payload_hash).add_auth(request)
    signed = dict(request.headers.items())
    signed.setdefault("Host", URL(url).raw_authority)
    return signed
