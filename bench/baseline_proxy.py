"""A minimal aiohttp pass-through proxy: the floor inproxy is compared with.

aiohttp's low-level ``web.Server`` in front, one ``ClientSession`` upstream, nothing
else: no parsing of S3, no auth, no signing, no hooks, no logging.  Request headers
are forwarded as they came (minus Host), the response is streamed back with
``iter_any()``.  It prints the same ready line as proxy_server.py and stops the same
way, so the harness runs it as one more target ("baseline aiohttp").  Against nginx
(which ignores auth) it answers like the real proxy; it is not meant for SeaweedFS.

    python bench/baseline_proxy.py --backend http://127.0.0.1:PORT [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading

import aiohttp
from aiohttp import web
from yarl import URL

_HOP = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "te", "upgrade",
                  "proxy-connection", "trailer"})


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        loop.call_soon_threadsafe(stop.set)
    threading.Thread(target=watch_stdin, daemon=True).start()

    base = args.backend.rstrip("/")
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256, ssl=False), auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=300))

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = request.content.iter_any() if request.body_exists else None
        async with session.request(request.method, URL(base + request.raw_path, encoded=True),
                                   headers=headers, data=body, allow_redirects=False) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP:
                    response.headers.add(k, v)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    runner = web.ServerRunner(web.Server(handle, access_log=None), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port, "pid": os.getpid(), "loop": type(loop).__module__.split(".")[0],
                      "auth": "baseline"}), flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await session.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--uvloop", action="store_true")
    args, _ = p.parse_known_args(argv)  # ignores proxy_server.py's other options
    factory = None
    if args.uvloop:
        import uvloop
        factory = uvloop.new_event_loop
    if hasattr(asyncio, "Runner"):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(args))
    else:
        loop = factory() if factory else asyncio.new_event_loop()
        loop.run_until_complete(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
