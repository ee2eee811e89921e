"""Client, proxy and backend in one event loop over real loopback sockets: CPU and
instructions per small GET of the whole exchange.

``python -m bench.loopback`` starts, in one process: a minimal backend (an
``asyncio.Protocol`` answering every request with nginx's head and a 1 KiB body), the proxy
under test, and ``--connections`` keep-alive clients (``asyncio.Protocol`` + aiohttp's C
response parser) sending the small-GET scenario's request again and again.  Targets:

* ``direct``: clients to the backend (what the client and the backend cost by themselves);
* ``raw``: the raw ``asyncio.Protocol`` pass-through of ``bench/raw_proxy.py`` (the floor);
* ``full``, ``off``: an inproxy ProxyServer (presigned SigV4 verified, cached authorization,
  re-signing; or no auth), as in ``bench/hotpath.py``.

Everything a request costs in user space is in one process, sockets and event loop
included, so ``--callgrind`` (instructions per request: a run of N requests minus a run of
a few, under valgrind) gives a figure that repeats whatever else the machine does; the
proxy's own share is a target's count minus ``direct``'s.

    python -m bench.loopback                          # CPU us per request, every target, uvloop
    python -m bench.loopback --callgrind --only full  # + instructions per request (~2 min a target)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aiohttp.client_exceptions import ClientPayloadError  # noqa: E402
from aiohttp.http_parser import HttpResponseParser  # noqa: E402

from bench import hotpath  # noqa: E402

TARGETS = ("direct", "raw", "off", "full")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Backend(asyncio.Protocol):
    """Answers every request head with ANSWER (requests have no body here)."""

    def connection_made(self, transport) -> None:
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.transport.write(hotpath.ANSWER)


class _Client(asyncio.Protocol):
    """Sends ``request``, waits for the whole answer, sends it again; ``count`` times."""

    def __init__(self, request: bytes, count: int, done: asyncio.Future) -> None:
        self.request, self.count, self.done, self.answered = request, count, done, 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.parser = HttpResponseParser(hotpath._ClientConnection(), asyncio.get_running_loop(), 2 ** 16,
                                         payload_exception=ClientPayloadError, response_with_body=True,
                                         read_until_eof=False, auto_decompress=False)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        messages, _, _ = self.parser.feed_data(data)
        for message, _payload in messages:
            if message.code != 200:
                self.done.set_exception(RuntimeError(f"answer {message.code}"))
                return
            self.answered += 1
            if self.answered < self.count:
                self.transport.write(self.request)
            elif not self.done.done():
                self.done.set_result(None)


async def _target(name: str, backend_port: int) -> tuple[int, bytes, object]:
    """(port, request bytes, what to stop) of a target in front of the backend."""
    loop = asyncio.get_running_loop()
    if name == "direct":
        port = backend_port
    elif name == "raw":
        sys.path.insert(0, os.path.join(_ROOT, "bench"))
        import raw_proxy
        server = await loop.create_server(lambda: raw_proxy.Downstream(("127.0.0.1", backend_port)),
                                          "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    else:
        from inproxy import Backend
        proxy = hotpath._proxy(name)
        proxy.backends._routes["*"] = Backend(f"http://127.0.0.1:{backend_port}",
                                              credentials={"access_key": "bench", "secret_key": "bench"})
        await proxy.start()
        from bench.run import presigned_get
        url = presigned_get(f"http://127.0.0.1:{proxy.port}", hotpath.KEY, hotpath.CLIENT_KEY,
                            hotpath.CLIENT_SECRET)
        target = url.split(str(proxy.port), 1)[1]
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\nUser-Agent: wrk\r\n\r\n"
        return proxy.port, request.encode(), proxy
    request = f"GET /{hotpath.BUCKET}/{hotpath.KEY} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    return port, request.encode(), None


async def run(name: str, requests: int, connections: int, batches: int) -> list[float]:
    """CPU µs per request of each timed batch (none when batches is 0: one untimed batch)."""
    loop = asyncio.get_running_loop()
    backend = await loop.create_server(_Backend, "127.0.0.1", 0)
    port, request, proxy = await _target(name, backend.sockets[0].getsockname()[1])

    async def batch(count: int) -> None:
        dones = [loop.create_future() for _ in range(connections)]
        transports = []
        for done in dones:
            transport, _ = await loop.create_connection(
                lambda done=done: _Client(request, max(1, count // connections), done), "127.0.0.1", port)
            transports.append(transport)
        await asyncio.wait_for(asyncio.gather(*dones), 120)
        for transport in transports:
            transport.close()

    try:
        await batch(connections * 50)  # warm-up: connections, caches, the pool
        if not batches:
            await batch(requests)
            return []
        times = []
        for _ in range(batches):
            start = time.process_time()
            await batch(requests)
            times.append((time.process_time() - start) / requests * 1e6)
        return times
    finally:
        if proxy is not None:
            await proxy.stop()
        backend.close()


def instructions(name: str, requests: int, connections: int, loop_args: list[str]) -> int | None:
    """Instructions per request under callgrind: a run of ``requests`` minus a warm-up-only run."""
    if not shutil.which("valgrind"):
        return None

    def count(n: int) -> int:
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
               "-m", "bench.loopback", "--only", name, "--requests", str(n), "--batches", "0",
               "--connections", str(connections), *loop_args]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=_ROOT,
                             env={**os.environ, "PYTHONHASHSEED": "0"})
        return int(re.search(r"Collected : (\d+)", out.stderr).group(1))

    return (count(connections + requests) - count(connections)) // requests


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=TARGETS, help="one target (default: all)")
    p.add_argument("--requests", type=int, default=3000, help="requests per batch")
    p.add_argument("--batches", type=int, default=3, help="timed batches (0: one untimed batch)")
    p.add_argument("--connections", type=int, default=4, help="keep-alive client connections")
    p.add_argument("--asyncio", action="store_true", help="the default event loop instead of uvloop")
    p.add_argument("--callgrind", action="store_true", help="also count instructions per request (slow)")
    args = p.parse_args(argv)
    if not args.asyncio:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    for name in [args.only] if args.only else TARGETS:
        times = asyncio.run(run(name, args.requests, args.connections, args.batches))
        if times:
            print(f"{name:6s}: {min(times):6.1f} us CPU per request (client, proxy and backend; "
                  f"min of {len(times)} batches of {args.requests})")
        if args.callgrind:
            count = instructions(name, 1000, args.connections, ["--asyncio"] if args.asyncio else [])
            print(f"{name:6s}: {count} instructions per request (callgrind)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
