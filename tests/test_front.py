"""The raw client front (``inproxy.front``) over real sockets.

Clients are raw asyncio streams speaking HTTP/1.1 (or 1.0) bytes, so that framing,
keep-alive, pipelining and closing are seen exactly as they are on the wire.  The proxy
is a real :class:`~inproxy.ProxyServer`; behind it is either SeaweedFS (the session
fixture, which verifies the proxy's signatures) or a small aiohttp ``web.Server`` started
here (``AppBackend``) that answers with the framing a test needs and records what reached
it.  Every read has a timeout: a hang fails fast.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
import xml.etree.ElementTree as ET
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator

import pytest
from aiohttp import web

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extras
    uvloop = None

from inproxy import AllowAll, Backend, ProxyHooks, ProxyServer

from util import backend_for, new_bucket, s3_client, signed_headers

AK, SK = "FRONTCLIENT", "front-client-secret"
UNSIGNED = "UNSIGNED-PAYLOAD"
KiB, MiB = 1024, 1024 * 1024
FAKE_CREDENTIALS = {"access_key": "backend-key", "secret_key": "backend-secret"}
T = 5.0  # seconds any single read may take before the test fails
SLOW = 1.5  # seconds AppBackend takes to answer a "slow" key


# -- requests: signed by botocore, written as raw bytes ------------------------------------------


def request_bytes(port: int, method: str, target: str, *, version: str = "1.1", payload_hash: str = UNSIGNED,
                  secret: str = SK, extra: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    """A request signed with SigV4 for the proxy at ``port``; ``extra`` headers are sent unsigned."""
    signed = signed_headers(method, f"http://127.0.0.1:{port}{target}", payload_hash=payload_hash,
                            key=AK, secret=secret)
    headers = {"Host": f"127.0.0.1:{port}", **signed, **(extra or {})}
    lines = [f"{method} {target} HTTP/{version}", *(f"{n}: {v}" for n, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- responses: read strictly, by the framing they announce ---------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]  # lower-case names, in order
    body: bytes = b""
    framing: str = ""  # "length", "chunked", "close" or "none"

    def get(self, name: str, default: str | None = None) -> str | None:
        values = [v for n, v in self.headers if n == name]
        assert len(values) <= 1, f"{name} sent {len(values)} times: {self.headers}"
        return values[0] if values else default

    @property
    def closes(self) -> bool:
        return (self.get("connection") or "").lower() == "close"

    def error(self) -> dict[str, str]:
        root = ET.fromstring(self.body)
        assert root.tag == "Error", self.body
        return {child.tag: child.text or "" for child in root}


async def read_response(reader: asyncio.StreamReader, method: str = "GET", timeout: float = T) -> Response:
    """One response, its body read by its framing; fails on anything that is not HTTP."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    assert version in ("HTTP/1.1", "HTTP/1.0"), status_line
    headers = []
    for line in lines:
        name, colon, value = line.partition(":")
        assert colon and name and name == name.strip(), f"not a header line: {line!r}"
        headers.append((name.lower(), value.strip()))
    response = Response(int(status), headers)
    if method == "HEAD" or response.status < 200 or response.status in (204, 304):
        response.framing = "none"
    elif response.get("transfer-encoding") is not None:
        assert response.get("transfer-encoding") == "chunked" and response.get("content-length") is None
        response.framing = "chunked"
        response.body = await read_chunked(reader, timeout)
    elif response.get("content-length") is not None:
        response.framing = "length"
        response.body = await asyncio.wait_for(reader.readexactly(int(response.get("content-length"))), timeout)
    else:
        response.framing = "close"
        response.body = await asyncio.wait_for(reader.read(), timeout)
    return response


async def read_chunked(reader: asyncio.StreamReader, timeout: float = T) -> bytes:
    body = bytearray()
    while True:
        size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
        size = int(size_line[:-2], 16)  # no extensions: the proxy sends none
        if size == 0:
            assert await asyncio.wait_for(reader.readexactly(2), timeout) == b"\r\n"  # no trailers
            return bytes(body)
        body += await asyncio.wait_for(reader.readexactly(size), timeout)
        assert await asyncio.wait_for(reader.readexactly(2), timeout) == b"\r\n"


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = T) -> bool:
    """Whether the proxy closed the connection (EOF, or a reset) with nothing more sent."""
    try:
        rest = await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return True
    assert rest == b"", f"unexpected bytes after the answer: {rest[:200]!r}"
    return True


@asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await asyncio.wait_for(writer.drain(), T)


def assert_refused(response: Response, code: str, status: int) -> None:
    """An S3 XML error of this code whose RequestId is the x-amz-request-id header."""
    assert response.status == status, response
    fields = response.error()
    assert fields["Code"] == code, fields
    assert fields["RequestId"] and response.get("x-amz-request-id") == fields["RequestId"]


