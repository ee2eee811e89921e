"""The proxy under hostile conditions: broken backends and clients, Expect: 100-continue,
every error path, lifecycle hooks, shutdown, and memory while streaming large objects.

Clients are real sockets: raw asyncio streams where the exact bytes on the wire matter,
aiohttp or boto3 elsewhere.  Backends are SeaweedFS (which verifies SigV4) or a tiny raw
HTTP server (``RawBackend``) that records what it received and misbehaves on purpose.
Timing assertions are orderings or generous bounds: the machine is shared.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Iterator, Mapping

import aiohttp
import botocore.exceptions
import pytest
from aiohttp import web
from yarl import URL

import inproxy
from inproxy import AllowAll, Backend, Identity, ProxyHooks, ProxyServer
from inproxy.testing.servers import SeaweedFS

import util
from util import backend_for, s3_client

AK, SK = "ROBUSTCLIENT", "robust-client-secret"
UNSIGNED = "UNSIGNED-PAYLOAD"
KiB, MiB = 1024, 1024 * 1024
BUCKET = "robustness"
FAKE_CREDENTIALS = {"access_key": "backend-key", "secret_key": "backend-secret"}


# -- signing and raw HTTP ---------------------------------------------------------------------


def signed_headers(method: str, url: str, headers: dict | None = None, *, payload_hash: str = UNSIGNED,
                   key: str = AK, secret: str = SK) -> dict[str, str]:
    """Headers of a request signed by botocore (not by inproxy's own signer)."""
    return util.signed_headers(method, url, headers, payload_hash=payload_hash, key=key, secret=secret)


def request_head(method: str, target: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def signed_head(proxy: ProxyServer, method: str, target: str, headers: dict | None = None, *,
                payload_hash: str = UNSIGNED, extra: dict | None = None, **sign_kw) -> bytes:
    """A raw request head signed for the proxy; ``extra`` headers are sent unsigned."""
    signed = signed_headers(method, proxy.endpoint_url + target, headers, payload_hash=payload_hash, **sign_kw)
    return request_head(method, target, {**signed, **(extra or {})})


async def read_head(reader: asyncio.StreamReader, timeout: float = 15) -> tuple[int, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 15) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout)


async def read_sized_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    return await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 15)


