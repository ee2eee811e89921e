"""Anonymous access only where opened explicitly, and never for requests that carry credentials."""

from __future__ import annotations

import asyncio

import aiohttp
import boto3

from inproxy import AllowAll, ProxyServer
from inproxy.auth.anonymous import AnonymousAccess
from util import backend_for, s3_client


async def _status(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, headers=headers or {}) as resp:
            return resp.status, await resp.read()


async def test_anonymous_reads_only_where_opened(seaweed):
    direct = boto3.client("s3", **seaweed.client_kwargs())
    direct.create_bucket(Bucket="anon-pub")
    direct.put_object(Bucket="anon-pub", Key="docs/readme.txt", Body=b"public")
    direct.put_object(Bucket="anon-pub", Key="private/secret.txt", Body=b"private")
    seen = []

    def authorizer(access):
        seen.append((access.identity.name, access.operation, access.key))
        return True

    anonymous = AnonymousAccess({"anon-pub": ["docs/"]})
    async with ProxyServer(backends={"*": backend_for(seaweed)}, keys={"AK": "SK"},
                           authenticator=anonymous, authorizer=authorizer) as proxy:
        base = proxy.endpoint_url
        assert await _status(f"{base}/anon-pub/docs/readme.txt") == (200, b"public")
        assert (await _status(f"{base}/anon-pub/private/secret.txt"))[0] == 403
        assert (await _status(f"{base}/anon-pub/docs/new.txt", method="PUT"))[0] == 403  # reads only
        assert (await _status(f"{base}/anon-pub?list-type=2&prefix=docs/"))[0] == 200
        assert (await _status(f"{base}/anon-pub?list-type=2"))[0] == 403  # the whole bucket is not open
        # A request with credentials is never anonymous, even for an open key.
        status, body = await _status(f"{base}/anon-pub/docs/readme.txt",
                                     {"Authorization": "AWS4-HMAC-SHA256 Credential=AK/20260101/us-east-1/s3/aws4_request, "
                                                       "SignedHeaders=host, Signature=" + "0" * 64,
                                      "x-amz-date": "20260101T000000Z", "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
        assert status in (400, 403) and b"anonymous" not in body
        wrong = s3_client(base, "AK", "wrong-secret")
        try:  # boto3 blocks: off the loop that serves the proxy
            await asyncio.to_thread(wrong.get_object, Bucket="anon-pub", Key="docs/readme.txt")
            raise AssertionError("a wrong signature must not fall back to anonymous")
        except wrong.exceptions.ClientError as err:
            assert err.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert ("anonymous", "GetObject", "docs/readme.txt") in seen
    assert all(key != "private/secret.txt" for _, _, key in seen)  # refused before the authorizer


async def test_no_anonymous_access_by_default(seaweed):
    async with ProxyServer(backends={"*": backend_for(seaweed)}, keys={"AK": "SK"},
                           authorizer=AllowAll()) as proxy:
        status, body = await _status(f"{proxy.endpoint_url}/anon-pub/docs/readme.txt")
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