def tracebacks(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# -- a backend that answers with the framing a test needs -----------------------------------------


def chunked_pieces() -> list[bytes]:
    return [bytes([65 + i]) * (40 * KiB + i) for i in range(5)]  # 5 distinguishable pieces, ~200 KiB


HOP_BY_HOP_ANSWER = {"Keep-Alive": "timeout=5", "Upgrade": "h2c", "Trailer": "X-Checksum",
                     "Proxy-Authenticate": "Basic", "TE": "trailers"}


@dataclass
class AppBackend:
    """aiohttp ``web.Server`` on loopback.  By the last path segment: ``chunked`` answers
    without a Content-Length (chunked), ``slow*`` answers after SLOW seconds, anything else
    answers ``body of <path>`` with a Content-Length."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        self.requests.append((request.method, request.path))
        name = request.path.rsplit("/", 1)[-1]
        if name == "chunked":
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for piece in chunked_pieces():
                await response.write(piece)
                await asyncio.sleep(0.02)
            await response.write_eof()
            return response
        if name == "hop-by-hop":  # what a backend may say about its own connection only
            return web.Response(body=b"hop", headers={**HOP_BY_HOP_ANSWER, "X-Amz-Meta-Kept": "yes"})
        if name.startswith("slow"):
            self.slow_started.set()
            await asyncio.sleep(SLOW)
        return web.Response(body=f"body of {request.path}".encode(), content_type="text/plain")

    async def __aenter__(self) -> "AppBackend":
        self._runner = web.ServerRunner(web.Server(self.handle))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._runner.cleanup()

    def backend(self) -> Backend:
        return Backend(endpoint=f"http://127.0.0.1:{self.port}", credentials=FAKE_CREDENTIALS)


@asynccontextmanager
async def app_proxy(routes=None, **kwargs) -> AsyncIterator[tuple[ProxyServer, AppBackend]]:
    """A proxy in front of a fresh AppBackend (``routes(backend)`` gives the backends argument)."""
    kwargs.setdefault("keys", {AK: SK})
    kwargs.setdefault("authorizer", AllowAll())
    async with AppBackend() as app:
        backends = routes(app.backend()) if routes else app.backend()
        async with ProxyServer(backends, **kwargs) as proxy:
            yield proxy, app


# == 1. keep-alive ==================================================================================


async def test_several_requests_on_one_keepalive_connection():
    async with app_proxy() as (proxy, app), connection(proxy.port) as (reader, writer):
        for i in range(4):
            await send(writer, request_bytes(proxy.port, "GET", f"/bkt/seq-{i}"))
            response = await read_response(reader)
            assert (response.status, response.body) == (200, f"body of /bkt/seq-{i}".encode())
            assert response.framing == "length" and not response.closes
        assert len(proxy._front.connections) == 1
    assert app.requests == [("GET", f"/bkt/seq-{i}") for i in range(4)]


async def test_http10_without_keepalive_is_answered_then_closed():
    async with app_proxy() as (proxy, app), connection(proxy.port) as (reader, writer):
        await send(writer, request_bytes(proxy.port, "GET", "/bkt/old", version="1.0"))
        response = await read_response(reader)
        assert (response.status, response.body) == (200, b"body of /bkt/old")
        assert response.closes
        assert await closed_by_peer(reader)


async def test_http10_with_keepalive_stays_open():
    async with app_proxy() as (proxy, app), connection(proxy.port) as (reader, writer):
        for i in range(2):
            await send(writer, request_bytes(proxy.port, "GET", f"/bkt/old-ka-{i}", version="1.0",
                                             extra={"Connection": "keep-alive"}))
            response = await read_response(reader)
            assert (response.status, response.body) == (200, f"body of /bkt/old-ka-{i}".encode())
            assert response.framing == "length"  # a 1.0 client cannot read chunked
            assert (response.get("connection") or "").lower() == "keep-alive"
    assert len(app.requests) == 2


# == 2. pipelining ==================================================================================


async def test_pipelined_requests_are_answered_in_order():
    async with app_proxy() as (proxy, app), connection(proxy.port) as (reader, writer):
        # The first is the slowest to answer: answers in order of completion would come out reversed.
        targets = ["/bkt/slow-first", "/bkt/second", "/bkt/third"]
        await send(writer, b"".join(request_bytes(proxy.port, "GET", t) for t in targets))
        bodies = [(await read_response(reader, timeout=SLOW + T)).body for _ in targets]
        assert bodies == [f"body of {t}".encode() for t in targets]
        # Still in sync afterwards.
        await send(writer, request_bytes(proxy.port, "GET", "/bkt/fourth"))
        assert (await read_response(reader)).body == b"body of /bkt/fourth"


async def test_pipelined_upload_and_many_gets_in_one_send():
    """A 1 MiB body (more than the read limit: reading pauses and resumes mid-body) followed
    by more pipelined requests than the proxy queues before it stops reading."""
    body = b"p" * MiB
    async with app_proxy() as (proxy, app), connection(proxy.port) as (reader, writer):
        put = request_bytes(proxy.port, "PUT", "/bkt/upload", extra={"Content-Length": str(len(body))}, body=body)
        gets = [request_bytes(proxy.port, "GET", f"/bkt/get-{i}") for i in range(20)]
        await send(writer, put + b"".join(gets))
        response = await read_response(reader)
        assert (response.status, response.body) == (200, b"body of /bkt/upload")
        assert [(await read_response(reader)).body for _ in gets] == [b"body of /bkt/get-%d" % i for i in range(20)]
    assert app.requests == [("PUT", "/bkt/upload"), *(("GET", f"/bkt/get-{i}") for i in range(20))]


@pytest.mark.parametrize("behind", ["malformed-request", "requests-after-connection-close"])
async def test_answer_in_flight_survives_what_is_pipelined_behind_it(behind):
    """Bytes behind the request being answered are never answered (a malformed request, or
    requests after ``Connection: close``) and keep coming: the proxy must close by lingering,
    or its reset destroys the answer before a client that reads late has read it."""
    async with app_proxy() as (proxy, app), connection(proxy.port) as (reader, writer):
        first = request_bytes(proxy.port, "GET", "/bkt/slow-first",
                              extra={"Connection": "close"} if behind != "malformed-request" else None)
        await send(writer, first)
        await asyncio.wait_for(app.slow_started.wait(), T)
        if behind == "malformed-request":
            await send(writer, b"NOT HTTP AT ALL\r\n\r\n")
        else:
            await send(writer, b"".join(request_bytes(proxy.port, "GET", f"/bkt/behind-{i}") for i in range(10)))
        sender = asyncio.create_task(_keep_sending(writer, 4 * MiB))  # and more keeps coming
        try:
            await asyncio.sleep(SLOW + 0.2)  # the client reads late: the answer has been sent by now
            response = await read_response(reader)
            assert (response.status, response.body) == (200, b"body of /bkt/slow-first")
            assert response.closes and await closed_by_peer(reader)
        finally:
            sender.cancel()
    assert app.requests == [("GET", "/bkt/slow-first")]


# == 3. a backend answer without Content-Length ======================================================


async def test_chunked_backend_answer_reaches_http11_client_chunked_and_complete():
    async with app_proxy() as (proxy, app), connection(proxy.port) as (reader, writer):
        await send(writer, request_bytes(proxy.port, "GET", "/bkt/chunked"))
        response = await read_response(reader)
        assert response.status == 200 and response.framing == "chunked"
        assert response.body == b"".join(chunked_pieces())
        assert not response.closes
        await send(writer, request_bytes(proxy.port, "GET", "/bkt/after-chunked"))  # the 0-chunk ended it
        assert (await read_response(reader)).body == b"body of /bkt/after-chunked"


async def test_chunked_backend_answer_reaches_http10_client_close_delimited_and_complete():
    async with app_proxy() as (proxy, app), connection(proxy.port) as (reader, writer):
        await send(writer, request_bytes(proxy.port, "GET", "/bkt/chunked", version="1.0",
                                         extra={"Connection": "keep-alive"}))
        response = await read_response(reader)
        assert response.status == 200 and response.framing == "close" and response.closes
        assert response.body == b"".join(chunked_pieces())


class _ResponseFilter(ProxyHooks):
    async def response_filter(self, ctx, status, headers):
        headers.append(("X-Filtered", "1"))


@pytest.mark.parametrize("hooks", [None, _ResponseFilter()], ids=["no-hook", "response-filter"])
async def test_backend_hop_by_hop_headers_never_reach_the_client(hooks):
    async with app_proxy(hooks=hooks) as (proxy, app), connection(proxy.port) as (reader, writer):
        await send(writer, request_bytes(proxy.port, "GET", "/bkt/hop-by-hop"))
        response = await read_response(reader)
        assert response.status == 200 and response.body == b"hop" and not response.closes
        names = {name for name, _ in response.headers}
        assert not names & {n.lower() for n in HOP_BY_HOP_ANSWER}, response.headers
        assert response.get("x-amz-meta-kept") == "yes"
        assert response.get("x-filtered") == ("1" if hooks else None)
        await send(writer, request_bytes(proxy.port, "GET", "/bkt/after"))  # the connection goes on
        assert (await read_response(reader)).body == b"body of /bkt/after"


# == 4. a chunked request body from the client =====================================================


async def test_chunked_request_body_is_411_and_the_connection_never_desyncs():
    async with app_proxy() as (proxy, app), connection(proxy.port) as (reader, writer):
        body = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (b"hello ", b"GET /bkt/smuggled HTTP/1.1\r\n"))
        put = request_bytes(proxy.port, "PUT", "/bkt/obj", extra={"Transfer-Encoding": "chunked"},
                            body=body + b"0\r\n\r\n")
        await send(writer, put + request_bytes(proxy.port, "GET", "/bkt/next"))
        response = await read_response(reader)
        assert_refused(response, "MissingContentLength", 411)
        # Then either the next request is answered properly, or the connection closes: never garbage.
        try:
            following = await read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            assert response.closes
        else:
            assert not response.closes
            assert (following.status, following.body) == (200, b"body of /bkt/next")
    assert ("PUT", "/bkt/obj") not in app.requests and ("GET", "/bkt/smuggled") not in app.requests


# == 5. requests the parser refuses =================================================================


def _many_headers(port: int) -> bytes:
    extra = {f"X-Filler-{i}": "x" for i in range(130)}
    return request_bytes(port, "GET", "/bkt/obj", extra=extra)


REFUSED = {
    "malformed-request-line": (lambda port: b"GET /bkt/obj with spaces HTTP/1.1\r\nHost: x\r\n\r\n",
                               "InvalidRequest"),
    "tls-hello-on-plain-port": (lambda port: bytes.fromhex("16030100a5010000a10303") + os.urandom(64),
                                "InvalidRequest"),
    "long-header-line": (lambda port: request_bytes(port, "GET", "/bkt/obj", extra={"X-Long": "a" * (17 * KiB)}),
                         "RequestHeaderSectionTooLarge"),
    "too-many-headers": (_many_headers, "RequestHeaderSectionTooLarge"),
    "content-length-and-chunked": (
        lambda port: request_bytes(port, "PUT", "/bkt/obj", extra={"Content-Length": "5",
                                                                   "Transfer-Encoding": "chunked"},
                                   body=b"0\r\n\r\n"),
        "InvalidRequest"),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_parser_refusal_is_an_s3_error_then_close(case, caplog):
    make, code = REFUSED[case]
    async with app_proxy() as (proxy, app), connection(proxy.port) as (reader, writer):
        await send(writer, make(proxy.port))
        response = await read_response(reader)
        assert_refused(response, code, 400)
        assert response.closes and response.get("content-type") == "application/xml"
        assert await closed_by_peer(reader)
        assert response.get("x-amz-request-id") in caplog.text
    assert app.requests == []


# == 6. an error answered before the request body was read ============================================


async def _keep_sending(writer: asyncio.StreamWriter, total: int) -> int:
    """Send ``total`` body bytes (or until the proxy stops taking them); how many were sent."""
    sent, block = 0, b"b" * (64 * KiB)
    try:
        while sent < total:
            writer.write(block)
            await writer.drain()
            sent += len(block)
    except (ConnectionError, OSError):
        pass
    return sent


async def _deny_slowly(access) -> bool:
    """Allows everything but the key ``denied-slowly``, which it denies after a while."""
    if access.key == "denied-slowly":
        await asyncio.sleep(0.3)  # meanwhile the body fills the read buffer: reading pauses
        return False
    return True


ANSWERED_EARLY = {  # case: (bucket, key, client secret, code, status)
    "bad-signature": ("bkt", "big", "wrong-secret", "SignatureDoesNotMatch", 403),
    "unknown-bucket": ("nosuchbucket", "big", SK, "NoSuchBucket", 404),
    "denied-while-reading-is-paused": ("bkt", "denied-slowly", SK, "AccessDenied", 403),
}


@pytest.mark.parametrize("case", list(ANSWERED_EARLY))
async def test_error_before_the_body_is_complete_then_lingering_close(case):
    size = 16 * MiB
    bucket, key, secret, code, status = ANSWERED_EARLY[case]
    async with app_proxy(routes=lambda backend: {"bkt": backend}, authorizer=_deny_slowly) as (proxy, app), \
            connection(proxy.port) as (reader, writer):
        await send(writer, request_bytes(proxy.port, "PUT", f"/{bucket}/{key}", secret=secret,
                                         extra={"Content-Length": str(size)}))
        sender = asyncio.create_task(_keep_sending(writer, size))  # the client keeps sending meanwhile
        try:
            response = await read_response(reader)  # complete, not reset by unread bytes
            assert_refused(response, code, status)
            assert response.closes
            # The proxy half-closes at once (EOF here) and keeps draining what still comes.
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(), T) == b""
            assert time.monotonic() - started < 1.0
        finally:
            sent = await asyncio.wait_for(sender, 10)
        # All of it was taken (more than socket buffers hold): the proxy drained after its answer.
        assert sent == size
    assert app.requests == []


@pytest.mark.parametrize("case", ["bad-signature", "unknown-bucket"])
async def test_expect_continue_refused_before_authorization_never_gets_100(case):
    async with app_proxy(routes=lambda backend: {"bkt": backend}) as (proxy, app), \
            connection(proxy.port) as (reader, writer):
        bucket, secret = ("bkt", "wrong-secret") if case == "bad-signature" else ("nosuchbucket", SK)
        await send(writer, request_bytes(proxy.port, "PUT", f"/{bucket}/obj", secret=secret,
                                         extra={"Content-Length": str(MiB), "Expect": "100-continue"}))
        response = await read_response(reader)  # the first thing on the wire is the final answer
        assert response.status != 100
        assert_refused(response, "SignatureDoesNotMatch" if case == "bad-signature" else "NoSuchBucket",
                       403 if case == "bad-signature" else 404)
        assert response.closes
        assert await asyncio.wait_for(reader.read(), 1.0) == b""  # (half-)closed right after the answer
    assert app.requests == []


async def test_expect_continue_from_an_http10_client_is_ignored():
    """RFC 9110 10.1.1: no interim answer to HTTP/1.0 (it would take the 100 for the answer)."""
    async with app_proxy() as (proxy, app), connection(proxy.port) as (reader, writer):
        await send(writer, request_bytes(proxy.port, "PUT", "/bkt/obj", version="1.0",
                                         extra={"Content-Length": "5", "Expect": "100-continue",
                                                "Connection": "keep-alive"}))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.readexactly(1), 0.5)  # nothing, until the body comes
        await send(writer, b"hello")
        response = await read_response(reader)
        assert (response.status, response.body) == (200, b"body of /bkt/obj")
    assert app.requests == [("PUT", "/bkt/obj")]


async def test_expect_continue_allowed_gets_100_then_answer():
    body = b"c" * (100 * KiB)
    async with app_proxy() as (proxy, app), connection(proxy.port) as (reader, writer):
        await send(writer, request_bytes(proxy.port, "PUT", "/bkt/obj", payload_hash=hashlib.sha256(body).hexdigest(),
                                         extra={"Content-Length": str(len(body)), "Expect": "100-continue"}))
        assert (await read_response(reader)).status == 100
        await send(writer, body)
        response = await read_response(reader)
        assert response.status == 200 and not response.closes
        await send(writer, request_bytes(proxy.port, "GET", "/bkt/after-put"))
        assert (await read_response(reader)).body == b"body of /bkt/after-put"
    assert app.requests == [("PUT", "/bkt/obj"), ("GET", "/bkt/after-put")]


# == 7. keep-alive timeout ===========================================================================


async def test_idle_connection_is_closed_after_the_keepalive_timeout():
    async with app_proxy(keepalive_timeout=0.5) as (proxy, app):
        async with connection(proxy.port) as (reader, writer):
            await send(writer, request_bytes(proxy.port, "GET", "/bkt/obj"))
            assert (await read_response(reader)).status == 200
            answered = time.monotonic()
            assert await closed_by_peer(reader, timeout=4)
            idle = time.monotonic() - answered
        assert 0.4 < idle < 3.0
        await asyncio.sleep(0.05)
        assert not proxy._front.connections


@pytest.mark.parametrize("client", ["trickling-a-head", "silent"])
async def test_unfinished_request_head_does_not_outlive_the_keepalive_timeout(client):
    async with app_proxy(keepalive_timeout=0.5) as (proxy, app):
        async with connection(proxy.port) as (reader, writer):
            started = time.monotonic()
            if client == "trickling-a-head":
                await send(writer, b"GET /bkt/obj HTTP/1.1\r\n")

            async def trickle():
                for i in range(100):  # ~10 s of one header line every 0.1 s (or of silence)
                    if client == "trickling-a-head":
                        writer.write(b"X-Slow-%d: y\r\n" % i)
                    await asyncio.sleep(0.1)

            trickler = asyncio.create_task(trickle())
            try:
                assert await closed_by_peer(reader, timeout=4)
                assert not trickler.done()  # closed while the client was still at it
            finally:
                trickler.cancel()
            assert time.monotonic() - started < 3.0
    assert app.requests == []


# == 7b. a client that half-closes ===================================================================


async def _half_closed_pipeline() -> None:
    """Two pipelined GETs (the first slow), then the client's FIN: both are answered in
    order, the last says Connection: close, then the proxy closes."""
    async with app_proxy() as (proxy, app), connection(proxy.port) as (reader, writer):
        await send(writer, request_bytes(proxy.port, "GET", "/bkt/slow-hc")
                   + request_bytes(proxy.port, "GET", "/bkt/after-hc"))
        writer.write_eof()
        first, second = await read_response(reader), await read_response(reader)
        assert (first.status, first.body) == (200, b"body of /bkt/slow-hc")
        assert (second.status, second.body) == (200, b"body of /bkt/after-hc")
        assert second.closes
        assert await closed_by_peer(reader)
    assert app.requests == [("GET", "/bkt/slow-hc"), ("GET", "/bkt/after-hc")]


async def test_half_closed_client_gets_what_it_sent_answered():
    await _half_closed_pipeline()


@pytest.mark.skipif(uvloop is None, reason="no uvloop")
def test_half_closed_client_gets_what_it_sent_answered_on_uvloop():
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(_half_closed_pipeline(), 30))
    finally:
        loop.close()


async def test_half_closed_after_a_whole_upload_is_answered():
    async with app_proxy() as (proxy, app), connection(proxy.port) as (reader, writer):
        await send(writer, request_bytes(proxy.port, "PUT", "/bkt/hc-upload", body=b"x" * 5000,
                                         extra={"Content-Length": "5000"}))
        writer.write_eof()
        response = await read_response(reader)
        assert response.status == 200 and response.closes
        assert await closed_by_peer(reader)
    assert app.requests == [("PUT", "/bkt/hc-upload")]


async def test_half_closed_mid_body_ends_the_connection_and_nothing_is_forwarded_whole():
    async with app_proxy() as (proxy, app), connection(proxy.port) as (reader, writer):
        await send(writer, request_bytes(proxy.port, "PUT", "/bkt/hc-cut", body=b"x" * 100,
                                         extra={"Content-Length": "5000"}))
        writer.write_eof()
        try:
            rest = await asyncio.wait_for(reader.read(), T)
        except ConnectionResetError:
            rest = b""
        assert not rest.startswith(b"HTTP/1.1 200")
    await asyncio.sleep(0.2)
    assert ("PUT", "/bkt/hc-cut") not in app.requests


# == 8. HEAD, and 9. a client leaving mid-download: SeaweedFS behind the proxy =========================

BIG = 20 * MiB


@pytest.fixture(scope="module")
def weed_objects(seaweed):
    bucket = new_bucket(seaweed, "front")
    client = s3_client(seaweed.endpoint_url, seaweed.access_key, seaweed.secret_key, region=seaweed.region)
    client.put_object(Bucket=bucket, Key="small", Body=b"0123456789" * 10)
    client.put_object(Bucket=bucket, Key="big", Body=os.urandom(BIG))
    return seaweed, bucket


class _Logged(ProxyHooks):
    def __init__(self) -> None:
        self.errors: list[BaseException | None] = []
        self.event = asyncio.Event()

    async def logging(self, ctx, error):
        self.errors.append(error)
        self.event.set()


async def test_head_reports_the_length_sends_no_body_and_the_connection_goes_on(weed_objects):
    info, bucket = weed_objects
    async with ProxyServer(backend_for(info), keys={AK: SK}, authorizer=AllowAll()) as proxy, \
            connection(proxy.port) as (reader, writer):
        port = proxy.port
        await send(writer, request_bytes(port, "HEAD", f"/{bucket}/small"))
        head = await read_response(reader, method="HEAD")
        assert head.status == 200 and head.get("content-length") == "100" and head.get("etag")
        assert not head.closes
        await send(writer, request_bytes(port, "HEAD", f"/{bucket}/missing"))
        missing = await read_response(reader, method="HEAD")
        assert missing.status == 404
        # Any body byte after either HEAD answer would be read here as the start of the next answer.
        await send(writer, request_bytes(port, "GET", f"/{bucket}/small"))
        response = await read_response(reader)
        assert (response.status, response.body) == (200, b"0123456789" * 10)


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_client_leaving_mid_download_leaves_the_proxy_healthy(weed_objects, caplog, how):
    caplog.set_level(logging.INFO, logger="inproxy")
    info, bucket = weed_objects
    hooks = _Logged()
    async with ProxyServer(backend_for(info), keys={AK: SK}, authorizer=AllowAll(), hooks=hooks) as proxy:
        async with connection(proxy.port) as (reader, writer):
            await send(writer, request_bytes(proxy.port, "GET", f"/{bucket}/big"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
            assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: %d" % BIG in head
            await asyncio.wait_for(reader.readexactly(MiB), T)
            if how == "reset":
                writer.transport.abort()
            else:
                writer.close()
        await asyncio.wait_for(hooks.event.wait(), 10)
        assert hooks.errors[0] is not None  # the cut download is reported as such
        async with connection(proxy.port) as (reader, writer):
            await send(writer, request_bytes(proxy.port, "GET", f"/{bucket}/small"))
            response = await read_response(reader)
            assert (response.status, response.body) == (200, b"0123456789" * 10)
        for _ in range(50):
            if not proxy._front.connections:
                break
            await asyncio.sleep(0.05)
        assert not proxy._front.connections
    assert tracebacks(caplog) == []


async def test_client_gone_before_a_whole_answer_logs_no_traceback(caplog):
    """The answer is a whole (error) response written after the client left."""
    caplog.set_level(logging.INFO, logger="inproxy")
    decided = asyncio.Event()

    async def slow_deny(access):
        await asyncio.sleep(0.3)
        decided.set()
        return False

    hooks = _Logged()
    async with app_proxy(authorizer=slow_deny, hooks=hooks) as (proxy, app):
        for close in ("close", "abort"):
            hooks.event.clear()
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            await send(writer, request_bytes(proxy.port, "GET", "/bkt/obj"))
            await asyncio.sleep(0.05)
            writer.close() if close == "close" else writer.transport.abort()
            await asyncio.wait_for(hooks.event.wait(), T)
            await asyncio.sleep(0.1)  # the answer is written (or not) after logging
        async with connection(proxy.port) as (reader, writer):  # still serving
            await send(writer, request_bytes(proxy.port, "GET", "/bkt/obj"))
            assert_refused(await read_response(reader, timeout=T), "AccessDenied", 403)
    assert tracebacks(caplog) == []


# == 10. stop() ======================================================================================


async def test_stop_closes_idle_connections_and_lets_the_inflight_request_finish():
    grace = 5.0
    async with AppBackend() as app:
        proxy = await ProxyServer(app.backend(), keys={AK: SK}, authorizer=AllowAll(),
                                  shutdown_timeout=grace).start()
        port = proxy.port
        async with connection(port) as (idle_reader, idle_writer), connection(port) as (busy_reader, busy_writer):
            await send(idle_writer, request_bytes(port, "GET", "/bkt/fast"))
            assert (await read_response(idle_reader)).status == 200  # now idle in keep-alive
            await send(busy_writer, request_bytes(port, "GET", "/bkt/slow-in-flight"))
            await asyncio.wait_for(app.slow_started.wait(), T)
            started = time.monotonic()
            stopping = asyncio.create_task(proxy.stop())

            assert await closed_by_peer(idle_reader, timeout=1.0)  # at once, not after the slow answer
            assert not stopping.done()
            with pytest.raises(OSError):  # no longer accepting
                await asyncio.open_connection("127.0.0.1", port)

            response = await read_response(busy_reader, timeout=SLOW + T)
            assert (response.status, response.body) == (200, b"body of /bkt/slow-in-flight")
            assert response.closes
            assert await closed_by_peer(busy_reader)
            await asyncio.wait_for(stopping, grace + 1)
            elapsed = time.monotonic() - started
    assert SLOW - 0.5 < elapsed < grace


async def test_stop_never_starts_a_request_received_but_not_started():
    """A request parsed just before stop() whose connection task has not picked it up yet is
    not waited for by stop(): it must not be started either (else the backend executes it and
    the connection is closed under its answer)."""
    async with AppBackend() as app:
        proxy = await ProxyServer(app.backend(), keys={AK: SK}, authorizer=AllowAll()).start()
        port = proxy.port
        async with connection(port) as (reader, writer):
            await send(writer, request_bytes(port, "GET", "/bkt/warm-up"))
            assert (await read_response(reader)).status == 200
            (conn,) = proxy._front.connections
            writer.write(request_bytes(port, "GET", "/bkt/raced"))
            for _ in range(1000):  # until parsed and queued, before the connection's task runs
                if conn._queue and not conn.busy:
                    break
                await asyncio.sleep(0)
            assert conn._queue and not conn.busy, "the window was not caught"
            await proxy.stop()  # awaited directly (no task): its first step runs before that task's
            assert await asyncio.wait_for(reader.read(), T) == b""  # unanswered: the client may retry
    assert app.requests == [("GET", "/bkt/warm-up")]


# == 11. header injection through a hook ==============================================================


class _Injecting(ProxyHooks):
    async def response_filter(self, ctx, status, headers):
        if ctx.s3.key == "inject":
            headers.append(("x-note", "ok\r\nInjected: yes"))
        elif ctx.s3.key == "inject-lf":
            headers.append(("x-note", "ok\nInjected: yes"))
        elif ctx.s3.key == "inject-name":
            headers.append(("x-note\r\nInjected", "yes"))


@pytest.mark.parametrize("key", ["inject", "inject-lf", "inject-name"])
async def test_crlf_in_a_hook_header_never_splits_the_answer(key):
    async with app_proxy(hooks=_Injecting()) as (proxy, app):
        async with connection(proxy.port) as (reader, writer):
            await send(writer, request_bytes(proxy.port, "GET", f"/bkt/{key}"))
            # Nothing was sent when the head failed to build: a complete InternalError.
            response = await read_response(reader)
        assert_refused(response, "InternalError", 500)
        assert b"injected" not in response.body.lower() and response.get("injected") is None
        async with connection(proxy.port) as (reader, writer):  # the proxy still serves
            await send(writer, request_bytes(proxy.port, "GET", "/bkt/clean"))
            response = await read_response(reader)
            assert (response.status, response.body) == (200, b"body of /bkt/clean")
            assert response.get("x-note") is None


class _AnsweringWithInjection(ProxyHooks):
    async def request_filter(self, ctx):
        return web.Response(body=b"from the hook", headers={"x-note": "ok\r\nInjected: yes"})


async def test_crlf_in_a_hook_answer_is_a_500_not_a_split_header(caplog):
    """A whole answer from request_filter: nothing was sent when its head fails to build,
    so the client gets a complete InternalError (with its request id), never the header."""
    async with app_proxy(hooks=_AnsweringWithInjection()) as (proxy, app), \
            connection(proxy.port) as (reader, writer):
        await send(writer, request_bytes(proxy.port, "GET", "/bkt/obj"))
        response = await read_response(reader)
        assert_refused(response, "InternalError", 500)
        assert b"Injected" not in response.body and response.get("injected") is None
        assert response.closes and await closed_by_peer(reader)
        assert response.get("x-amz-request-id") in caplog.text
    assert app.requests == []


# == 12. clients that stall: a body never finished, an answer never read =============================


@pytest.mark.parametrize("spliced", [False, True])
async def test_client_stalling_mid_body_gets_request_timeout_and_nothing_is_stored(weed_objects, spliced):
    """Content-Length promised, part of the body sent, then silence: the proxy answers
    RequestTimeout and closes; the backend never stores the object.  A body streamed through
    Python is given up after client_timeout; a spliced one (>= 256 KiB, UNSIGNED-PAYLOAD)
    after the splice's own deadline, the backend's read_timeout."""
    info, bucket = weed_objects
    key = f"stalled-{spliced}"
    size = 1024 * 1024 if spliced else 100_000
    backend = backend_for(info, read_timeout=0.5 if spliced else 30)
    async with ProxyServer(backend, keys={AK: SK}, authorizer=AllowAll(),
                           client_timeout=0.5) as proxy, connection(proxy.port) as (reader, writer):
        await send(writer, request_bytes(proxy.port, "PUT", f"/{bucket}/{key}",
                                         extra={"Content-Length": str(size)}) + b"x" * 1000)
        started = time.monotonic()
        response = await read_response(reader, timeout=10)
        assert_refused(response, "RequestTimeout", 400)
        assert 0.4 < time.monotonic() - started < 5
        assert response.closes and await closed_by_peer(reader)
    direct = s3_client(info.endpoint_url, info.access_key, info.secret_key, region=info.region)
    listed = await asyncio.to_thread(direct.list_objects_v2, Bucket=bucket, Prefix=key)
    assert listed.get("KeyCount", 0) == 0


class _LoggedSeeingBodies(_Logged):
    async def response_body_filter(self, ctx, chunk):
        return chunk


async def test_client_not_reading_its_answer_is_dropped_after_client_timeout(weed_objects, caplog):
    """A client that asks for a large object and never reads it holds nothing for ever: once
    the proxy's socket buffer is full and nothing moves for client_timeout, the connection
    is closed (the answer has started: there is no other way to end it) and the proxy serves on."""
    caplog.set_level(logging.INFO, logger="inproxy")
    info, bucket = weed_objects
    hooks = _LoggedSeeingBodies()  # a body hook: the answer streams through the writer, not spliced
    async with ProxyServer(backend_for(info), keys={AK: SK}, authorizer=AllowAll(), hooks=hooks,
                           client_timeout=0.5) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=1024)
        writer.transport.pause_reading()  # and never resumed: 20 MiB cannot all sit in the kernel
        started = time.monotonic()
        await send(writer, request_bytes(proxy.port, "GET", f"/{bucket}/big"))
        await asyncio.wait_for(hooks.event.wait(), 10)
        assert time.monotonic() - started < 5
        assert isinstance(hooks.errors[0], ConnectionError)
        writer.transport.abort()
        async with connection(proxy.port) as (reader, writer):  # the proxy still serves
            await send(writer, request_bytes(proxy.port, "GET", f"/{bucket}/small"))
            assert (await read_response(reader)).status == 200
    assert "has not read its answer" in caplog.text


# == 9. ending an answer in one write (ResponseWriter.end) ===========================================


@asynccontextmanager
async def front_answering(answer) -> AsyncIterator[int]:
    """A bare FrontServer whose handler is ``answer(writer)``: the writer's framing on the wire."""
    from inproxy.front import FrontServer

    async def handler(request):
        answer(request.writer)
        return None

    server = FrontServer(handler)
    port = await server.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await server.stop(1.0, 1.0)


@pytest.mark.parametrize("length", [None, "10"], ids=["chunked", "content-length"])
async def test_end_sends_head_body_and_end_in_one_complete_answer(length):
    headers = [("Content-Length", length)] if length else []
    async with front_answering(lambda w: w.head(200, None, headers) or w.end(b"0123456789")) as port:
        async with connection(port) as (reader, writer):
            for _ in range(2):  # complete and framed: the connection carries the next request
                await send(writer, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
                response = await read_response(reader)
                assert response.body == b"0123456789" and not response.closes
                assert response.framing == ("length" if length else "chunked")


@pytest.mark.parametrize("body", [b"short", b"0123456789-too-long"])
async def test_end_never_sends_a_body_that_breaks_its_content_length(body, caplog):
    # Nothing at all goes out (the head is held until the body): the connection is cut.
    async with front_answering(lambda w: w.head(200, None, [("Content-Length", "10")]) or w.end(body)) as port:
        async with connection(port) as (reader, writer):
            await send(writer, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
            try:
                rest = await asyncio.wait_for(reader.read(), T)
            except ConnectionResetError:
                rest = b""
            assert rest == b""