async def connect(proxy: ProxyServer):
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def raw_exchange(proxy: ProxyServer, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one request head, read the response head and then everything until the proxy closes."""
    reader, writer = await connect(proxy)
    try:
        writer.write(head)
        await writer.drain()
        status, headers = await read_head(reader)
        return status, headers, await read_to_eof(reader)
    finally:
        writer.close()


async def call(proxy: ProxyServer, method: str, path: str, *, body: bytes = b"",
               headers: dict | None = None, **sign_kw) -> tuple[int, Mapping[str, str], bytes]:
    """One signed request through aiohttp: (status, headers, body)."""
    url = proxy.endpoint_url + path
    sign_kw.setdefault("payload_hash", hashlib.sha256(body).hexdigest())
    signed = signed_headers(method, url, headers, **sign_kw)
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.request(method, URL(url, encoded=True), headers=signed,
                                   data=body or None) as response:
            return response.status, response.headers, await response.read()


def error_fields(body: bytes) -> dict[str, str]:
    root = ET.fromstring(body)
    assert root.tag == "Error"
    return {child.tag: child.text or "" for child in root}


def assert_s3_error(status: int, headers, body: bytes, code: str, expected_status: int, log_text: str) -> dict:
    """An S3 XML error with this code and status whose RequestId is in the header and the log."""
    assert status == expected_status, body
    fields = error_fields(body)
    assert fields["Code"] == code, fields
    request_id = fields["RequestId"]
    assert request_id and headers["x-amz-request-id"] == request_id
    assert request_id in log_text
    return fields


# -- a raw backend that records and misbehaves ------------------------------------------------


@dataclass
class Received:
    """One request as the raw backend saw it."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False  # the whole Content-Length arrived
    ended: asyncio.Event = field(default_factory=asyncio.Event)


Responder = Callable[[Received, asyncio.StreamWriter, "RawBackend"], Awaitable[bool]]


class RawBackend:
    """A minimal HTTP/1.1 server on loopback: reads each request (recording how much of
    its body arrived), then lets ``respond`` write anything; ``respond`` returns whether
    the connection stays open."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.requests: list[Received] = []
        self.arrived = asyncio.Event()
        self.closing = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._tasks)

    def backend(self, **kwargs) -> Backend:
        return Backend(endpoint=self.url, credentials=FAKE_CREDENTIALS, **kwargs)

    async def __aenter__(self) -> "RawBackend":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.closing.set()
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        try:
            while await self._one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(asyncio.current_task())
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        received = Received(method, target, headers)
        self.requests.append(received)
        self.arrived.set()
        length = int(headers.get("content-length", "0"))
        while len(received.body) < length:
            chunk = await reader.read(min(256 * KiB, length - len(received.body)))
            if not chunk:
                break
            received.body += chunk
        received.complete = len(received.body) == length
        received.ended.set()
        return await self.respond(received, writer, self)


async def answer_empty(received: Received, writer: asyncio.StreamWriter, backend: RawBackend) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    return True


async def die_after_100k_of_1m(received: Received, writer: asyncio.StreamWriter, backend: RawBackend) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: application/octet-stream\r\n\r\n" % MiB)
    writer.write(b"a" * (100 * KiB))
    await writer.drain()
    return False


async def die_mid_chunked(received: Received, writer: asyncio.StreamWriter, backend: RawBackend) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(4):
        writer.write(b"%x\r\n" % (25 * KiB) + b"c" * (25 * KiB) + b"\r\n")
    writer.write(b"%x\r\n" % (25 * KiB) + b"c" * KiB)  # a chunk cut short, no terminating 0-chunk
    await writer.drain()
    return False


async def never_answer(received: Received, writer: asyncio.StreamWriter, backend: RawBackend) -> bool:
    await backend.closing.wait()
    return False


def serve_bytes(size: int) -> Responder:
    async def respond(received: Received, writer: asyncio.StreamWriter, backend: RawBackend) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"z" * MiB
        for offset in range(0, size, MiB):
            writer.write(block[: min(MiB, size - offset)])
            await writer.drain()
        return True
    return respond


# -- proxies and fixtures ---------------------------------------------------------------------


@asynccontextmanager
async def running_proxy(backends, **kwargs) -> AsyncIterator[ProxyServer]:
    kwargs.setdefault("keys", {AK: SK})
    kwargs.setdefault("authorizer", AllowAll())
    async with ProxyServer(backends, **kwargs) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def weed_bucket(seaweed):
    """The SeaweedFS session server with this module's bucket."""
    client = boto3_direct(seaweed)
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return seaweed


def boto3_direct(info):
    return s3_client(info.endpoint_url, info.access_key, info.secret_key, region=info.region)


def proxy_client(proxy: ProxyServer, key: str = AK, secret: str = SK):
    return s3_client(proxy.endpoint_url, key, secret)


@pytest.fixture
def inproxy_log(caplog):
    caplog.set_level(logging.INFO, logger="inproxy")
    return caplog


class RecordingHooks(ProxyHooks):
    """Records the order of lifecycle phases and what logging() was told."""

    def __init__(self) -> None:
        self.phases: list[str] = []
        self.logged: list[BaseException | None] = []
        self.done = asyncio.Event()

    async def request_filter(self, ctx):
        self.phases.append("request_filter")

    async def upstream_peer(self, ctx):
        self.phases.append("upstream_peer")

    async def upstream_request_filter(self, ctx):
        self.phases.append("upstream_request_filter")

    async def request_body_filter(self, ctx, chunk):
        self.phases.append("request_body_filter")
        return chunk

    async def response_filter(self, ctx, status, headers):
        self.phases.append("response_filter")

    async def response_body_filter(self, ctx, chunk):
        self.phases.append("response_body_filter")
        return chunk

    async def logging(self, ctx, error):
        self.phases.append("logging")
        self.logged.append(error)
        self.done.set()

    def order(self) -> list[str]:
        """The phases with repeats (one per chunk) collapsed."""
        return [p for i, p in enumerate(self.phases) if i == 0 or self.phases[i - 1] != p]


# == 1. broken transfers: the backend or the client dies, a hook fails mid-stream ==============


async def test_backend_dying_mid_body_breaks_the_client_connection():
    async with RawBackend(die_after_100k_of_1m) as raw, running_proxy(raw.backend()) as proxy:
        status, headers, body = await raw_exchange(proxy, signed_head(proxy, "GET", "/bkt/obj"))
        assert status == 200 and headers["content-length"] == str(MiB)
        assert len(body) < MiB  # and the connection closed: visibly short

        with pytest.raises(aiohttp.ClientPayloadError):
            await call(proxy, "GET", "/bkt/obj")

        def boto3_read():
            return proxy_client(proxy).get_object(Bucket="bkt", Key="obj")["Body"].read()

        with pytest.raises((botocore.exceptions.IncompleteReadError,
                            botocore.exceptions.ResponseStreamingError)):
            await asyncio.to_thread(boto3_read)


async def test_backend_dying_mid_chunked_body_leaves_the_chunked_stream_unterminated():
    hooks = RecordingHooks()
    async with RawBackend(die_mid_chunked) as raw, running_proxy(raw.backend(), hooks=hooks) as proxy:
        status, headers, body = await raw_exchange(proxy, signed_head(proxy, "GET", "/bkt/obj"))
        assert status == 200 and headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in headers
        assert not body.endswith(b"0\r\n\r\n")
        await asyncio.wait_for(hooks.done.wait(), 10)
        assert hooks.logged[0] is not None  # the cut is reported to logging()

        with pytest.raises(aiohttp.ClientPayloadError):
            await call(proxy, "GET", "/bkt/obj")


async def test_client_leaving_mid_download_is_logged_and_frees_the_backend():
    hooks = RecordingHooks()
    async with RawBackend(serve_bytes(64 * MiB)) as raw, running_proxy(raw.backend(), hooks=hooks) as proxy:
        reader, writer = await connect(proxy)
        writer.write(signed_head(proxy, "GET", "/bkt/big"))
        await writer.drain()
        assert (await read_head(reader))[0] == 200
        await reader.readexactly(MiB)
        writer.transport.abort()
        await asyncio.wait_for(hooks.done.wait(), 15)
        assert hooks.logged[0] is not None
        # The backend's connection was closed too: its handler ended, not blocked in a write.
        for _ in range(100):
            if not raw.open_connections:
                break
            await asyncio.sleep(0.1)
        assert not raw.open_connections


class _BrokenResponseBody(ProxyHooks):
    async def response_body_filter(self, ctx, chunk):
        if ctx.bytes_out > 0:
            raise RuntimeError("response hook broke")
        return chunk


async def test_response_body_hook_raising_mid_stream_breaks_the_connection(inproxy_log):
    async with RawBackend(serve_bytes(8 * MiB)) as raw, \
            running_proxy(raw.backend(), hooks=_BrokenResponseBody()) as proxy:
        status, headers, body = await raw_exchange(proxy, signed_head(proxy, "GET", "/bkt/big"))
    assert status == 200 and headers["content-length"] == str(8 * MiB)
    assert len(body) < 8 * MiB and b"HTTP/1.1" not in body  # cut, and no second answer spliced in
    assert "response hook broke" in inproxy_log.text


class _BrokenRequestBody(ProxyHooks):
    async def request_body_filter(self, ctx, chunk):
        raise RuntimeError("request hook broke")


async def test_request_body_hook_raising_is_500_and_the_backend_gets_a_short_body(inproxy_log):
    async with RawBackend(answer_empty) as raw, \
            running_proxy(raw.backend(), hooks=_BrokenRequestBody()) as proxy:
        status, headers, body = await call(proxy, "PUT", "/bkt/obj", body=b"b" * (2 * MiB))
        assert_s3_error(status, headers, body, "InternalError", 500, inproxy_log.text)
        await asyncio.sleep(0.3)  # the head may never have left: aiohttp sends it with the first chunk
        for received in raw.requests:
            await asyncio.wait_for(received.ended.wait(), 10)
    assert not any(received.complete for received in raw.requests)
    assert "request hook broke" in inproxy_log.text and b"hook" not in body


# == 2. the client disconnects mid-upload =======================================================


async def _upload_1m_of_10m_and_close(proxy: ProxyServer, key: str) -> None:
    head = signed_head(proxy, "PUT", f"/{BUCKET}/{key}", extra={"Content-Length": str(10 * MiB)})
    reader, writer = await connect(proxy)
    writer.write(head)
    writer.write(os.urandom(MiB))
    await writer.drain()
    writer.close()


async def test_client_disconnect_mid_upload_aborts_the_upstream_request():
    hooks = RecordingHooks()
    async with RawBackend(answer_empty) as raw, running_proxy(raw.backend(), hooks=hooks) as proxy:
        await _upload_1m_of_10m_and_close(proxy, "cut")
        await asyncio.wait_for(raw.arrived.wait(), 10)
        received = raw.requests[0]
        await asyncio.wait_for(received.ended.wait(), 15)  # the proxy closed its upstream connection
        assert received.headers["content-length"] == str(10 * MiB)
        assert not received.complete and len(received.body) <= MiB
        await asyncio.wait_for(hooks.done.wait(), 10)
        assert isinstance(hooks.logged[0], inproxy.S3Error) and hooks.logged[0].code == "IncompleteBody"


async def test_client_disconnect_mid_upload_stores_nothing_in_seaweedfs(weed_bucket):
    hooks = RecordingHooks()
    async with running_proxy(backend_for(weed_bucket), hooks=hooks) as proxy:
        await _upload_1m_of_10m_and_close(proxy, "cut-upload")
        await asyncio.wait_for(hooks.done.wait(), 15)
        assert hooks.logged[0] is not None
    await asyncio.sleep(0.5)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await asyncio.to_thread(boto3_direct(weed_bucket).head_object, Bucket=BUCKET, Key="cut-upload")
    assert info.value.response["Error"]["Code"] in ("404", "NoSuchKey")


# == 3. Expect: 100-continue ====================================================================


async def _expect_exchange(proxy: ProxyServer, target: str, body: bytes, **sign_kw):
    """Send a head with Expect: 100-continue; return the first response head and the connection."""
    head = signed_head(proxy, "PUT", target, payload_hash=hashlib.sha256(body).hexdigest(),
                       extra={"Content-Length": str(len(body)), "Expect": "100-continue"}, **sign_kw)
    reader, writer = await connect(proxy)
    writer.write(head)
    await writer.drain()
    status, headers = await read_head(reader)
    return status, headers, reader, writer


@pytest.mark.parametrize("case", ["wrong-secret", "unknown-key", "not-authorized"])
async def test_expect_continue_refused_without_100_and_without_backend(case):
    deny_denied = lambda access: access.key != "denied"  # noqa: E731
    sign_kw = {"wrong-secret": {"secret": "not-the-secret"}, "unknown-key": {"key": "NOSUCHKEY"},
               "not-authorized": {}}[case]
    key = "denied" if case == "not-authorized" else "obj"
    async with RawBackend(answer_empty) as raw, \
            running_proxy(raw.backend(), authorizer=deny_denied) as proxy:
        status, headers, reader, writer = await _expect_exchange(proxy, f"/bkt/{key}", b"x" * 1000, **sign_kw)
        try:
            assert status == 403  # the final answer came first: never 100 Continue
            code = error_fields(await read_sized_body(reader, headers))["Code"]
            assert code == {"wrong-secret": "SignatureDoesNotMatch", "unknown-key": "InvalidAccessKeyId",
                            "not-authorized": "AccessDenied"}[case]
        finally:
            writer.close()
        assert raw.requests == []


async def test_expect_continue_then_body_is_stored(weed_bucket):
    body = os.urandom(300 * KiB)
    async with running_proxy(backend_for(weed_bucket)) as proxy:
        status, _, reader, writer = await _expect_exchange(proxy, f"/{BUCKET}/expect-ok", body)
        try:
            assert status == 100
            writer.write(body)
            await writer.drain()
            status, headers = await read_head(reader)
            assert status == 200, await read_sized_body(reader, headers)
        finally:
            writer.close()
    stored = await asyncio.to_thread(
        lambda: boto3_direct(weed_bucket).get_object(Bucket=BUCKET, Key="expect-ok")["Body"].read())
    assert stored == body


async def test_expect_is_never_forwarded_upstream():
    async with RawBackend(answer_empty) as raw, running_proxy(raw.backend()) as proxy:
        status, _, reader, writer = await _expect_exchange(proxy, "/bkt/obj", b"y" * 5000)
        try:
            assert status == 100
            writer.write(b"y" * 5000)
            await writer.drain()
            assert (await read_head(reader))[0] == 200
        finally:
            writer.close()
    assert len(raw.requests) == 1 and raw.requests[0].complete
    assert "expect" not in raw.requests[0].headers
    assert "expect" not in raw.requests[0].headers.get("authorization", "").lower()


# == 4. errors: S3 XML, the right code, a RequestId that is in the log ===========================


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


async def test_unreachable_backend_is_502(inproxy_log):
    backend = Backend(endpoint=f"http://127.0.0.1:{_closed_port()}", credentials=FAKE_CREDENTIALS)
    async with running_proxy(backend) as proxy:
        assert_s3_error(*await call(proxy, "GET", "/bkt/obj"), "BadGateway", 502, inproxy_log.text)
        status, headers, body = await call(proxy, "PUT", "/bkt/obj", body=b"data")
        assert_s3_error(status, headers, body, "BadGateway", 502, inproxy_log.text)


async def test_backend_silent_past_read_timeout_is_504(inproxy_log):
    async with RawBackend(never_answer) as raw, running_proxy(raw.backend(read_timeout=1)) as proxy:
        assert_s3_error(*await call(proxy, "GET", "/bkt/obj"), "GatewayTimeout", 504, inproxy_log.text)


class _FailingHooks(ProxyHooks):
    def __init__(self, phase: str) -> None:
        self.phase = phase

    async def request_filter(self, ctx):
        if self.phase == "request_filter":
            raise RuntimeError("secret detail from request_filter")

    async def upstream_peer(self, ctx):
        if self.phase == "upstream_peer":
            raise RuntimeError("secret detail from upstream_peer")


@pytest.mark.parametrize("phase", ["request_filter", "upstream_peer"])
async def test_hook_that_raises_is_500_with_details_only_in_the_log(phase, inproxy_log):
    async with RawBackend(answer_empty) as raw, \
            running_proxy(raw.backend(), hooks=_FailingHooks(phase)) as proxy:
        status, headers, body = await call(proxy, "GET", "/bkt/obj")
    assert_s3_error(status, headers, body, "InternalError", 500, inproxy_log.text)
    assert b"secret detail" not in body and b"RuntimeError" not in body
    assert f"secret detail from {phase}" in inproxy_log.text
    assert raw.requests == []


async def test_credential_provider_that_raises_is_500(inproxy_log):
    def provider(identity, bucket):
        raise RuntimeError("vault is down")

    async with RawBackend(answer_empty) as raw, running_proxy(
            Backend(endpoint=raw.url), credential_provider=provider) as proxy:
        status, headers, body = await call(proxy, "GET", "/bkt/obj")
    assert_s3_error(status, headers, body, "InternalError", 500, inproxy_log.text)
    assert b"vault" not in body and "vault is down" in inproxy_log.text
    assert raw.requests == []


async def test_authorizer_that_raises_is_403(inproxy_log):
    def authorizer(access):
        raise RuntimeError("policy store unreachable")

    async with RawBackend(answer_empty) as raw, running_proxy(raw.backend(), authorizer=authorizer) as proxy:
        status, headers, body = await call(proxy, "GET", "/bkt/obj")
    assert_s3_error(status, headers, body, "AccessDenied", 403, inproxy_log.text)
    assert "authorizer failed" in inproxy_log.text and b"policy store" not in body
    assert raw.requests == []


async def test_header_section_over_max_header_bytes_is_400(inproxy_log):
    filler = {f"x-filler-{i}": "f" * 1500 for i in range(4)}  # 6 KB in all, each header small
    async with RawBackend(answer_empty) as raw, running_proxy(raw.backend(), max_header_bytes=4096) as proxy:
        status, headers, body = await raw_exchange(
            proxy, signed_head(proxy, "GET", "/bkt/obj", extra={**filler, "Connection": "close"}))
        assert_s3_error(status, headers, body, "RequestHeaderSectionTooLarge", 400, inproxy_log.text)
    assert raw.requests == []


@pytest.mark.parametrize("shape", ["one-huge-header", "too-many-headers", "huge-request-line"])
async def test_requests_aiohttp_refuses_get_s3_xml_errors_too(shape, inproxy_log):
    head = {
        "one-huge-header": request_head("GET", "/bkt/obj", {"Host": "x", "X-Big": "b" * 40_000}),
        "too-many-headers": request_head("GET", "/bkt/obj", {"Host": "x", **{f"x-h{i}": "v" for i in range(300)}}),
        "huge-request-line": request_head("GET", "/bkt/" + "k" * 40_000, {"Host": "x"}),
    }[shape]
    async with RawBackend(answer_empty) as raw, running_proxy(raw.backend()) as proxy:
        status, headers, body = await raw_exchange(proxy, head)
        assert headers["content-type"].startswith("application/xml")
        assert_s3_error(status, headers, body, "RequestHeaderSectionTooLarge", 400, inproxy_log.text)
    assert raw.requests == []


async def test_garbage_instead_of_http_is_an_s3_error(inproxy_log):
    async with RawBackend(answer_empty) as raw, running_proxy(raw.backend()) as proxy:
        status, headers, body = await raw_exchange(proxy, b"GET /bkt/obj HTTP/1.1\r\nHost x\x01\r\n\r\n")
        assert_s3_error(status, headers, body, "InvalidRequest", 400, inproxy_log.text)


async def test_malformed_authorization_is_400(inproxy_log):
    headers = {"Authorization": "AWS4-HMAC-SHA256 Credential=nonsense", "x-amz-content-sha256": UNSIGNED,
               "x-amz-date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())}
    async with RawBackend(answer_empty) as raw, running_proxy(raw.backend()) as proxy:
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy.endpoint_url + "/bkt/obj", headers=headers) as response:
                result = response.status, response.headers, await response.read()
    assert_s3_error(*result, "AuthorizationHeaderMalformed", 400, inproxy_log.text)
    assert raw.requests == []


async def test_unknown_method_is_405(inproxy_log):
    async with RawBackend(answer_empty) as raw, running_proxy(raw.backend()) as proxy:
        assert_s3_error(*await call(proxy, "PATCH", "/bkt/obj"), "MethodNotAllowed", 405, inproxy_log.text)
    assert raw.requests == []


@pytest.mark.parametrize("target, code", [
    ("/bkt/../other/k", "InvalidURI"),
    ("/bkt/a/%2e%2e/%2E%2E/other/k", "InvalidURI"),
    ("/bkt/a/%2e/k", "InvalidURI"),
    ("/bkt/a/..%2fb", "InvalidURI"),
    ("/bkt/..", "InvalidURI"),
    ("/bkt/key%00.txt", "InvalidURI"),
    ("/../bkt/k", "InvalidBucketName"),
    ("/bkt%2f..%2fother/k", "InvalidBucketName"),
])
async def test_path_tricks_are_400_and_never_reach_the_backend(target, code, inproxy_log):
    async with RawBackend(answer_empty) as raw, running_proxy(raw.backend()) as proxy:
        status, headers, body = await raw_exchange(
            proxy, signed_head(proxy, "GET", target, extra={"Connection": "close"}))
        assert_s3_error(status, headers, body, code, 400, inproxy_log.text)
    assert raw.requests == []


async def test_head_errors_have_no_body(inproxy_log):
    backend = Backend(endpoint=f"http://127.0.0.1:{_closed_port()}", credentials=FAKE_CREDENTIALS)
    async with running_proxy(backend, authorizer=lambda access: access.key != "denied") as proxy:
        for key, status in (("denied", 403), ("obj", 502)):
            reader, writer = await connect(proxy)
            try:
                writer.write(signed_head(proxy, "HEAD", f"/bkt/{key}"))
                await writer.drain()
                got, headers = await read_head(reader)
                assert got == status and headers["x-amz-request-id"] in inproxy_log.text
                # Nothing follows the head: a stray body would be read as the next response.
                with pytest.raises(asyncio.TimeoutError):
                    assert await asyncio.wait_for(reader.read(1), 0.5) == b""
            finally:
                writer.close()


# == 5. lifecycle hooks ==========================================================================


async def test_hook_phases_in_order_for_put_and_get(weed_bucket):
    body = os.urandom(3 * MiB)
    hooks = RecordingHooks()
    async with running_proxy(backend_for(weed_bucket), hooks=hooks) as proxy:
        client = proxy_client(proxy)
        await asyncio.to_thread(client.put_object, Bucket=BUCKET, Key="phases", Body=body)
        put_phases, put_logged = hooks.order(), list(hooks.logged)
        assert hooks.phases.count("request_body_filter") >= 1
        hooks.phases.clear(), hooks.logged.clear()
        got = await asyncio.to_thread(lambda: client.get_object(Bucket=BUCKET, Key="phases")["Body"].read())
        assert got == body
        get_phases, get_logged = hooks.order(), list(hooks.logged)
    assert put_phases[:4] == ["request_filter", "upstream_peer", "upstream_request_filter", "request_body_filter"]
    assert put_phases[4:] in (["response_filter", "logging"],
                              ["response_filter", "response_body_filter", "logging"])
    assert get_phases == ["request_filter", "upstream_peer", "upstream_request_filter", "response_filter",
                          "response_body_filter", "logging"]
    assert put_logged == [None] and get_logged == [None]


async def test_logging_gets_the_error_of_a_failing_request_once():
    hooks = RecordingHooks()
    backend = Backend(endpoint=f"http://127.0.0.1:{_closed_port()}", credentials=FAKE_CREDENTIALS)
    async with running_proxy(backend, hooks=hooks) as proxy:
        status, _, _ = await call(proxy, "GET", "/bkt/obj")
        denied_status, _, _ = await call(proxy, "GET", "/bkt/obj", secret="wrong")
    assert (status, denied_status) == (502, 403)
    assert hooks.phases.count("logging") == 2
    assert [getattr(e, "code", None) for e in hooks.logged] == ["BadGateway", "SignatureDoesNotMatch"]


async def test_request_filter_can_answer_without_the_backend():
    class Teapot(ProxyHooks):
        async def request_filter(self, ctx):
            return web.Response(status=418, text="answered by the hook")

    async with RawBackend(answer_empty) as raw, running_proxy(raw.backend(), hooks=Teapot()) as proxy:
        status, _, body = await call(proxy, "GET", "/bkt/obj")
    assert (status, body) == (418, b"answered by the hook")
    assert raw.requests == []


async def test_header_added_by_upstream_request_filter_is_signed(weed_bucket):
    class AddMetadata(ProxyHooks):
        async def upstream_request_filter(self, ctx):
            ctx.upstream.headers["x-amz-meta-added-by"] = "inproxy-hook"

    async with running_proxy(backend_for(weed_bucket), hooks=AddMetadata()) as proxy:
        await asyncio.to_thread(proxy_client(proxy).put_object, Bucket=BUCKET, Key="hooked", Body=b"hi")
    head = await asyncio.to_thread(boto3_direct(weed_bucket).head_object, Bucket=BUCKET, Key="hooked")
    assert head["Metadata"] == {"added-by": "inproxy-hook"}


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_plain_functions_as_authenticator_authorizer_and_credentials(flavour, weed_bucket):
    seen = []
    creds = {"access_key": weed_bucket.access_key, "secret_key": weed_bucket.secret_key}

    def authenticate(ctx):
        return Identity(name="fn-user") if ctx.request.headers.get("x-test-user") == "fn-user" else None

    def authorize(access):
        seen.append((access.identity.name, access.operation))
        return access.identity.name == "fn-user"

    def credentials(identity, bucket):
        return creds

    if flavour == "async":
        authenticate, authorize, credentials = _as_async(authenticate), _as_async(authorize), _as_async(credentials)
    backend = Backend(endpoint=weed_bucket.endpoint_url, region=weed_bucket.region)
    async with running_proxy(backend, keys=None, authenticator=authenticate, authorizer=authorize,
                             credential_provider=credentials) as proxy:
        status, _, _ = await call(proxy, "PUT", f"/{BUCKET}/fn-{flavour}", body=b"functions",
                                  headers={"x-test-user": "fn-user"})
        assert status == 200
        status, _, body = await call(proxy, "GET", f"/{BUCKET}/fn-{flavour}", headers={"x-test-user": "fn-user"})
        assert (status, body) == (200, b"functions")
        status, _, _ = await call(proxy, "GET", f"/{BUCKET}/fn-{flavour}")  # not recognised: no identity
        assert status == 403
    assert seen == [("fn-user", "PutObject"), ("fn-user", "GetObject")]


def _as_async(fn):
    async def wrapper(*args):
        await asyncio.sleep(0)
        return fn(*args)
    return wrapper


async def test_blocking_sync_hook_does_not_stall_other_requests():
    entered = threading.Event()
    finished: list[str] = []

    @inproxy.blocking
    def authorize(access):
        if access.key == "slow":
            entered.set()
            time.sleep(1.0)
        return True

    async def timed(key: str) -> None:
        status, _, _ = await call(proxy, "GET", f"/bkt/{key}")
        assert status == 200
        finished.append(key)

    async with RawBackend(answer_empty) as raw, running_proxy(raw.backend(), authorizer=authorize) as proxy:
        await call(proxy, "GET", "/bkt/warm-up")
        slow = asyncio.create_task(timed("slow"))
        assert await asyncio.to_thread(entered.wait, 10)
        await timed("fast")  # answered while the slow hook sleeps in its thread
        await slow
    assert finished == ["fast", "slow"]


# == 6. stop() ===================================================================================


async def test_stop_lets_a_slow_download_finish_then_returns():
    size = 20 * MiB
    async with RawBackend(serve_bytes(size)) as raw:
        proxy = await ProxyServer(raw.backend(), keys={AK: SK}, authorizer=AllowAll(),
                                  shutdown_timeout=20).start()
        reader, writer = await connect(proxy)
        writer.write(signed_head(proxy, "GET", "/bkt/big"))
        await writer.drain()
        status, headers = await read_head(reader)
        assert status == 200 and headers["content-length"] == str(size)
        got = len(await reader.read(256 * KiB))
        started = time.monotonic()
        stop = asyncio.create_task(proxy.stop())  # while ~20 MiB are still to go through the proxy
        while got < size:  # a throttled client: ~2.5 s for 20 MiB
            chunk = await asyncio.wait_for(reader.read(256 * KiB), 15)
            assert chunk, f"download cut at {got} bytes"
            got += len(chunk)
            await asyncio.sleep(0.03)
        await asyncio.wait_for(stop, 30)
        stopped = time.monotonic()
        writer.close()
    assert got == size
    assert stopped - started < 20 + 5


async def test_stop_does_not_wait_for_idle_keepalive_connections():
    async with RawBackend(answer_empty) as raw:
        proxy = await ProxyServer(raw.backend(), keys={AK: SK}, authorizer=AllowAll(),
                                  shutdown_timeout=10).start()
        reader, writer = await connect(proxy)
        writer.write(signed_head(proxy, "GET", "/bkt/obj"))
        await writer.drain()
        assert (await read_head(reader))[0] == 200  # the connection now idles in keep-alive
        started = time.monotonic()
        await asyncio.wait_for(proxy.stop(), 10)
        assert time.monotonic() - started < 5
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the proxy closed it
        writer.close()


async def test_stop_does_not_wait_for_bodies_refused_clients_never_send():
    # After refusing a request, aiohttp keeps reading ("lingering") its unread body for up
    # to 10 s: stop() must not wait for that, whether the client stays or leaves.
    async with RawBackend(answer_empty) as raw:
        proxy = await ProxyServer(raw.backend(), keys={AK: SK}, authorizer=AllowAll(),
                                  shutdown_timeout=10).start()
        connections = []
        for expect in ({"Expect": "100-continue"}, {}, {"Expect": "100-continue"}):
            reader, writer = await connect(proxy)
            writer.write(signed_head(proxy, "PUT", "/bkt/obj", secret="wrong",
                                     extra={"Content-Length": str(MiB), **expect}))
            await writer.drain()
            assert (await read_head(reader))[0] == 403
            connections.append((reader, writer))
        connections[0][1].close()  # one leaves, the others stay silent
        started = time.monotonic()
        await asyncio.wait_for(proxy.stop(), 15)
        assert time.monotonic() - started < 2.5
        for reader, writer in connections[1:]:
            await asyncio.wait_for(reader.read(), 5)  # closed by the proxy
            writer.close()
    assert raw.requests == []


async def test_stop_with_a_stuck_backend_returns_within_the_grace_period():
    hooks = RecordingHooks()
    async with RawBackend(never_answer) as raw:
        proxy = await ProxyServer(raw.backend(), keys={AK: SK}, authorizer=AllowAll(),
                                  shutdown_timeout=3, hooks=hooks).start()
        reader, writer = await connect(proxy)
        writer.write(signed_head(proxy, "GET", "/bkt/obj"))
        await writer.drain()
        await asyncio.wait_for(raw.arrived.wait(), 10)
        started = time.monotonic()
        await asyncio.wait_for(proxy.stop(), 3 + 10)
        elapsed = time.monotonic() - started
        assert await asyncio.wait_for(reader.read(), 5) == b""  # dropped, not answered
        writer.close()
    # The grace period, then the stuck request is aborted (aiohttp alone would wait twice as long).
    assert 2.5 < elapsed < 3 + 2.5
    assert len(hooks.logged) == 1 and hooks.logged[0] is not None


def _listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.append(address)
    return found


async def test_two_proxies_get_two_ports_on_loopback():
    backend = Backend(endpoint="http://127.0.0.1:9", credentials=FAKE_CREDENTIALS)
    async with ProxyServer(backend) as first, ProxyServer(backend) as second:
        assert first.port and second.port and first.port != second.port
        for proxy in (first, second):
            assert proxy.endpoint_url == f"http://127.0.0.1:{proxy.port}"
            assert _listening_addresses(proxy.port) == ["0100007F"]  # 127.0.0.1 only, as the kernel sees it
    with pytest.raises(RuntimeError):
        first.endpoint_url


# == pass-through details ========================================================================


async def test_gzip_bodies_pass_unchanged_both_ways(weed_bucket):
    compressed = gzip.compress(b"squeeze me " * 10_000)
    async with running_proxy(backend_for(weed_bucket)) as proxy:
        status, _, _ = await call(proxy, "PUT", f"/{BUCKET}/zipped", body=compressed,
                                  headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})
        assert status == 200
        status, headers, body = await call(proxy, "GET", f"/{BUCKET}/zipped",
                                           headers={"Accept-Encoding": "gzip"})
    assert status == 200 and body == compressed and headers["Content-Encoding"] == "gzip"
    stored = await asyncio.to_thread(
        lambda: boto3_direct(weed_bucket).get_object(Bucket=BUCKET, Key="zipped")["Body"].read())
    assert stored == compressed


