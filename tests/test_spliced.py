"""Zero-copy bodies through the proxy (inproxy.spliced), end to end over real sockets.

SeaweedFS verifies every signature the proxy makes; the bytes are checked by SHA-256 on
both sides.  A logging hook reports which bodies were spliced (``ctx.state``), so each
test knows which path it exercised.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import aiohttp
import requests
import pytest

from inproxy import AllowAll, ProxyHooks, ProxyServer
from inproxy.splice import available
from inproxy.spliced import SPLICE_MIN_BYTES, STATE_SPLICED
from util import backend_for, new_bucket, s3_client

pytestmark = pytest.mark.skipif(not available(), reason="splice(2) is Linux-only")

AK, SK = "AKSPLICE", "splice-secret-0123456789"
T = 20.0  # seconds: any socket wait beyond this is a hang


class Seen(ProxyHooks):
    """Remembers (operation, spliced bodies, status, error) of every request."""

    def __init__(self) -> None:
        self.requests: list[tuple] = []

    async def logging(self, ctx, error):
        self.requests.append((ctx.s3.operation if ctx.s3 else None, ctx.state.get(STATE_SPLICED, ()),
                              ctx.status, error))


class CountingResponses(Seen):
    """Sees every response byte: the response may not be spliced."""

    def __init__(self) -> None:
        super().__init__()
        self.seen_bytes = 0

    async def response_body_filter(self, ctx, chunk):
        self.seen_bytes += len(chunk)
        return chunk


def _proxy(seaweed, hooks: ProxyHooks) -> ProxyServer:
    return ProxyServer(backend_for(seaweed), keys={AK: SK}, authorizer=AllowAll(), hooks=hooks)


def _client(proxy: ProxyServer):
    return s3_client(proxy.endpoint_url, AK, SK)


@pytest.fixture(scope="module")
def bucket(seaweed):
    return new_bucket(seaweed, "splice")


@pytest.fixture(scope="module")
def big(seaweed, bucket):
    """An 8 MiB object of random bytes, stored directly, and its SHA-256."""
    data = os.urandom(8 * 1024 * 1024)
    s3_client(seaweed.endpoint_url, seaweed.access_key, seaweed.secret_key).put_object(
        Bucket=bucket, Key="big", Body=data)
    return data


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _head(proxy: ProxyServer, method: str, presigned_url: str, length: int | None = None) -> bytes:
    """The request head of a presigned URL on the proxy, as raw bytes."""
    target = presigned_url.split(str(proxy.port), 1)[1]
    length_line = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n{length_line}\r\n".encode()


async def _in_thread(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


async def test_large_get_is_spliced_and_byte_exact(seaweed, bucket, big):
    seen = Seen()
    async with _proxy(seaweed, seen) as proxy:
        s3 = _client(proxy)
        got = await _in_thread(lambda: s3.get_object(Bucket=bucket, Key="big")["Body"].read())
        middle = await _in_thread(lambda: s3.get_object(Bucket=bucket, Key="big", Range="bytes=1000-1049575")["Body"].read())
        small = await _in_thread(lambda: s3.get_object(Bucket=bucket, Key="big", Range="bytes=0-999")["Body"].read())
    assert _sha(got) == _sha(big)
    assert middle == big[1000:1049576]
    assert small == big[:1000]
    assert [(op, spliced, status) for op, spliced, status, _ in seen.requests] == [
        ("GetObject", ("response",), 200), ("GetObject", ("response",), 206), ("GetObject", (), 206)]


async def test_large_unsigned_put_is_spliced_and_the_connection_kept(seaweed, bucket):
    """A presigned PUT (UNSIGNED-PAYLOAD: nothing to hash) is spliced to the backend; the
    same client connection then carries a second PUT (with Expect: 100-continue) and a GET."""
    seen = Seen()
    first, second = os.urandom(3 * 1024 * 1024 + 7), os.urandom(SPLICE_MIN_BYTES * 2)
    async with _proxy(seaweed, seen) as proxy:
        s3 = _client(proxy)
        urls = [s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": k}) for k in ("p1", "p2")]
        get_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p1"})
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=T)) as http:
            async with http.put(urls[0], data=first) as response:
                assert response.status == 200, await response.text()
            async with http.put(urls[1], data=second, expect100=True) as response:
                assert response.status == 200, await response.text()
            async with http.get(get_url) as response:
                assert response.status == 200 and _sha(await response.read()) == _sha(first)
            assert len(connector._conns) == 1 and sum(len(v) for v in connector._conns.values()) == 1
    direct = s3_client(seaweed.endpoint_url, seaweed.access_key, seaweed.secret_key)
    stored = await _in_thread(lambda: direct.get_object(Bucket=bucket, Key="p2")["Body"].read())
    assert _sha(stored) == _sha(second)
    assert [(op, spliced, status) for op, spliced, status, _ in seen.requests] == [
        ("PutObject", ("request",), 200), ("PutObject", ("request",), 200), ("GetObject", ("response",), 200)]


async def test_raw_keepalive_after_a_spliced_put(seaweed, bucket):
    """Byte-level: after a spliced body the proxy parses the next request on the socket
    from its first byte (its parser never saw the spliced bytes)."""
    seen = Seen()
    body = os.urandom(SPLICE_MIN_BYTES + 12345)
    async with _proxy(seaweed, seen) as proxy:
        s3 = _client(proxy)
        put = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "raw"})
        get = s3.generate_presigned_url("head_object", Params={"Bucket": bucket, "Key": "raw"})
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            # The HEAD is pipelined right behind the body, in the same write.
            writer.write(_head(proxy, "PUT", put, len(body)) + body + _head(proxy, "HEAD", get))
            await writer.drain()
            first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
            assert first.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in first
            assert b"Content-Length: 0" in first
            second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
            assert second.startswith(b"HTTP/1.1 200 ")
            assert f"Content-Length: {len(body)}".encode() in second
        finally:
            writer.close()
    assert [(op, spliced, status) for op, spliced, status, _ in seen.requests] == [
        ("PutObject", ("request",), 200), ("HeadObject", (), 200)]


async def test_client_leaving_mid_spliced_put_stores_nothing(seaweed, bucket):
    seen = Seen()
    async with _proxy(seaweed, seen) as proxy:
        s3 = _client(proxy)
        put = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "cut"})
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        size = 4 * 1024 * 1024
        writer.write(_head(proxy, "PUT", put, size) + os.urandom(size // 2))
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()  # half the body, then gone
        for _ in range(100):
            if seen.requests:
                break
            await asyncio.sleep(0.05)
        # The proxy still serves.
        assert (await _in_thread(lambda: s3.list_objects_v2(Bucket=bucket)))["ResponseMetadata"]["HTTPStatusCode"] == 200
    (op, spliced, status, error) = seen.requests[0]
    assert (op, spliced) == ("PutObject", ("request",)) and error is not None
    direct = s3_client(seaweed.endpoint_url, seaweed.access_key, seaweed.secret_key)
    listed = await _in_thread(lambda: direct.list_objects_v2(Bucket=bucket, Prefix="cut"))
    assert listed.get("KeyCount", 0) == 0


async def test_client_leaving_mid_spliced_get_leaves_the_proxy_healthy(seaweed, bucket, big):
    seen = Seen()
    async with _proxy(seaweed, seen) as proxy:
        s3 = _client(proxy)
        url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "big"})
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(_head(proxy, "GET", url))
        await writer.drain()
        await asyncio.wait_for(reader.readexactly(1024 * 1024), T)
        writer.transport.abort()  # gone with 7 MiB still to come
        got = await _in_thread(lambda: s3.get_object(Bucket=bucket, Key="big")["Body"].read())
        assert _sha(got) == _sha(big)
    assert seen.requests[0][1] == ("response",) and seen.requests[0][3] is not None
    assert seen.requests[1][1:] == (("response",), 200, None)


async def test_a_body_hook_or_a_payload_hash_keeps_bytes_in_python(seaweed, bucket, big):
    """Hooks that see the bytes, and a signed payload hash the proxy checks, rule splicing out."""
    seen = CountingResponses()
    data = os.urandom(SPLICE_MIN_BYTES * 3)
    async with _proxy(seaweed, seen) as proxy:
        s3 = _client(proxy)
        got = await _in_thread(lambda: s3.get_object(Bucket=bucket, Key="big")["Body"].read())
        # boto3 over plain HTTP signs the payload's SHA-256: the proxy must hash it.
        await _in_thread(lambda: s3.put_object(Bucket=bucket, Key="hashed", Body=data))
    assert _sha(got) == _sha(big) and seen.seen_bytes == len(big)
    assert [(op, spliced) for op, spliced, _, _ in seen.requests] == [("GetObject", ()), ("PutObject", ())]
    plain = Seen()
    async with _proxy(seaweed, plain) as proxy:
        s3 = _client(proxy)
        await _in_thread(lambda: s3.put_object(Bucket=bucket, Key="hashed", Body=data))
        stored = await _in_thread(lambda: s3.get_object(Bucket=bucket, Key="hashed")["Body"].read())
    assert stored == data
    assert [(op, spliced) for op, spliced, _, _ in plain.requests] == [("PutObject", ()), ("GetObject", ("response",))]


def test_spliced_both_ways_on_uvloop(seaweed, bucket):
    """The same zero-copy paths on a host loop that is uvloop (the proxy in its own thread)."""
    uvloop = pytest.importorskip("uvloop")
    seen = Seen()
    data = os.urandom(2 * 1024 * 1024 + 3)
    with ProxyServer.run_in_thread(backend_for(seaweed), keys={AK: SK}, authorizer=AllowAll(), hooks=seen,
                                   loop_factory=uvloop.new_event_loop) as proxy:
        s3 = _client(proxy)
        put = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "uv"})
        assert requests.put(put, data=data, timeout=T).status_code == 200
        assert s3.get_object(Bucket=bucket, Key="uv")["Body"].read() == data
    assert [(op, spliced) for op, spliced, _, _ in seen.requests] == [
        ("PutObject", ("request",)), ("GetObject", ("response",))]


async def test_beyond_max_splices_bodies_are_copied_and_the_pipe_is_reused(seaweed, bucket, big):
    """One pipe (max_splices=1): while a slow client holds it, another large GET is copied
    through Python, byte-exact; once given back the pipe serves the next splice."""
    seen = Seen()
    async with ProxyServer(backend_for(seaweed), keys={AK: SK}, authorizer=AllowAll(), hooks=seen,
                           max_splices=1) as proxy:
        s3 = _client(proxy)
        url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "big"})
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(_head(proxy, "GET", url))
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
            first = await asyncio.wait_for(reader.readexactly(1024 * 1024), T)  # then it stops reading
            assert proxy.pipeline.pipes.in_use == 1
            copied = await _in_thread(lambda: s3.get_object(Bucket=bucket, Key="big")["Body"].read())
            rest = await asyncio.wait_for(reader.readexactly(len(big) - len(first)), T)
        finally:
            writer.transport.abort()
        assert head.startswith(b"HTTP/1.1 200") and _sha(first + rest) == _sha(big)
        assert _sha(copied) == _sha(big)
        pipe = proxy.pipeline.pipes.take()
        proxy.pipeline.pipes.give_back(pipe, clean=True)
        again = await _in_thread(lambda: s3.get_object(Bucket=bucket, Key="big")["Body"].read())
        assert _sha(again) == _sha(big) and proxy.pipeline.pipes.take() is pipe  # the same pipe
        proxy.pipeline.pipes.give_back(pipe, clean=True)
    assert [(op, spliced, status) for op, spliced, status, _ in seen.requests] == [
        ("GetObject", (), 200), ("GetObject", ("response",), 200), ("GetObject", ("response",), 200)]


async def test_max_splices_zero_never_splices(seaweed, bucket, big):
    seen = Seen()
    data = os.urandom(SPLICE_MIN_BYTES * 2)
    async with ProxyServer(backend_for(seaweed), keys={AK: SK}, authorizer=AllowAll(), hooks=seen,
                           max_splices=0) as proxy:
        s3 = _client(proxy)
        put = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "never"})
        assert (await _in_thread(lambda: requests.put(put, data=data, timeout=T))).status_code == 200
        got = await _in_thread(lambda: s3.get_object(Bucket=bucket, Key="never")["Body"].read())
    assert got == data
    assert [(op, spliced) for op, spliced, _, _ in seen.requests] == [("PutObject", ()), ("GetObject", ())]
