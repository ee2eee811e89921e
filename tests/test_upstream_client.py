"""inproxy.upstream_client: the lean keep-alive HTTP/1.1 client, against real local servers.

aiohttp servers where ordinary HTTP is enough; raw asyncio servers where the exact bytes on
the wire or misbehaviour matter (stale keep-alive, cut bodies, 1xx, silence).  All on
loopback.  Timing assertions are generous: the machine is shared.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import socket
import ssl
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from inproxy.backend import Backend
from inproxy.upstream import UpstreamPool
from inproxy.upstream_client import (
    ConnectionPool,
    RequestBodyError,
    RequestBodyLengthError,
    SpliceBody,
    UpstreamConnectError,
    UpstreamProtocolError,
)

KiB, MiB = 1024, 1024 * 1024


# -- raw servers ----------------------------------------------------------------------------------


class Conn:
    """One server-side connection of a RawServer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        self.reader, self.writer, self.index = reader, writer, index
        self.requests = 0

    async def read_request(self) -> tuple[bytes, dict[str, str], bytes] | None:
        """(head bytes, lower-cased headers, body) of the next request; None at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        headers = {}
        for line in head.decode("utf-8").split("\r\n")[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
                if size == 0:
                    break
            body = b"".join(parts)
        self.requests += 1
        return head, headers, body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Handler = Callable[[Conn, "RawServer"], Awaitable[None]]


class RawServer:
    """asyncio.start_server on loopback running ``handler(conn, server)`` per connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections: list[Conn] = []
        self.heads: list[bytes] = []
        self.open = 0
        self.max_open = 0
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> "RawServer":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        conn = Conn(reader, writer, len(self.connections))
        self.connections.append(conn)
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(conn, self)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # (a cancelled handler would make asyncio log the cancellation as an error)
        finally:
            self.open -= 1
            self._tasks.discard(task)
            writer.close()


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def keep_alive_ok(conn: Conn, server: RawServer) -> None:
    """Answers every request with its own request line as the body."""
    while (request := await conn.read_request()) is not None:
        head, _, body = request
        server.heads.append(head)
        await conn.send(ok(head.split(b"\r\n")[0] + b"|" + body))


def pool_for(server: RawServer | str, **kwargs) -> ConnectionPool:
    port = server.port if isinstance(server, RawServer) else int(server.rsplit(":", 1)[1])
    kwargs.setdefault("read_timeout", 10)
    return ConnectionPool(scheme="http", host="127.0.0.1", port=port, **kwargs)


def hdrs(port: int, **extra: str) -> dict[str, str]:
    return {"host": f"127.0.0.1:{port}", **extra}


async def body_of(resp) -> bytes:
    try:
        return b"".join([chunk async for chunk in resp.content.iter_any()])
    finally:
        resp.release()


