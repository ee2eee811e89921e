"""inproxy.splice and the zero-copy bodies of inproxy.upstream_client, over real loopback TCP.

Every test runs on a fresh event loop of each kind (asyncio's default selector loop and
uvloop).  Bytes are checked with SHA-256 on the receiving end.  Nothing of the wire is
mocked: feeders and sinks are raw non-blocking sockets driven by ``loop.sock_*``, HTTP
servers are aiohttp's or raw asyncio ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import time
from typing import Awaitable, Callable

import pytest
from aiohttp import web

from inproxy import splice as splice_module
from inproxy.splice import Pipes, SpliceConnectionError, SpliceIncomplete, SpliceTimeout, splice
from inproxy.upstream_client import ConnectionPool, RequestBodyError, SpliceBody

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

pytestmark = pytest.mark.skipif(not splice_module.available(), reason="needs Linux splice()")

KiB, MiB = 1024, 1024 * 1024
BLOCK = os.urandom(MiB)  # bodies are repetitions of this block (memory stays small)


def pattern(size: int) -> bytes:
    return (BLOCK * (size // MiB + 1))[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(uvloop is None, reason="no uvloop"))]


@pytest.fixture(params=LOOPS)
def run(request) -> Callable[[Callable[[], Awaitable]], object]:
    """Run a coroutine function on a new loop of the parametrized kind (30 s at most)."""
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def runner(fn: Callable[[], Awaitable]) -> object:
        loop = factory()
        try:
            return loop.run_until_complete(asyncio.wait_for(fn(), 30))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    runner.kind = request.param
    return runner


# -- sockets ------------------------------------------------------------------------------------


def tcp_pair(buffers: int | None = None) -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (client end, server end), both non-blocking.
    ``buffers``: SO_SNDBUF/SO_RCVBUF for both ends (bounds what the kernel holds)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        if buffers:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
        a = socket.socket()
        if buffers:
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                a.setsockopt(socket.SOL_SOCKET, opt, buffers)
        a.connect(listener.getsockname())
        b, _ = listener.accept()
        if buffers:
            b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


class Rig:
    """feeder ``w`` -> ``src`` =splice=> ``dst`` -> sink ``r``: two loopback connections."""

    def __init__(self, buffers: int | None = None) -> None:
        self.w, self.src = tcp_pair(buffers)
        self.dst, self.r = tcp_pair(buffers)
        self.sent = 0
        self.received = 0
        self.worst_lead = 0

    def close(self) -> None:
        for s in (self.w, self.src, self.dst, self.r):
            s.close()

    async def feed(self, data: bytes, *, close: bool = False, piece: int = 256 * KiB) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        for start in range(0, len(data), piece):
            await loop.sock_sendall(self.w, view[start:start + piece])
            self.sent += len(view[start:start + piece])
        if close:
            self.w.shutdown(socket.SHUT_WR)

    async def sink(self, limit: int, *, delay: float = 0.0, piece: int = 256 * KiB) -> tuple[int, str]:
        """Read up to ``limit`` bytes (or to EOF): (count, sha256)."""
        loop = asyncio.get_running_loop()
        digest = hashlib.sha256()
        while self.received < limit:
            chunk = await loop.sock_recv(self.r, min(piece, limit - self.received))
            if not chunk:
                break
            digest.update(chunk)
            self.received += len(chunk)
            self.worst_lead = max(self.worst_lead, self.sent - self.received)
            if delay:
                await asyncio.sleep(delay)
        return self.received, digest.hexdigest()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# -- the primitive --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 10 * MiB])
def test_exact_count_is_moved_and_nothing_more(run, size):
    async def main():
        rig = Rig()
        data = pattern(size)
        try:
            # The bytes after the count (a next request on a keep-alive connection) stay.
            feeder = asyncio.ensure_future(rig.feed(data + b"NEXT"))
            sink = asyncio.ensure_future(rig.sink(size))
            await splice(rig.src.fileno(), rig.dst.fileno(), size, timeout=5)
            assert await sink == (size, sha(data))
            await feeder
            loop = asyncio.get_running_loop()
            assert await asyncio.wait_for(loop.sock_recv(rig.src, 100), 5) == b"NEXT"
        finally:
            rig.close()

    run(main)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_more_than_the_pipe_with_a_slow_reader_keeps_memory_flat(run):
    total = 8 * MiB

    async def main():
        rig = Rig(buffers=128 * KiB)  # small kernel buffers: the lead measures our buffering
        data = pattern(total)
        worst_rss = rss_before = rss()
        try:
            feeder = asyncio.ensure_future(rig.feed(data))
            # ~32 MB/s: far slower than the feeder, the relay waits for the reader
            sink = asyncio.ensure_future(rig.sink(total, delay=0.002, piece=64 * KiB))
            relay = asyncio.ensure_future(splice(rig.src.fileno(), rig.dst.fileno(), total, timeout=5))
            while not relay.done():
                await asyncio.sleep(0.01)
                worst_rss = max(worst_rss, rss())
            await relay
            assert await sink == (total, sha(data))
            await feeder
        finally:
            rig.close()
        print(f"\nworst lead {rig.worst_lead / MiB:.2f} MiB, "
              f"RSS grew {(worst_rss - rss_before) / MiB:.2f} MiB")
        # pipe (1 MiB) + four small socket buffers + one feeder piece, with room to spare
        assert rig.worst_lead < 6 * MiB
        assert worst_rss - rss_before < 4 * MiB

    run(main)


def test_source_ending_early_is_incomplete_with_the_count(run):
    async def main():
        rig = Rig()
        data = pattern(3 * MiB + 7)
        try:
            feeder = asyncio.ensure_future(rig.feed(data, close=True))
            sink = asyncio.ensure_future(rig.sink(10 * MiB))
            with pytest.raises(SpliceIncomplete) as info:
                await splice(rig.src.fileno(), rig.dst.fileno(), 10 * MiB, timeout=5)
            assert isinstance(info.value, ConnectionError)
            assert (info.value.moved, info.value.count, info.value.source) == (len(data), 10 * MiB, True)
            rig.dst.shutdown(socket.SHUT_WR)
            assert await sink == (len(data), sha(data))
            await feeder
        finally:
            rig.close()

    run(main)


def test_source_reset_is_a_connection_error_of_the_source(run):
    async def main():
        rig = Rig()
        try:
            await rig.feed(b"x" * 1000)
            rig.w.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            rig.w.close()  # linger 0: a reset
            sink = asyncio.ensure_future(rig.sink(1000))
            with pytest.raises(SpliceConnectionError) as info:
                await splice(rig.src.fileno(), rig.dst.fileno(), 5000, timeout=5)
            assert info.value.source is True and not isinstance(info.value, SpliceIncomplete)
            sink.cancel()
        finally:
            rig.close()

    run(main)


def test_destination_closed_is_a_connection_error(run):
    async def main():
        rig = Rig(buffers=128 * KiB)
        data = pattern(16 * MiB)
        try:
            feeder = asyncio.ensure_future(rig.feed(data))
            loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(splice(rig.src.fileno(), rig.dst.fileno(), len(data), timeout=5))
            assert await loop.sock_recv(rig.r, 1000)
            rig.r.close()  # unread data: the kernel answers with a reset
            with pytest.raises(ConnectionError) as info:
                await task
            assert isinstance(info.value, SpliceConnectionError) and info.value.source is False
            feeder.cancel()
        finally:
            rig.close()

    run(main)


@pytest.mark.parametrize("stalled", ["source", "destination"])
def test_no_progress_is_a_timeout(run, stalled):
    async def main():
        rig = Rig(buffers=128 * KiB)
        try:
            if stalled == "source":
                await rig.feed(b"s" * 100)  # then nothing
                sink = asyncio.ensure_future(rig.sink(100))
                count = 1000
            else:
                feeder = asyncio.ensure_future(rig.feed(pattern(16 * MiB)))  # nobody reads
                count = 16 * MiB
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError) as info:
                await splice(rig.src.fileno(), rig.dst.fileno(), count, timeout=0.2)
            elapsed = time.monotonic() - started
            assert isinstance(info.value, SpliceTimeout)
            assert info.value.source is (stalled == "source")
            if stalled == "source":
                assert info.value.moved == 100 and await sink == (100, sha(b"s" * 100))
                assert 0.19 <= elapsed < 3
            else:
                assert 0 < info.value.moved < count
                feeder.cancel()
        finally:
            rig.close()

    run(main)


def test_progress_resets_the_deadline(run):
    async def main():
        rig = Rig()
        try:
            async def trickle():
                for _ in range(6):
                    await rig.feed(b"t" * 10)
                    await asyncio.sleep(0.06)

            feeder = asyncio.ensure_future(trickle())
            sink = asyncio.ensure_future(rig.sink(60))
            await splice(rig.src.fileno(), rig.dst.fileno(), 60, timeout=0.2)  # 0.3 s in all
            assert await sink == (60, sha(b"t" * 60))
            await feeder
        finally:
            rig.close()

    run(main)


@pytest.mark.parametrize("stalled", ["source", "destination"])
def test_cancellation_leaves_no_fd_and_no_reader(run, stalled):
    async def main():
        loop = asyncio.get_running_loop()
        rig = Rig(buffers=128 * KiB)
        try:
            if stalled == "source":
                await rig.feed(b"c" * 100)
                feeder = None
            else:  # nobody reads: the relay waits with bytes in its pipe
                feeder = asyncio.ensure_future(rig.feed(pattern(16 * MiB)))
            await asyncio.sleep(0.05)
            fds_before = open_fds()
            selector = getattr(loop, "_selector", None)
            watched_before = set(selector.get_map()) if selector is not None else None
            task = asyncio.ensure_future(splice(rig.src.fileno(), rig.dst.fileno(), 16 * MiB, timeout=10))
            await asyncio.sleep(0.05)
            assert not task.done() and len(open_fds()) == len(fds_before) + 4  # 2 dups + a pipe
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert open_fds() == fds_before
            if watched_before is not None:
                assert set(selector.get_map()) == watched_before
            # The freed fd numbers come back first: a new socket on them is watched normally.
            a, b = socket.socketpair()
            try:
                a.setblocking(False)
                ready = loop.create_future()
                loop.add_reader(a.fileno(), lambda: ready.done() or ready.set_result(None))
                b.send(b"!")
                await asyncio.wait_for(ready, 2)
                loop.remove_reader(a.fileno())
            finally:
                a.close()
                b.close()
            if feeder is not None:
                feeder.cancel()
        finally:
            rig.close()

    run(main)


def test_argument_checks(run):
    async def main():
        a, b = tcp_pair()
        try:
            with pytest.raises(ValueError):
                await splice(a.fileno(), b.fileno(), -1, timeout=1)
            a.setblocking(True)
            with pytest.raises(ValueError):  # a blocking socket would block the loop
                await splice(a.fileno(), b.fileno(), 10, timeout=1)
        finally:
            a.close()
            b.close()

    run(main)


# -- pipes: bounded and reused ---------------------------------------------------------------------


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_pipes_are_bounded_reused_when_clean_and_closed_when_not():
    pipes = Pipes(2)
    first, second = pipes.take(), pipes.take()
    assert first is not None and second is not None and first.size >= 64 * KiB
    assert pipes.take() is None  # the limit: the caller copies instead
    pipes.give_back(first, clean=True)
    assert pipes.take() is first  # reused, not remade
    fds = (second.read_fd, second.write_fd)
    pipes.give_back(second, clean=False)  # after a failed splice bytes may sit in it
    assert not any(_is_open(fd) for fd in fds)
    third = pipes.take()  # its place is free again
    assert third is not None and third is not second and pipes.in_use == 2
    pipes.give_back(first, clean=True)
    idle = (first.read_fd, first.write_fd)
    pipes.close()  # the proxy stops: idle pipes closed, the one in use closed when given back
    assert not any(_is_open(fd) for fd in idle)
    in_use = (third.read_fd, third.write_fd)
    pipes.give_back(third, clean=True)
    assert not any(_is_open(fd) for fd in in_use) and pipes.in_use == 0


def test_a_small_pipe_is_not_used():
    # Over the user's pipe quota the kernel makes pipes of a few KiB (and refuses to grow
    # them); a pipe under min_size is closed and None says "copy".  Root escapes the quota,
    # so the bar is raised here instead: no pipe reaches 2 MiB (pipe-max-size is 1 MiB).
    before = open_fds()
    pipes = Pipes(4, min_size=2 * MiB)
    assert pipes.take() is None and pipes.in_use == 0
    assert open_fds() == before
    assert Pipes(0).take() is None  # max_splices=0: never splice


def test_one_pipe_serves_splice_after_splice(run):
    async def main():
        pipes = Pipes(1)
        pipe = pipes.take()
        for size in (3 * MiB, 5 * MiB + 7):
            rig = Rig()
            data = pattern(size)
            try:
                feeder = asyncio.ensure_future(rig.feed(data))
                sink = asyncio.ensure_future(rig.sink(size))
                await splice(rig.src.fileno(), rig.dst.fileno(), size, timeout=5, pipe=pipe)
                assert await sink == (size, sha(data))
                await feeder
            finally:
                rig.close()
            assert _is_open(pipe.read_fd) and _is_open(pipe.write_fd)  # the caller's: left open
            pipes.give_back(pipe, clean=True)
            assert pipes.take() is pipe
        pipes.give_back(pipe, clean=True)
        pipes.close()

    run(main)


# -- upstream_client: responses -------------------------------------------------------------------


async def start_server(handler, ssl_context: ssl.SSLContext | None = None
                       ) -> tuple[web.ServerRunner, int, list]:
    """An aiohttp low-level server on loopback; the list collects the peer of each connection."""
    peers: list = []

    async def wrapped(request: web.BaseRequest) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername")
        if peer not in peers:
            peers.append(peer)
        return await handler(request)

    runner = web.ServerRunner(web.Server(wrapped), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1], peers


@contextlib.asynccontextmanager
async def objects_pool(*, ssl_context: ssl.SSLContext | None = None, pairs: int = 0, **pool_options):
    """``serve_objects`` on loopback, a ConnectionPool to it and ``pairs`` loopback TCP pairs:
    yields (pool, peers, [(a, b), ...]) and closes them all afterwards."""
    runner, port, peers = await start_server(serve_objects, ssl_context)
    pool = ConnectionPool(host="127.0.0.1", port=port, **pool_options)
    sockets = [tcp_pair() for _ in range(pairs)]
    try:
        yield pool, peers, sockets
    finally:
        for a, b in sockets:
            a.close()
            b.close()
        await pool.close()
        await runner.cleanup()


BIG = pattern(32 * MiB)


async def serve_objects(request: web.BaseRequest) -> web.StreamResponse:
    path = request.path
    if path == "/big":
        return web.Response(body=BIG)
    if path == "/small":
        return web.Response(body=b"small")
    if path == "/chunked":
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(BIG[:MiB])
        await response.write(BIG[MiB:4 * MiB])
        await response.write_eof()
        return response
    if path == "/empty":
        return web.Response(status=204)
    if path == "/upload":
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.Response(body=f"{size} {digest.hexdigest()}".encode())
    return web.Response(status=404)


def test_detached_get_body_is_spliced_byte_exact_and_the_connection_is_not_reused(run):
    async def main():
        async with objects_pool(read_timeout=0.1, pairs=1) as (pool, peers, [(dst, r)]):
            resp = await pool.request("GET", "/big")
            assert resp.status == 200
            await asyncio.sleep(0.1)  # the parser has buffered (and paused) meanwhile
            detached = resp.detach_body()
            assert detached is not None
            buffered, remaining, fd = detached
            assert len(buffered) + remaining == len(BIG) and remaining > 0
            assert resp.detach_body() is None  # once
            await asyncio.sleep(0.3)  # longer than read_timeout: no timer fires meanwhile
            loop = asyncio.get_running_loop()
            digest = hashlib.sha256()

            async def sink() -> int:
                got = 0
                while got < len(BIG):
                    chunk = await loop.sock_recv(r, MiB)
                    if not chunk:
                        break
                    digest.update(chunk)
                    got += len(chunk)
                return got

            reader = asyncio.ensure_future(sink())
            await loop.sock_sendall(dst, buffered)
            await splice(fd, dst.fileno(), remaining, timeout=5)
            assert await reader == len(BIG) and digest.hexdigest() == sha(BIG)
            assert pool.size == 1 and pool.idle_count == 0
            resp.release()
            assert pool.size == 0 and pool.idle_count == 0  # closed, not pooled
            resp = await pool.request("GET", "/small")
            assert await resp.read() == b"small"
            resp.release()
            assert len(peers) == 2 and pool.idle_count == 1

    run(main)


def test_detach_before_the_body_arrives_leaves_it_all_to_the_splice(run):
    body = pattern(5 * MiB + 3)

    async def late_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        await writer.drain()
        await asyncio.sleep(0.1)  # the client detaches meanwhile
        writer.write(body)
        await writer.drain()
        await reader.read()  # until the client closes

    async def main():
        server = await asyncio.start_server(late_body, "127.0.0.1", 0)
        pool = ConnectionPool(host="127.0.0.1", port=server.sockets[0].getsockname()[1])
        dst, r = tcp_pair()
        loop = asyncio.get_running_loop()
        try:
            resp = await pool.request("GET", "/late")
            buffered, remaining, fd = resp.detach_body()
            assert (buffered, remaining) == (b"", len(body))
            received = asyncio.ensure_future(_read_exactly(loop, r, len(body)))
            await splice(fd, dst.fileno(), remaining, timeout=5)
            assert sha(await received) == sha(body)
            resp.close()
            assert pool.size == 0
        finally:
            dst.close()
            r.close()
            await pool.close()
            server.close()

    run(main)


async def _read_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    parts, got = [], 0
    while got < size:
        chunk = await loop.sock_recv(sock, min(MiB, size - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def test_detach_is_refused_where_the_body_is_not_a_counted_rest(run):
    async def main():
        async with objects_pool() as (pool, _peers, _pairs):
            cases = [("GET", "/small"), ("GET", "/chunked"), ("GET", "/empty"), ("HEAD", "/big")]
            for method, path in cases:
                resp = await pool.request(method, path)
                await asyncio.sleep(0.05)
                assert resp.detach_body() is None, path
                body = await resp.read()  # still readable as usual
                assert body == {"/small": b"small", "/chunked": BIG[:4 * MiB]}.get(path, b"")
                resp.release()
            assert pool.size == 1  # all of them kept alive: nothing was detached
            resp = await pool.request("GET", "/big")
            first = await resp.content.readany()  # the caller started reading: too late
            assert resp.detach_body() is None
            assert first + await resp.read() == BIG
            resp.release()
            resp = await pool.request("GET", "/big")
            resp.release()  # released unread (closed): nothing to detach any more
            assert resp.detach_body() is None

    run(main)


def test_detach_and_splice_body_refused_on_tls(run, tmp_path):
    from test_upstream_client import _self_signed

    async def main():
        cert, key = _self_signed(tmp_path)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        async with objects_pool(ssl_context=server_ctx, scheme="https", verify_tls=False,
                                pairs=1) as (pool, _peers, [(a, _b)]):
            resp = await pool.request("GET", "/big")
            assert resp.detach_body() is None
            assert await resp.read() == BIG
            resp.release()
            with pytest.raises(ValueError, match="TLS"):
                await pool.request("PUT", "/upload", {"Content-Length": "10"},
                                   data=SpliceBody(b"", a.fileno(), 10))

    run(main)


# -- upstream_client: request bodies ---------------------------------------------------------------


@pytest.mark.parametrize("prefix_size", [0, 1000, 3 * MiB])
def test_spliced_upload_is_byte_exact_and_the_connection_is_reused(run, prefix_size):
    total = 32 * MiB

    async def main():
        # The proxy's client writes to `client`; the proxy splices from `near`.
        async with objects_pool(pairs=1) as (pool, peers, [(client, near)]):
            loop = asyncio.get_running_loop()
            prefix = BIG[:prefix_size]
            feeder = asyncio.ensure_future(loop.sock_sendall(client, BIG[prefix_size:total]))
            for _ in range(2):
                body = SpliceBody(prefix, near.fileno(), total - prefix_size, timeout=5)
                resp = await pool.request("PUT", "/upload", {"Content-Length": str(total)}, data=body)
                assert resp.status == 200 and body.complete
                assert await resp.read() == f"{total} {sha(BIG[:total])}".encode()
                resp.release()
                await feeder
                feeder = asyncio.ensure_future(loop.sock_sendall(client, BIG[prefix_size:total]))
            assert len(peers) == 1 and pool.size == 1  # reused after a complete splice
            feeder.cancel()

    run(main)


def test_spliced_upload_with_a_client_that_stops_is_a_body_error(run):
    async def main():
        async with objects_pool(pairs=1) as (pool, _peers, [(client, near)]):
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(client, b"x" * 1000)
            client.shutdown(socket.SHUT_WR)  # 1000 of the 5000 announced
            body = SpliceBody(b"", near.fileno(), 5000, timeout=5)
            with pytest.raises(RequestBodyError) as info:
                await pool.request("PUT", "/upload", {"Content-Length": "5000"}, data=body)
            assert isinstance(info.value.__cause__, SpliceIncomplete) and not body.complete
            assert pool.size == 0

    run(main)


def test_early_answer_stops_the_spliced_upload(run):
    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nConnection: close\r\n\r\ndenied")
        await writer.drain()
        await asyncio.sleep(0.3)  # then stops reading and closes
        writer.close()

    async def main():
        server = await asyncio.start_server(early, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = ConnectionPool(host="127.0.0.1", port=port)
        client, near = tcp_pair()
        loop = asyncio.get_running_loop()

        async def endless() -> None:
            while True:
                await loop.sock_sendall(client, BLOCK)

        feeder = asyncio.ensure_future(endless())
        try:
            body = SpliceBody(b"", near.fileno(), 1 << 40, timeout=5)
            resp = await asyncio.wait_for(pool.request(
                "PUT", "/upload", {"Content-Length": str(1 << 40)}, data=body), 5)
            assert resp.status == 403 and await resp.read() == b"denied"
            assert not body.complete
            resp.release()
            assert pool.size == 0  # not reused
        finally:
            feeder.cancel()
            client.close()
            near.close()
            await pool.close()
            server.close()

    run(main)


def test_spliced_upload_refusals(run):
    async def main():
        pool = ConnectionPool(host="127.0.0.1", port=9)
        try:
            with pytest.raises(ValueError, match="Content-Length"):
                await pool.request("PUT", "/", {}, data=SpliceBody(b"", 0, 10))
            with pytest.raises(ValueError, match="Content-Length"):
                await pool.request("PUT", "/", {"Transfer-Encoding": "chunked"}, data=SpliceBody(b"", 0, 10))
            from inproxy.upstream_client import RequestBodyLengthError
            with pytest.raises(RequestBodyLengthError):
                await pool.request("PUT", "/", {"Content-Length": "11"}, data=SpliceBody(b"x", 0, 9))
            assert pool.size == 0
        finally:
            await pool.close()

    run(main)


def test_spliced_upload_failures_say_which_side_failed(run):
    """The backend resetting mid-body -> ClientOSError; the backend no longer reading ->
    a timeout (SocketTimeoutError); the client stalling -> RequestBodyError."""
    from aiohttp import ClientOSError, SocketTimeoutError

    async def resets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(MiB)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # linger 0: a reset, no answer

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(10)

    async def attempt(handler, *, feed: int, count: int, timeout: float) -> tuple[BaseException, SpliceBody]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        pool = ConnectionPool(host="127.0.0.1", port=server.sockets[0].getsockname()[1])
        client, near = tcp_pair()
        loop = asyncio.get_running_loop()
        feeder = asyncio.ensure_future(loop.sock_sendall(client, pattern(feed)))
        body = SpliceBody(b"", near.fileno(), count, timeout=timeout)
        try:
            with pytest.raises(Exception) as info:
                await pool.request("PUT", "/", {"Content-Length": str(count)}, data=body)
            assert pool.size == 0 and not body.complete
            return info.value, body
        finally:
            feeder.cancel()
            client.close()
            near.close()
            await pool.close()
            server.close()

    async def main():
        error, _ = await attempt(resets, feed=64 * MiB, count=64 * MiB, timeout=5)
        assert isinstance(error, ClientOSError), repr(error)
        error, _ = await attempt(deaf, feed=96 * MiB, count=96 * MiB, timeout=0.3)
        assert isinstance(error, SocketTimeoutError) and isinstance(error, asyncio.TimeoutError), repr(error)
        error, _ = await attempt(deaf, feed=1000, count=5000, timeout=0.3)  # the client stalls
        assert isinstance(error, RequestBodyError) and isinstance(error.__cause__, SpliceTimeout), repr(error)
        assert error.__cause__.source is True

    run(main)