async def test_head_204_and_304_pass_through(weed_bucket):
    async with running_proxy(backend_for(weed_bucket)) as proxy:
        client = proxy_client(proxy)
        put = await asyncio.to_thread(client.put_object, Bucket=BUCKET, Key="small", Body=b"12345")
        reader, writer = await connect(proxy)
        try:
            writer.write(signed_head(proxy, "HEAD", f"/{BUCKET}/small"))
            await writer.drain()
            status, headers = await read_head(reader)
            assert status == 200 and headers["content-length"] == "5"
            writer.write(signed_head(proxy, "GET", f"/{BUCKET}/small", extra={"If-None-Match": put["ETag"]}))
            await writer.drain()
            status, headers = await read_head(reader)  # parsed right after the HEAD: no body came between
            assert status == 304 and "transfer-encoding" not in headers
            writer.write(signed_head(proxy, "DELETE", f"/{BUCKET}/small"))
            await writer.drain()
            status, headers = await read_head(reader)
            assert status == 204
            writer.write(signed_head(proxy, "GET", f"/{BUCKET}/missing-after-204"))
            await writer.drain()
            status, headers = await read_head(reader)  # the connection is still in sync
            assert status == 404 and error_fields(await read_sized_body(reader, headers))["Code"] == "NoSuchKey"
        finally:
            writer.close()