async def agen(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


# -- the request on the wire ------------------------------------------------------------------------


async def test_request_head_is_sent_exactly_as_given_and_nothing_is_added():
    async with RawServer(keep_alive_ok) as server:
        pool = pool_for(server)
        headers = {"host": "bucket.example:9000", "X-Amz-Meta-Name": "välue", "range": "bytes=0-1"}
        resp = await pool.request("GET", f"{server.url}/b/a%2Fb%20c?list-type=2&prefix=%2B", headers)
        assert resp.status == 200 and resp.reason == "OK"
        await body_of(resp)
        assert server.heads == [
            b"GET /b/a%2Fb%20c?list-type=2&prefix=%2B HTTP/1.1\r\n"
            b"host: bucket.example:9000\r\nX-Amz-Meta-Name: v\xc3\xa4lue\r\nrange: bytes=0-1\r\n\r\n"]
        # A missing Host is the only header ever added.
        await body_of(await pool.request("GET", "/x", {}))
        assert server.heads[-1] == f"GET /x HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
        await pool.close()


async def test_header_injection_is_refused():
    async with RawServer(keep_alive_ok) as server:
        pool = pool_for(server)
        with pytest.raises(ValueError):
            await pool.request("GET", "/x", {"host": "h", "x-evil": "a\r\nX-Injected: 1"})
        assert server.heads == []
        await pool.close()


async def test_body_with_content_length_in_one_write_and_streamed():
    async with RawServer(keep_alive_ok) as server:
        pool = pool_for(server)
        small = await pool.request("PUT", "/small", hdrs(server.port, **{"content-length": "5"}), agen(b"hello"))
        assert await body_of(small) == b"PUT /small HTTP/1.1|hello"
        pieces = [os.urandom(100 * KiB) for _ in range(5)]
        big = await pool.request("PUT", "/big", hdrs(server.port, **{"content-length": str(500 * KiB)}),
                                 agen(*pieces))
        assert await body_of(big) == b"PUT /big HTTP/1.1|" + b"".join(pieces)
        empty = await pool.request("PUT", "/empty", hdrs(server.port, **{"content-length": "0"}), agen())
        assert await body_of(empty) == b"PUT /empty HTTP/1.1|"
        # memoryview / bytearray pieces pass through
        mixed = await pool.request("PUT", "/mixed", hdrs(server.port, **{"content-length": "6"}),
                                   agen(memoryview(b"abc"), bytearray(b"def")))
        assert await body_of(mixed) == b"PUT /mixed HTTP/1.1|abcdef"
        assert len(server.connections) == 1  # all on one kept-alive connection
        await pool.close()


async def test_chunked_request_body_only_when_the_caller_asks():
    async with RawServer(keep_alive_ok) as server:
        pool = pool_for(server)
        resp = await pool.request("PUT", "/c", hdrs(server.port, **{"transfer-encoding": "chunked"}),
                                  agen(b"ab", b"", b"cde"))
        assert await body_of(resp) == b"PUT /c HTTP/1.1|abcde"
        with pytest.raises(ValueError):  # neither Content-Length nor Transfer-Encoding
            await pool.request("PUT", "/c", hdrs(server.port), agen(b"x"))
        await pool.close()


async def test_body_longer_or_shorter_than_content_length_fails_and_never_desyncs():
    async with RawServer(keep_alive_ok) as server:
        pool = pool_for(server)
        with pytest.raises(RequestBodyLengthError):
            await pool.request("PUT", "/long", hdrs(server.port, **{"content-length": "3"}), agen(b"ab", b"cd"))
        with pytest.raises(RequestBodyLengthError):
            await pool.request("PUT", "/short", hdrs(server.port, **{"content-length": "9"}), agen(b"ab", b"cd"))
        assert await body_of(await pool.request("GET", "/after", hdrs(server.port))) == b"GET /after HTTP/1.1|"
        await pool.close()


async def test_request_body_error_is_wrapped_and_closes_the_connection():
    class Boom(Exception):
        pass

    async def failing():
        yield b"a" * KiB
        raise Boom("client went away")

    async with RawServer(keep_alive_ok) as server:
        pool = pool_for(server)
        with pytest.raises(RequestBodyError) as info:
            await pool.request("PUT", "/x", hdrs(server.port, **{"content-length": str(4 * KiB)}), failing())
        assert isinstance(info.value.__cause__, Boom)
        assert isinstance(info.value, aiohttp.ClientConnectionError)
        for _ in range(50):
            if server.open == 0:
                break
            await asyncio.sleep(0.02)
        assert server.open == 0 and pool.size == 0
        # a body failing before its first piece: no connection is even opened
        with pytest.raises(RequestBodyError):
            await pool.request("PUT", "/y", hdrs(server.port, **{"content-length": "1"}), _raises_at_once())
        assert len(server.connections) == 1
        await pool.close()


async def _raises_at_once():
    raise RuntimeError("no body at all")
    yield b""  # pragma: no cover


# -- keep-alive, stale connections, idle timeout ----------------------------------------------------


async def test_keep_alive_reuses_one_connection():
    async with RawServer(keep_alive_ok) as server:
        pool = pool_for(server)
        for i in range(20):
            assert await body_of(await pool.request("GET", f"/k{i}", hdrs(server.port))) == f"GET /k{i} HTTP/1.1|".encode()
        assert len(server.connections) == 1 and pool.size == 1 and pool.idle_count == 1
        await pool.close()


async def test_unread_or_closed_responses_do_not_return_the_connection():
    async def big(conn: Conn, server: RawServer) -> None:
        while await conn.read_request() is not None:
            await conn.send(ok(b"x" * (4 * MiB)))

    async with RawServer(big) as server:
        pool = pool_for(server)
        resp = await pool.request("GET", "/a", hdrs(server.port))
        await resp.content.readany()
        resp.release()  # body not received to its end: closed, not pooled
        assert pool.size == 0
        resp = await pool.request("GET", "/b", hdrs(server.port))
        assert len(await resp.content.read()) == 4 * MiB
        resp.close()
        assert pool.size == 0
        resp = await pool.request("GET", "/c", hdrs(server.port))
        await resp.content.read()
        resp.release()
        resp.release()  # idempotent
        resp.close()  # a no-op after release
        assert pool.size == 1 and pool.idle_count == 1
        assert len(server.connections) == 3
        await pool.close()


async def test_connection_close_answer_is_not_reused():
    async def closing(conn: Conn, server: RawServer) -> None:
        if await conn.read_request() is not None:
            await conn.send(ok(b"bye", b"Connection: close\r\n"))

    async with RawServer(closing) as server:
        pool = pool_for(server)
        for _ in range(3):
            assert await body_of(await pool.request("GET", "/", hdrs(server.port))) == b"bye"
        assert len(server.connections) == 3
        await pool.close()


async def test_server_closing_an_idle_connection_is_noticed_before_reuse():
    async def one_then_close(conn: Conn, server: RawServer) -> None:
        if await conn.read_request() is not None:
            await conn.send(ok(b"one"))  # keep-alive announced, then closed anyway

    async with RawServer(one_then_close) as server:
        pool = pool_for(server)
        assert await body_of(await pool.request("GET", "/", hdrs(server.port))) == b"one"
        await asyncio.sleep(0.1)
        assert pool.size == 0  # the close was seen while idle
        assert await body_of(await pool.request("GET", "/", hdrs(server.port))) == b"one"
        await pool.close()


def _drop_second_request(counter: list[int]) -> Handler:
    """Answers the first request of a connection; on the second, closes without answering
    (a stale keep-alive connection: the server's close crossed our request)."""
    async def handler(conn: Conn, server: RawServer) -> None:
        while (request := await conn.read_request()) is not None:
            counter[0] += 1
            if conn.requests >= 2:
                conn.writer.transport.abort()
                return
            if request[0].startswith(b"HEAD"):
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
            else:
                await conn.send(ok(b"answer %d" % conn.index))
    return handler


@pytest.mark.parametrize("method, body", [("GET", None), ("HEAD", None), ("PUT", [b"one piece"]),
                                          ("DELETE", None)])
async def test_stale_keep_alive_is_retried_once_on_a_fresh_connection(method, body):
    counter = [0]
    async with RawServer(_drop_second_request(counter)) as server:
        pool = pool_for(server)
        first = await pool.request("GET", "/", hdrs(server.port))
        assert await body_of(first) == b"answer 0"
        headers = hdrs(server.port)
        if body is not None:
            headers["content-length"] = str(sum(map(len, body)))
        resp = await pool.request(method, "/", headers, agen(*body) if body is not None else None)
        assert resp.status == 200
        assert await body_of(resp) == (b"" if method == "HEAD" else b"answer 1")
        assert len(server.connections) == 2 and counter[0] == 3
        await pool.close()


async def test_stale_keep_alive_is_not_retried_after_more_body_was_pulled_or_for_post():
    counter = [0]
    async with RawServer(_drop_second_request(counter)) as server:
        pool = pool_for(server)
        await body_of(await pool.request("GET", "/", hdrs(server.port)))

        async def slow_two_pieces():
            yield b"a" * 10
            await asyncio.sleep(0.3)  # the drop is seen before the second piece is needed?
            yield b"b" * 10

        # The connection dies while the second piece is awaited: that piece is already being
        # pulled from the caller, so the body cannot be sent again.
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await pool.request("PUT", "/", hdrs(server.port, **{"content-length": "20"}), slow_two_pieces())
        await body_of(await pool.request("GET", "/", hdrs(server.port)))
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await pool.request("POST", "/", hdrs(server.port))
        await pool.close()


def _loopback_tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = socket.create_connection(listener.getsockname())
        far, _ = listener.accept()
    near.setblocking(False)
    return far, near


async def test_stale_keep_alive_with_a_splice_body_is_retried_only_before_the_splice():
    counter = [0]
    async with RawServer(_drop_second_request(counter)) as server:
        pool = pool_for(server)
        far, near = _loopback_tcp_pair()
        try:
            # All of the body in the prefix: nothing was taken from the fd, so it is retried.
            await body_of(await pool.request("GET", "/", hdrs(server.port)))
            body = SpliceBody(b"prefix", near.fileno(), 0, timeout=5)
            resp = await pool.request("PUT", "/", hdrs(server.port, **{"content-length": "6"}), body)
            assert resp.status == 200 and await body_of(resp) == b"answer 1"
            assert len(server.connections) == 2
            # Bytes spliced from the fd cannot be read again: a stale connection fails the request.
            await body_of(await pool.request("GET", "/", hdrs(server.port)))  # (itself retried)
            before = len(server.connections)
            far.sendall(b"s" * 1000)
            body = SpliceBody(b"prefix", near.fileno(), 1000, timeout=2)
            with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
                await pool.request("PUT", "/", hdrs(server.port, **{"content-length": "1006"}), body)
            assert len(server.connections) == before  # no fresh connection tried
        finally:
            far.close()
            near.close()
            await pool.close()


async def test_stale_retry_happens_only_once():
    answered = [False]

    async def first_request_only(conn: Conn, server: RawServer) -> None:
        while await conn.read_request() is not None:
            if answered[0]:
                conn.writer.transport.abort()
                return
            answered[0] = True
            await conn.send(ok(b"the only answer"))

    async with RawServer(first_request_only) as server:
        pool = pool_for(server)
        await body_of(await pool.request("GET", "/", hdrs(server.port)))
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await pool.request("GET", "/", hdrs(server.port))
        assert len(server.connections) == 2  # the stale one and one fresh retry, no more
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await pool.request("GET", "/", hdrs(server.port))  # fresh connection: never retried
        assert len(server.connections) == 3
        await pool.close()


async def test_idle_connections_are_closed_after_keepalive_timeout():
    async with RawServer(keep_alive_ok) as server:
        pool = pool_for(server, keepalive_timeout=0.3)
        async def get():
            return await body_of(await pool.request("GET", "/", hdrs(server.port)))

        await asyncio.gather(*(get() for _ in range(3)))
        assert pool.size >= 1
        started = time.monotonic()
        while pool.size and time.monotonic() - started < 5:
            await asyncio.sleep(0.05)
        assert pool.size == 0 and 0.25 <= time.monotonic() - started < 3
        for _ in range(50):
            if server.open == 0:
                break
            await asyncio.sleep(0.02)
        assert server.open == 0  # closed on the wire too
        await pool.close()


async def test_bytes_after_the_answer_mean_the_connection_is_not_reused():
    # (Junk in the same segment as the answer fails that answer, as with aiohttp: the
    # parser raises before handing out the message.)
    async def overlong(conn: Conn, server: RawServer) -> None:
        while await conn.read_request() is not None:
            await conn.send(ok(b"ab"))
            await asyncio.sleep(0.05)
            await conn.send(b"junk")

    async with RawServer(overlong) as server:
        pool = pool_for(server)
        for _ in range(2):
            assert await body_of(await pool.request("GET", "/", hdrs(server.port))) == b"ab"
            await asyncio.sleep(0.2)
        assert len(server.connections) == 2
        await pool.close()


async def test_hosts_of_one_backend_get_their_own_connections_under_one_limit():
    """Virtual-host addressing: the URL's host is where a connection goes (as aiohttp does)."""
    async with RawServer(keep_alive_ok) as server:
        pool = pool_for(server, max_connections=1)
        for host in ("127.0.0.1", "localhost", "127.0.0.1"):
            url = f"http://{host}:{server.port}/k"
            assert await body_of(await pool.request("GET", url, {"host": f"bucket.{host}"})) == b"GET /k HTTP/1.1|"
            assert pool.size == 1  # the idle connection to the other host made room
        assert len(server.connections) == 3
        assert server.heads[1] == b"GET /k HTTP/1.1\r\nhost: bucket.localhost\r\n\r\n"
        await pool.close()


async def test_closing_the_pool_fails_requests_in_flight_and_refuses_new_ones():
    async def silent(conn: Conn, server: RawServer) -> None:
        await conn.read_request()
        await asyncio.sleep(30)

    async with RawServer(silent) as server:
        pool = pool_for(server)
        task = asyncio.ensure_future(pool.request("GET", "/", hdrs(server.port)))
        await asyncio.sleep(0.1)
        await pool.close()
        with pytest.raises(aiohttp.ClientConnectionError):
            await asyncio.wait_for(task, 5)
        with pytest.raises(aiohttp.ClientConnectionError):
            await pool.request("GET", "/", hdrs(server.port))
        assert pool.size == 0


# -- responses ------------------------------------------------------------------------------------


async def aiohttp_server(handler) -> tuple[web.ServerRunner, str]:
    runner = web.ServerRunner(web.Server(handler), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


@asynccontextmanager
async def running(handler):
    runner, url = await aiohttp_server(handler)
    try:
        yield url
    finally:
        await runner.cleanup()


async def test_chunked_response_from_aiohttp_and_multi_valued_headers():
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(status=200, reason="Fine")
        response.enable_chunked_encoding()
        response.headers.add("X-Multi", "1")
        response.headers.add("x-multi", "2")
        await response.prepare(request)
        for i in range(50):
            await response.write(b"%03d," % i * 100)
        await response.write_eof()
        return response

    async with running(handler) as url:
        pool = pool_for(url)
        for _ in range(2):
            resp = await pool.request("GET", url + "/c", {"host": url[7:]})
            assert (resp.status, resp.reason) == (200, "Fine")
            assert resp.headers.get("TRANSFER-ENCODING") == "chunked"
            assert resp.headers.getall("x-multi") == ["1", "2"]
            assert [v for k, v in resp.headers.items() if k.lower() == "x-multi"] == ["1", "2"]
            assert await body_of(resp) == b"".join(b"%03d," % i * 100 for i in range(50))
        assert pool.size == 1
        await pool.close()


async def test_head_204_304_have_no_body_and_keep_the_connection():
    async def handler(conn: Conn, server: RawServer) -> None:
        while (request := await conn.read_request()) is not None:
            head = request[0]
            if head.startswith(b"HEAD"):
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: \"e\"\r\n\r\n")
            elif b"/204" in head:
                await conn.send(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")
            elif b"/304" in head:
                await conn.send(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: \"e\"\r\n\r\n")
            else:
                await conn.send(ok(b"after"))

    async with RawServer(handler) as server:
        pool = pool_for(server)
        for path, status in (("/head", 200), ("/204", 204), ("/304", 304), ("/head", 200)):
            method = "HEAD" if path == "/head" else "GET"
            resp = await pool.request(method, path, hdrs(server.port))
            assert resp.status == status
            assert await resp.content.read() == b""
            resp.release()
            assert await body_of(await pool.request("GET", "/get", hdrs(server.port))) == b"after"
        assert len(server.connections) == 1
        await pool.close()


async def test_1xx_answers_are_skipped():
    async def handler(conn: Conn, server: RawServer) -> None:
        while await conn.read_request() is not None:
            await conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            await asyncio.sleep(0.05)
            await conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"final"))

    async with RawServer(handler) as server:
        pool = pool_for(server)
        for _ in range(2):
            resp = await pool.request("PUT", "/", hdrs(server.port, **{"content-length": "3"}), agen(b"abc"))
            assert resp.status == 200 and await body_of(resp) == b"final"
        assert len(server.connections) == 1
        await pool.close()


