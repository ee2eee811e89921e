"""Backend credential providers over real sockets: IBM IAM bearer tokens, the AWS default
chain, function providers through the SecretsCache, and what each backend flavour signs."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from inproxy import AllowAll, AWSDefaultChain, Backend, IBMIAMToken, Identity, ProxyServer, SecretsCache



class Recorder:
    """A stand-in backend that answers 200 and remembers each request's headers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []

    async def handle(self, request: web.BaseRequest) -> web.Response:
        self.requests.append({k.lower(): v for k, v in request.headers.items()})
        return web.Response(body=b"ok", content_type="application/octet-stream")


async def _serve(handler) -> tuple[web.BaseRunner, str]:
    runner = web.ServerRunner(web.Server(handler), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


class IAMStandIn:
    """IBM Cloud IAM's token endpoint, as far as the proxy uses it."""

    def __init__(self, lifetime: int = 3600) -> None:
        self.calls = 0
        self.lifetime = lifetime

    async def handle(self, request: web.BaseRequest) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "urn:ibm:params:oauth:grant-type:apikey" or form.get("apikey") != "api-key-1":
            return web.json_response({"errorCode": "BXNIM0415E"}, status=400)
        self.calls += 1
        return web.json_response({"access_token": f"iam-token-{self.calls}", "token_type": "Bearer",
                                  "expires_in": self.lifetime, "expiration": int(time.time()) + self.lifetime})


def _any_identity(ctx) -> Identity:
    return Identity("tester")


async def _get(url: str, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url + path, headers=headers or {}) as resp:
            return resp.status, await resp.read()


async def test_ibm_iam_token_is_fetched_once_and_sent_as_bearer():
    recorder, iam = Recorder(), IAMStandIn()
    backend_runner, backend_url = await _serve(recorder.handle)
    iam_runner, iam_url = await _serve(iam.handle)
    try:
        backend = Backend(endpoint=backend_url, flavor="ibm",
                          credentials=IBMIAMToken("api-key-1", iam_url=iam_url + "/identity/token"))
        async with ProxyServer(backends={"cos": backend}, authenticator=_any_identity,
                               authorizer=AllowAll()) as proxy:
            results = await asyncio.gather(*[_get(proxy.endpoint_url, f"/cos/k{i}") for i in range(20)])
        assert [status for status, _ in results] == [200] * 20
        assert iam.calls == 1  # one fetch for twenty concurrent requests
        assert {r["authorization"] for r in recorder.requests} == {"Bearer iam-token-1"}
        assert not any("x-amz-date" in r for r in recorder.requests)  # not SigV4-signed
    finally:
        await backend_runner.cleanup()
        await iam_runner.cleanup()


async def test_ibm_iam_token_is_refreshed_before_expiry():
    recorder, iam = Recorder(), IAMStandIn(lifetime=40)  # inside the cache's refresh window
    backend_runner, backend_url = await _serve(recorder.handle)
    iam_runner, iam_url = await _serve(iam.handle)
    try:
        offset = [0.0]  # the cache's clock runs ahead on demand; the IAM stand-in's does not
        cache = SecretsCache(expiry_margin=5, refresh_ahead=60, clock=lambda: time.time() + offset[0])
        backend = Backend(endpoint=backend_url, credentials=IBMIAMToken("api-key-1", iam_url=iam_url))
        async with ProxyServer(backends={"cos": backend}, authenticator=_any_identity,
                               authorizer=AllowAll(), cache=cache) as proxy:
            assert (await _get(proxy.endpoint_url, "/cos/k"))[0] == 200
            offset[0] = 20.0  # past half of the token's cached life, inside refresh_ahead
            for _ in range(5):
                assert (await _get(proxy.endpoint_url, "/cos/k"))[0] == 200
                await asyncio.sleep(0.05)
        assert iam.calls >= 2  # refreshed in the background while the old token was served
        assert recorder.requests[0]["authorization"] == "Bearer iam-token-1"
        assert recorder.requests[-1]["authorization"] == "Bearer iam-token-2"
    finally:
        await backend_runner.cleanup()
        await iam_runner.cleanup()


async def test_ibm_iam_failure_is_an_s3_error_and_not_cached():
    iam_runner, iam_url = await _serve(IAMStandIn().handle)
    recorder = Recorder()
    backend_runner, backend_url = await _serve(recorder.handle)
    try:
        backend = Backend(endpoint=backend_url, credentials=IBMIAMToken("wrong-key", iam_url=iam_url))
        async with ProxyServer(backends={"cos": backend}, authenticator=_any_identity,
                               authorizer=AllowAll()) as proxy:
            status, body = await _get(proxy.endpoint_url, "/cos/k")
        assert status == 500 and b"<Code>InternalError</Code>" in body
        assert b"wrong-key" not in body
        assert recorder.requests == []
    finally:
        await backend_runner.cleanup()
        await iam_runner.cleanup()


def test_aws_default_chain_signs_with_environment_credentials(seaweed, monkeypatch):
    import boto3
    from botocore.config import Config

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    backend = Backend(endpoint=seaweed.endpoint_url, region=seaweed.region, credentials=AWSDefaultChain())
    direct = boto3.client("s3", **seaweed.client_kwargs())
    direct.create_bucket(Bucket="chain-bucket")
    with ProxyServer.run_in_thread(backends={"*": backend}, keys={"AK": "SK"}, authorizer=AllowAll()) as proxy:
        s3 = boto3.client("s3", endpoint_url=proxy.endpoint_url, aws_access_key_id="AK",
                          aws_secret_access_key="SK", region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
        s3.put_object(Bucket="chain-bucket", Key="k", Body=b"via the chain")
    assert direct.get_object(Bucket="chain-bucket", Key="k")["Body"].read() == b"via the chain"


async def test_function_provider_is_cached_per_identity_and_bucket(seaweed):
    calls: list[tuple[str, str]] = []

    async def provider(identity, bucket):
        calls.append((identity.name, bucket))
        return {"access_key": seaweed.access_key, "secret_key": seaweed.secret_key}

    def who(ctx) -> Identity:
        return Identity(ctx.request.headers.get("x-test-user", "nobody"))

    recorder = Recorder()
    runner, url = await _serve(recorder.handle)
    try:
        backend = Backend(endpoint=url, credentials=provider)
        async with ProxyServer(backends={"*": backend}, authenticator=who, authorizer=AllowAll()) as proxy:
            for user in ("alice", "bob", "alice"):
                for bucket in ("one-bucket", "two-bucket", "one-bucket"):
                    status, _ = await _get(proxy.endpoint_url, f"/{bucket}/k", {"x-test-user": user})
                    assert status == 200
        assert sorted(calls) == sorted({(u, b) for u in ("alice", "bob") for b in ("one-bucket", "two-bucket")})
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("flavor", ["s3", "gcs"])
async def test_accept_encoding_is_never_signed(flavor):
    recorder = Recorder()
    runner, url = await _serve(recorder.handle)
    try:
        backend = Backend(endpoint=url, flavor=flavor, region="auto" if flavor == "gcs" else "us-east-1",
                          credentials={"access_key": "GOOG1EXAMPLE", "secret_key": "secret"})
        async with ProxyServer(backends={"*": backend}, authenticator=_any_identity,
                               authorizer=AllowAll()) as proxy:
            status, _ = await _get(proxy.endpoint_url, "/bkt/k", {"Accept-Encoding": "gzip"})
        assert status == 200
        sent = recorder.requests[0]
        assert sent["accept-encoding"] == "gzip"  # forwarded ...
        signed = sent["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
        assert "accept-encoding" not in signed and "host" in signed  # ... but not signed
    finally:
        await runner.cleanup()
