"""Run one inproxy ProxyServer in its own process, for the benchmark harness.

Prints one JSON line ``{"port": ..., "pid": ..., "loop": ...}`` on stdout once it
listens (127.0.0.1 only), then serves until SIGTERM/SIGINT or until its stdin
closes (so it never outlives the harness).  ``--cprofile FILE`` profiles the
whole serving period with cProfile and dumps the stats at exit.

    python bench/proxy_server.py --backend http://127.0.0.1:8333 \
        --backend-key K --backend-secret S --auth full --client-key CK --client-secret CS [--uvloop]

Auth modes:
  full  SigV4 verification of the client (static keys) + a function authorizer with
        cached decisions (--cache-decisions seconds) + re-signing for the backend.
  off   a trivial authenticator function (everyone is "bench") + AllowAll; the
        request is still re-signed for the backend (the backend needs it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading

# Runnable as a file (python bench/proxy_server.py) from anywhere.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from inproxy import AllowAll, Backend, Identity, ProxyServer  # noqa: E402

BENCH_IDENTITY = Identity(name="bench", method="bench")


def _off_authenticator(ctx):
    return BENCH_IDENTITY


def _make_authorizer(bucket: str):
    # A realistic-but-cheap policy function: one bucket, read and write.
    def authorize(access) -> bool:
        return access.bucket == bucket and access.identity.name is not None
    return authorize


def build_proxy(args: argparse.Namespace) -> ProxyServer:
    backend = Backend(args.backend, region=args.region,
                      credentials={"access_key": args.backend_key, "secret_key": args.backend_secret})
    if args.auth == "full":
        return ProxyServer(backend, keys={args.client_key: args.client_secret},
                           authorizer=_make_authorizer(args.bucket),
                           cache_decisions=args.cache_decisions, host="127.0.0.1", port=args.port)
    if args.auth == "off":
        return ProxyServer(backend, authenticator=_off_authenticator, authorizer=AllowAll(),
                           host="127.0.0.1", port=args.port)
    raise SystemExit(f"unknown --auth {args.auth!r}")


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # Stop when the parent goes away (stdin reaches EOF).
    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        loop.call_soon_threadsafe(stop.set)
    threading.Thread(target=watch_stdin, daemon=True).start()

    proxy = build_proxy(args)
    await proxy.start()
    print(json.dumps({"port": proxy.port, "pid": os.getpid(), "loop": type(loop).__module__.split(".")[0],
                      "auth": args.auth}), flush=True)
    try:
        await stop.wait()
    finally:
        await proxy.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", required=True, help="backend endpoint, http://127.0.0.1:PORT")
    p.add_argument("--backend-key", default="bench")
    p.add_argument("--backend-secret", default="bench")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--auth", choices=("full", "off"), default="full")
    p.add_argument("--client-key", default="bench-client")
    p.add_argument("--client-secret", default="bench-client-secret")
    p.add_argument("--bucket", default="bench", help="the bucket the authorizer allows")
    p.add_argument("--cache-decisions", type=float, default=60.0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--uvloop", action="store_true", help="run the proxy's event loop on uvloop")
    p.add_argument("--cprofile", metavar="FILE", help="profile with cProfile, dump stats to FILE at exit")
    args = p.parse_args(argv)

    loop_factory = None
    if args.uvloop:
        import uvloop
        loop_factory = uvloop.new_event_loop

    def run() -> None:
        if hasattr(asyncio, "Runner"):  # Python 3.11+
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(serve(args))
            return
        loop = loop_factory() if loop_factory else asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(serve(args))
        finally:
            loop.close()

    if args.cprofile:
        import cProfile
        profiler = cProfile.Profile()
        try:
            profiler.runcall(run)
        finally:
            profiler.dump_stats(args.cprofile)
    else:
        run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