async def test_body_until_eof_without_content_length():
    async def handler(conn: Conn, server: RawServer) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\n\r\n" + b"u" * 300 * KiB)

    async with RawServer(handler) as server:
        pool = pool_for(server)
        resp = await pool.request("GET", "/", hdrs(server.port))
        assert await body_of(resp) == b"u" * 300 * KiB
        assert pool.size == 0
        await pool.close()


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_response_cut_mid_body_is_a_payload_error(framing):
    async def handler(conn: Conn, server: RawServer) -> None:
        await conn.read_request()
        if framing == "length":
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % MiB + b"a" * 100 * KiB)
        else:
            await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            + b"%x\r\n" % (10 * KiB) + b"c" * 10 * KiB + b"\r\n" + b"%x\r\n" % KiB + b"c" * 10)
        conn.writer.transport.abort()

    async with RawServer(handler) as server:
        pool = pool_for(server)
        resp = await pool.request("GET", "/", hdrs(server.port))
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await body_of(resp)
        assert pool.size == 0
        await pool.close()


async def test_garbage_answer_is_a_protocol_error():
    async def handler(conn: Conn, server: RawServer) -> None:
        await conn.read_request()
        await conn.send(b"SSH-2.0-OpenSSH\r\n\r\n")

    async with RawServer(handler) as server:
        pool = pool_for(server)
        with pytest.raises(UpstreamProtocolError):
            await pool.request("GET", "/", hdrs(server.port))
        assert pool.size == 0
        await pool.close()