# == 7. memory ===================================================================================

_PROXY_SCRIPT = r"""
import asyncio, os, sys
from inproxy import AllowAll, Backend, ProxyServer

async def main():
    backend = Backend(endpoint=os.environ["BACKEND_URL"], region=os.environ["BACKEND_REGION"],
                      credentials={"access_key": os.environ["BACKEND_KEY"],
                                   "secret_key": os.environ["BACKEND_SECRET"]})
    async with ProxyServer(backend, keys={os.environ["CLIENT_KEY"]: os.environ["CLIENT_SECRET"]},
                           authorizer=AllowAll()) as proxy:
        print(proxy.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes stdin

asyncio.run(main())
"""

GiB = 1024 * MiB


def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return fields


def _blocks(count: int) -> Iterator[bytes]:
    """Deterministic, incompressible-looking 1 MiB blocks, produced on the fly."""
    seed = hashlib.sha256(b"inproxy memory test").digest() * (MiB // 32)
    for i in range(count):
        yield i.to_bytes(8, "big") + seed[8:]


@pytest.fixture
def memory_proxy():
    """SeaweedFS and a proxy in a separate process (so its memory is measurable alone)."""
    weed = SeaweedFS().start()
    try:
        info = weed.info
        boto3_direct(info).create_bucket(Bucket=BUCKET)
        env = {**os.environ, "BACKEND_URL": info.endpoint_url, "BACKEND_REGION": info.region,
               "BACKEND_KEY": info.access_key, "BACKEND_SECRET": info.secret_key,
               "CLIENT_KEY": AK, "CLIENT_SECRET": SK}
        proc = subprocess.Popen([sys.executable, "-c", _PROXY_SCRIPT], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        try:
            port = int(proc.stdout.readline())
            yield proc.pid, f"http://127.0.0.1:{port}"
        finally:
            proc.stdin.close()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        # After a large GET from an aiohttp client, weed 4.x ignores SIGTERM for its whole
        # 15 s stop timeout; this throw-away instance may be killed sooner.
        weed.stop(timeout=3)


async def _stream_up(endpoint: str, key: str, blocks: int, digest: str) -> int:
    async def body():
        for block in _blocks(blocks):
            yield block

    url = f"{endpoint}/{BUCKET}/{key}"
    headers = signed_headers("PUT", url, payload_hash=digest)
    headers["Content-Length"] = str(blocks * MiB)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.put(URL(url, encoded=True), headers=headers, data=body()) as response:
            return response.status


async def _stream_down(endpoint: str, key: str) -> tuple[int, str, int]:
    url = f"{endpoint}/{BUCKET}/{key}"
    digest, size = hashlib.sha256(), 0
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        async with session.get(URL(url, encoded=True), headers=signed_headers("GET", url)) as response:
            async for chunk in response.content.iter_chunked(MiB):
                digest.update(chunk)
                size += len(chunk)
            return response.status, digest.hexdigest(), size


async def test_memory_stays_flat_while_streaming_1_gib_each_way(memory_proxy):
    pid, endpoint = memory_proxy
    blocks = GiB // MiB
    expected = hashlib.sha256()
    for block in _blocks(blocks):
        expected.update(block)
    digest = expected.hexdigest()

    # Warm up (imports, first connections), then measure from here.
    assert await _stream_up(endpoint, "warm-up", 4, _digest_of(4)) == 200
    assert (await _stream_down(endpoint, "warm-up"))[0] == 200
    idle = _memory_kib(pid)["VmRSS"]
    _reset_peak(pid)

    started = time.monotonic()
    assert await _stream_up(endpoint, "one-gib", blocks, digest) == 200
    uploaded = time.monotonic()
    status, down_digest, size = await _stream_down(endpoint, "one-gib")
    downloaded = time.monotonic()
    assert (status, size, down_digest) == (200, GiB, digest)

    peak = _memory_kib(pid)["VmHWM"]
    delta_mib = (peak - idle) / 1024
    print(f"\nproxy RSS idle {idle / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, delta {delta_mib:.1f} MiB; "
          f"up {uploaded - started:.1f} s, down {downloaded - uploaded:.1f} s")
    assert delta_mib < 40


def _digest_of(blocks: int) -> str:
    digest = hashlib.sha256()
    for block in _blocks(blocks):
        digest.update(block)
    return digest.hexdigest()


def _reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux clear_refs "5"), so the peak is this test's."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass  # the peak then includes start-up, which only makes the check stricter
