"""The request handler's own CPU per small GET, with the sockets taken out.

``python -m bench.hotpath`` runs a ProxyServer's pipeline (``Pipeline.handle``) on one
presigned ``GET /bench/small-1k`` (the request of the small-GET scenario) again and again in
one event loop: the client's request is parsed once by aiohttp's C parser, the upstream
exchange answers from memory with the head and 1 KiB body nginx would send (parsed by
aiohttp's C response parser on every request, as the lean client does), and the answer is
written to a connection that drops the bytes.  Everything the proxy does in Python for a
request runs (S3 parsing, SigV4 verification, cached authorization, building and signing
the upstream request, relaying the head and body); what does not run is the kernel's work
and the event loop's polling, which the end-to-end scenarios measure.

    python -m bench.hotpath                   # µs per request: full, header, off
    python -m bench.hotpath --callgrind       # also instructions per request (valgrind)

Timings on a shared machine move by +-20%; ``--callgrind`` counts instructions under
valgrind (run 0 and N requests, take the difference), which repeat to within a fraction of
a percent: the figure to compare two versions of the code with.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aiohttp.client_exceptions import ClientPayloadError  # noqa: E402
from aiohttp.http_parser import HttpRequestParser, HttpResponseParser  # noqa: E402

from inproxy import AllowAll, Backend, Identity, ProxyServer  # noqa: E402
from inproxy.front.request import FrontRequest  # noqa: E402
from inproxy.upstream_client import UpstreamResponse  # noqa: E402

# What nginx answers for the 1 KiB object of the small-GET scenario.
ANSWER = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 04:00:00 GMT\r\n"
          b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
          b"Last-Modified: Fri, 27 Nov 2026 03:00:00 GMT\r\nConnection: keep-alive\r\n"
          b"ETag: \"6565-400\"\r\nAccept-Ranges: bytes\r\n\r\n" + b"x" * 1024)
CLIENT_KEY, CLIENT_SECRET, BUCKET, KEY = "bench-client", "bench-client-secret", "bench", "small-1k"
# full: presigned URL verified, cached authorization, re-signed; header: the same with the
# signature in headers (as SDKs sign); off: no verification, AllowAll, re-signed.
AUTHS = ("full", "header", "off")


class _Server:
    def http_date(self) -> str:
        return "Fri, 27 Nov 2026 04:00:00 GMT"


class _ClientConnection:
    """The FrontConnection surface a request and its writer use; written bytes are dropped."""

    remote, local_host, secure, transport = "127.0.0.1", "127.0.0.1:9000", False, None
    closing = write_paused = False
    server = _Server()

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def request_body_consumed(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


class _BackendConnection(_ClientConnection):
    def response_done(self, response: UpstreamResponse, keep: bool) -> None:
        pass


class _MemoryPool:
    """In place of the proxy's UpstreamPool: the request head is serialised as the lean
    client would, the answer parsed from ANSWER by aiohttp's C parser."""

    def __init__(self, real) -> None:
        self._real = real
        self._backend_conn = _BackendConnection()

    def send(self, backend, upstream, data=None):
        return self.request(backend, upstream.method, upstream.target, headers=upstream.headers, data=data)

    async def request(self, backend, method, url, headers=None, data=None) -> UpstreamResponse:
        from inproxy.upstream_client import _serialize
        _serialize(f"{method} {url} HTTP/1.1", headers)
        parser = HttpResponseParser(self._backend_conn, asyncio.get_running_loop(), 2 ** 16,
                                    payload_exception=ClientPayloadError,
                                    response_with_body=method != "HEAD", read_until_eof=True,
                                    auto_decompress=False)
        (message, payload), = parser.feed_data(ANSWER)[0]
        return UpstreamResponse(self._backend_conn, message, payload)

    def __getattr__(self, name):
        return getattr(self._real, name)


def _proxy(auth: str) -> ProxyServer:
    backend = Backend("http://127.0.0.1:9", credentials={"access_key": "bench", "secret_key": "bench"})
    if auth in ("full", "header"):
        return ProxyServer(backend, keys={CLIENT_KEY: CLIENT_SECRET}, cache_decisions=60,
                           authorizer=lambda access: access.bucket == BUCKET and access.identity.name is not None)
    identity = Identity(name="bench", method="bench")
    return ProxyServer(backend, authenticator=lambda ctx: identity, authorizer=AllowAll())


def _request_bytes(auth: str) -> bytes:
    """The small-GET request: presigned by botocore (``full``, ``off``: what the harness's wrk
    sends), or signed in headers by botocore's S3SigV4Auth as the SDKs send it (``header``)."""
    if auth != "header":
        from bench.run import presigned_get
        url = presigned_get("http://127.0.0.1:9000", KEY, CLIENT_KEY, CLIENT_SECRET)
        target = url.split("9000", 1)[1]
        return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nUser-Agent: wrk\r\n\r\n".encode()
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    request = AWSRequest(method="GET", url=f"http://127.0.0.1:9000/{BUCKET}/{KEY}",
                         headers={"User-Agent": "Boto3/1.43 md/Botocore#1.43 ua/2.1 os/linux",
                                  "Accept-Encoding": "identity"})
    S3SigV4Auth(Credentials(CLIENT_KEY, CLIENT_SECRET), "s3", "us-east-1").add_auth(request)
    lines = [f"GET /{BUCKET}/{KEY} HTTP/1.1", "Host: 127.0.0.1:9000",
             *(f"{name}: {value}" for name, value in request.headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def run(auth: str, requests: int, batches: int) -> list[float]:
    """µs per request of each batch (after a warm-up); with batches=0 just ``requests`` requests."""
    pipeline = _proxy(auth).pipeline
    pipeline.pool = _MemoryPool(pipeline.pool)
    conn = _ClientConnection()
    parser = HttpRequestParser(conn, asyncio.get_running_loop(), 2 ** 16)
    (message, payload), = parser.feed_data(_request_bytes(auth))[0]
    for _ in range(300):
        request = FrontRequest(conn, message, payload)
        if await pipeline.handle(request) is not None or not request.writer.finished:
            raise SystemExit(f"the handler did not answer 200: see the log ({auth})")
    if not batches:
        for _ in range(requests):
            await pipeline.handle(FrontRequest(conn, message, payload))
        return []
    results = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(requests):
            await pipeline.handle(FrontRequest(conn, message, payload))
        results.append((time.perf_counter() - start) / requests * 1e6)
    return results


def instructions(auth: str, requests: int) -> int | None:
    """Instructions per request under callgrind: a run of ``requests`` minus a run of none."""
    if not shutil.which("valgrind"):
        return None

    def count(n: int) -> int:
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
               "-m", "bench.hotpath", "--only", auth, "--requests", str(n), "--batches", "0"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return int(re.search(r"Collected : (\d+)", out.stderr).group(1))

    return (count(requests) - count(0)) // requests


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=AUTHS, help="one auth mode (default: all)")
    p.add_argument("--requests", type=int, default=2000, help="requests per batch")
    p.add_argument("--batches", type=int, default=7, help="timed batches (0: run once, untimed)")
    p.add_argument("--callgrind", action="store_true", help="also count instructions per request (slow)")
    args = p.parse_args(argv)
    for auth in [args.only] if args.only else AUTHS:
        times = asyncio.run(run(auth, args.requests, args.batches))
        if times:
            print(f"{auth:6s}: {min(times):6.1f} us/request (min of {len(times)} batches of {args.requests}),"
                  f" median {statistics.median(times):6.1f}")
        if args.callgrind:
            print(f"{auth:6s}: {instructions(auth, 500)} instructions/request (callgrind, 500 requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