async def test_early_answer_ends_the_upload():
    async def handler(conn: Conn, server: RawServer) -> None:
        await conn.reader.readuntil(b"\r\n\r\n")
        await conn.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nConnection: close\r\n\r\ndenied")
        await asyncio.sleep(0.2)  # then stops reading and closes

    pulled = [0]

    async def endless():
        while True:
            pulled[0] += 1
            yield b"x" * (256 * KiB)

    async with RawServer(handler) as server:
        pool = pool_for(server)
        resp = await asyncio.wait_for(pool.request(
            "PUT", "/", hdrs(server.port, **{"content-length": str(1 << 40)}), endless()), 10)
        assert resp.status == 403 and await body_of(resp) == b"denied"
        assert pulled[0] < 200  # stopped long before 1 TiB
        await pool.close()


# -- timeouts, refusals, limits -----------------------------------------------------------------


async def test_silent_server_is_a_read_timeout():
    async def silent(conn: Conn, server: RawServer) -> None:
        await conn.read_request()
        await asyncio.sleep(30)

    async with RawServer(silent) as server:
        pool = pool_for(server, read_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError) as info:
            await pool.request("GET", "/", hdrs(server.port))
        assert isinstance(info.value, aiohttp.ClientError)  # aiohttp's SocketTimeoutError
        assert 0.25 <= time.monotonic() - started < 3
        await pool.close()


async def test_server_stalling_mid_body_is_a_read_timeout_between_reads():
    async def stalls(conn: Conn, server: RawServer) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(4):  # slow but alive: never 1 s without a byte
            await asyncio.sleep(0.2)
            await conn.send(b"s" * 100)
        await asyncio.sleep(30)

    async with RawServer(stalls) as server:
        pool = pool_for(server, read_timeout=1.0)
        resp = await pool.request("GET", "/", hdrs(server.port))
        got = bytearray()
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            async for chunk in resp.content.iter_any():
                got += chunk
        # the whole transfer took longer than the read timeout: it is a timeout between reads
        assert len(got) == 400 and time.monotonic() - started >= 1.5
        resp.close()
        await pool.close()


async def test_server_that_stops_taking_the_body_is_a_timeout():
    async def deaf(conn: Conn, server: RawServer) -> None:
        await conn.read_request()  # the head only: the body is never read, nothing answered
        await asyncio.sleep(30)

    async def body():
        for _ in range(256):
            yield b"u" * MiB

    async with RawServer(deaf) as server:
        pool = pool_for(server, read_timeout=1.0)
        headers = {**hdrs(server.port), "content-length": str(256 * MiB)}
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await pool.request("PUT", "/", headers, data=body())
        assert time.monotonic() - started < 10  # not the 30 s the server would hold it
        await pool.close()


async def test_slow_consumer_is_not_a_read_timeout():
    async def fast(conn: Conn, server: RawServer) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (16 * MiB))
        for _ in range(16):
            await conn.send(b"f" * MiB)

    async with RawServer(fast) as server:
        pool = pool_for(server, read_timeout=0.3, read_limit=256 * KiB)
        resp = await pool.request("GET", "/", hdrs(server.port))
        await asyncio.sleep(0.8)  # paused by backpressure meanwhile: not the server's fault
        assert len(await resp.content.read()) == 16 * MiB
        resp.release()
        await pool.close()


async def test_connection_refused_is_a_connect_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    pool = ConnectionPool(host="127.0.0.1", port=port)
    with pytest.raises(UpstreamConnectError) as info:
        await pool.request("GET", "/", {"host": "x"})
    assert isinstance(info.value, aiohttp.ClientOSError) and isinstance(info.value, OSError)
    assert pool.size == 0
    await pool.close()


async def test_connect_timeout():
    # A listening socket that never accepts, its backlog filled: further SYNs go unanswered.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(s)
        pool = ConnectionPool(host="127.0.0.1", port=port, connect_timeout=0.3)
        started = time.monotonic()
        try:
            with pytest.raises(asyncio.TimeoutError) as info:
                await pool.request("GET", "/", {"host": "x"})
        except pytest.fail.Exception:
            pytest.skip("this kernel completed the connection despite the full backlog")
        assert isinstance(info.value, aiohttp.ServerTimeoutError)
        assert time.monotonic() - started < 3 and pool.size == 0
        await pool.close()
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_max_connections_queue_the_requests():
    async def slow(conn: Conn, server: RawServer) -> None:
        while await conn.read_request() is not None:
            await asyncio.sleep(0.1)
            await conn.send(ok(b"slow"))

    async with RawServer(slow) as server:
        pool = pool_for(server, max_connections=2)

        async def one():
            return await body_of(await pool.request("GET", "/", hdrs(server.port)))

        results = await asyncio.gather(*(one() for _ in range(8)))
        assert results == [b"slow"] * 8
        assert server.max_open == 2 and len(server.connections) == 2 and pool.size == 2
        # a waiter that gives up leaves no trace
        pool2 = pool_for(server, max_connections=1)
        blocker = await pool2.request("GET", "/", hdrs(server.port))
        waiting = asyncio.ensure_future(pool2.request("GET", "/", hdrs(server.port)))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await body_of(blocker)
        assert await body_of(await pool2.request("GET", "/", hdrs(server.port))) == b"slow"
        assert pool2.size == 1
        await pool.close()
        await pool2.close()


async def test_cancelled_request_closes_its_connection():
    async def silent(conn: Conn, server: RawServer) -> None:
        await conn.read_request()
        await asyncio.sleep(30)

    async with RawServer(silent) as server:
        pool = pool_for(server)
        task = asyncio.ensure_future(pool.request("GET", "/", hdrs(server.port)))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.size == 0
        await pool.close()


# -- backpressure -----------------------------------------------------------------------------------


async def test_download_backpressure_bounds_memory():
    sent = [0]
    total = 64 * MiB

    async def firehose(conn: Conn, server: RawServer) -> None:
        await conn.read_request()
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"d" * (256 * KiB)
        while sent[0] < total:
            conn.writer.write(block)
            await conn.writer.drain()
            sent[0] += len(block)

    async with RawServer(firehose) as server:
        pool = pool_for(server, read_limit=MiB)
        resp = await pool.request("GET", "/", hdrs(server.port))
        received, worst_buffer, worst_lead = 0, 0, 0
        while True:
            await asyncio.sleep(0.002)  # a slow consumer
            worst_buffer = max(worst_buffer, resp.content._size)  # what piled up meanwhile
            chunk = await resp.content.readany()
            if not chunk:
                break
            received += len(chunk)
            worst_lead = max(worst_lead, sent[0] - received)
        resp.release()
        assert received == total
        print(f"\ndownload: worst client-side buffer {worst_buffer / MiB:.2f} MiB, "
              f"worst server lead {worst_lead / MiB:.2f} MiB")
        assert worst_buffer <= 2 * MiB + 512 * KiB  # high-water mark + one read
        assert worst_lead < 24 * MiB  # kernel socket buffers included
        await pool.close()


async def test_upload_backpressure_bounds_memory():
    received = [0]
    total = 64 * MiB

    async def slow_reader(conn: Conn, server: RawServer) -> None:
        await conn.reader.readuntil(b"\r\n\r\n")
        while received[0] < total:
            chunk = await conn.reader.read(256 * KiB)
            if not chunk:
                return
            received[0] += len(chunk)
            await asyncio.sleep(0.002)
        await conn.send(ok(b"stored"))

    produced = [0]
    worst_lead = [0]

    async def producer():
        block = b"p" * (256 * KiB)
        while produced[0] < total:
            produced[0] += len(block)
            worst_lead[0] = max(worst_lead[0], produced[0] - received[0])
            yield block

    async with RawServer(slow_reader) as server:
        pool = pool_for(server)
        resp = await pool.request("PUT", "/", hdrs(server.port, **{"content-length": str(total)}), producer())
        assert await body_of(resp) == b"stored"
        print(f"\nupload: worst producer lead {worst_lead[0] / MiB:.2f} MiB")
        assert worst_lead[0] < 24 * MiB
        await pool.close()


# -- TLS ------------------------------------------------------------------------------------------


def _self_signed(tmp_path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


async def test_tls_backend_verified_unverified_and_with_a_context(tmp_path):
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handler(request: web.BaseRequest) -> web.Response:
        return web.Response(body=b"secure " + request.host.encode())

    runner = web.ServerRunner(web.Server(handler), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        url = f"https://127.0.0.1:{port}/t"
        unverified = ConnectionPool(scheme="https", host="127.0.0.1", port=port, verify_tls=False)
        for _ in range(2):
            assert await body_of(await unverified.request("GET", url, {"host": "localhost"})) == b"secure localhost"
        assert unverified.size == 1
        verified = ConnectionPool(scheme="https", host="127.0.0.1", port=port, verify_tls=True)
        with pytest.raises(UpstreamConnectError):
            await verified.request("GET", url, {"host": "localhost"})
        client_ctx = ssl.create_default_context(cafile=cert)
        with_ca = ConnectionPool(scheme="https", host="127.0.0.1", port=port, verify_tls=client_ctx)
        assert await body_of(await with_ca.request("GET", url, {"host": "localhost"})) == b"secure localhost"
        for pool in (unverified, verified, with_ca):
            await pool.close()
    finally:
        await runner.cleanup()


# -- UpstreamPool: both clients behave the same -----------------------------------------------------


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
async def test_upstream_pool_clients_answer_alike(client):
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": "42", "X-Method": "HEAD"})
        return web.Response(status=201 if body else 200, body=b"%s %s %s" % (
            request.method.encode(), request.raw_path.encode(), body),
            headers={"X-Host": request.host, "X-UA": request.headers.get("User-Agent", "-"),
                     "X-Accept": request.headers.get("Accept", "-")})

    async with running(handler) as url:
        backend = Backend(endpoint=url)
        pool = UpstreamPool(client=client)
        resp = await pool.request(backend, "GET", url + "/b/k%2F1?x=%20", headers={"host": backend.netloc})
        assert resp.status == 200 and resp.headers.get("x-host") == backend.netloc
        assert (resp.headers["X-UA"], resp.headers["X-Accept"]) == ("-", "-")  # nothing added
        assert await resp.content.read() == b"GET /b/k%2F1?x=%20 "
        resp.release()
        resp = await pool.request(backend, "PUT", url + "/b/k", headers={"host": backend.netloc, "content-length": "4"},
                                  data=agen(b"da", b"ta"))
        assert resp.status == 201
        assert b"".join([c async for c in resp.content.iter_any()]) == b"PUT /b/k data"
        resp.release()
        resp = await pool.request(backend, "HEAD", url + "/b/k", headers={"host": backend.netloc})
        assert resp.status == 200 and resp.headers["Content-Length"] == "42"
        assert await resp.content.read() == b""
        resp.release()
        await pool.close()


def test_upstream_pool_refuses_unknown_clients():
    with pytest.raises(ValueError):
        UpstreamPool(client="curl")


async def test_two_pools_share_nothing():
    async with RawServer(keep_alive_ok) as server:
        backend = Backend(endpoint=server.url)
        one, two = UpstreamPool(), UpstreamPool()
        for pool in (one, two):
            await body_of(await pool.request(backend, "GET", server.url + "/", headers=hdrs(server.port)))
        assert len(server.connections) == 2
        await one.close()
        await body_of(await two.request(backend, "GET", server.url + "/", headers=hdrs(server.port)))
        assert len(server.connections) == 2
        await two.close()


# -- micro-benchmark (printed, never asserted) ----------------------------------------------------

_BENCH_SERVER = """
import asyncio, sys
from aiohttp import web
payload = b"b" * 1024
async def handler(request):
    return web.Response(body=payload)
async def main():
    runner = web.ServerRunner(web.Server(handler), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""


async def test_micro_benchmark_small_gets():
    """1 KiB GETs from an aiohttp low-level server in another process: aiohttp ClientSession
    vs the lean client, sequential and at concurrency 16; the CPU time is this process's
    (the client's) only.  Run with -s to see the numbers; INPROXY_BENCH_SECONDS sets the
    duration of each run (default 1 s), two rounds each, the best kept."""
    import subprocess
    import sys

    seconds = float(os.environ.get("INPROXY_BENCH_SECONDS", "1"))
    server = subprocess.Popen([sys.executable, "-c", _BENCH_SERVER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        backend = Backend(endpoint=url)
        headers = {"host": backend.netloc, "x-amz-date": "20260101T000000Z",
                   "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
                   "authorization": "AWS4-HMAC-SHA256 Credential=K/20260101/us-east-1/s3/aws4_request, "
                                    "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=" + "0" * 64}
        target = url + "/bucket/key"
        results: dict[tuple[str, int], tuple[float, float]] = {}
        for client in ("aiohttp", "lean", "aiohttp", "lean"):
            pool = UpstreamPool(client=client)

            async def get():
                resp = await pool.request(backend, "GET", target, headers=headers)
                async for _chunk in resp.content.iter_any():
                    pass
                resp.release()

            for concurrency in (1, 16):
                await asyncio.gather(*(get() for _ in range(concurrency)))  # connections up
                count = 0
                deadline = time.perf_counter() + seconds
                cpu0, t0 = time.process_time(), time.perf_counter()

                async def worker():
                    nonlocal count
                    while time.perf_counter() < deadline:
                        await get()
                        count += 1

                await asyncio.gather(*(worker() for _ in range(concurrency)))
                elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                rate = count / elapsed
                best = results.get((client, concurrency))
                if best is None or rate > best[0]:
                    results[(client, concurrency)] = (rate, cpu / count * 1e6)
            await pool.close()
    finally:
        server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    print("\nmicro-benchmark, 1 KiB GETs to an aiohttp server in another process "
          "(client CPU only):")
    for (client, concurrency), (rate, cpu_us) in sorted(results.items()):
        print(f"  {client:8s} c={concurrency:<3d} {rate:8.0f} req/s  {cpu_us:6.1f} us client CPU/request")
