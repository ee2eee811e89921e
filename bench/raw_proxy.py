"""The leanest Python pass-through: raw asyncio Protocols and aiohttp's C HTTP parsers.

A calibration point for the harness (variants ``raw/asyncio`` and ``raw/uvloop``): what an
HTTP/1.1 reverse proxy costs in Python when it does nothing but parse and relay, with no
aiohttp web server, client session, task per request nor StreamResponse.  Per client
connection: one upstream connection (kept alive, opened when the client connects), requests
parsed by ``HttpRequestParser`` and forwarded one at a time (method, path, headers minus
hop-by-hop, Host set to the backend), responses parsed by ``HttpResponseParser`` and relayed
(status, headers, body).  Bodies are relayed as they arrive, with their Content-Length, or
re-chunked when they have none; flow control both ways (a full write buffer on one side
pauses reading on the other).  No auth, no signing, no S3.  Same CLI and ready line as
baseline_proxy.py; against nginx only.

With ``--auth raw-s3`` (variant ``raw-s3``) it also does the least S3 work the full path asks
for, written straight-line for the benchmark's one request shape: the presigned GET's
signature verified (query parsed, canonical request, SHA-256, HMAC with a cached signing key,
constant-time comparison, expiry) and the upstream request re-signed with SigV4 (Host,
X-Amz-Date, X-Amz-Content-SHA256, Authorization).  No hooks, no authorizer, no objects per
request beyond strings: what a Python proxy with this S3 work cannot go below on this machine.

    python bench/raw_proxy.py --backend http://127.0.0.1:PORT [--uvloop] [--auth raw-s3 --client-key K
        --client-secret S --backend-key K --backend-secret S --region R]
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import collections
import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import time
from urllib.parse import urlsplit

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, HttpResponseParser
from aiohttp.streams import EMPTY_PAYLOAD

_HOP = frozenset({b"host", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade",
                  b"proxy-connection", b"trailer"})
# Bodies are drained right after every feed_data, so a payload never holds more than one socket
# read: its own limit (high water = 2 x) is set out of reach and flow control is done on the
# transports instead.
_LIMIT = 1 << 22
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _NoFlow:
    """What the parsers' payload StreamReaders call back; they never need to pause anything."""

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


_NO_FLOW = _NoFlow()


def _head(first: bytes, raw_headers, payload, extra: bytes, body: bool = True) -> tuple[bytes, bool]:
    """(head bytes, chunked): the message's headers minus hop-by-hop; a body without a
    Content-Length (chunked, or until EOF) is sent on chunked.  ``body``: False for the
    answers that never have one (204, 304), which the parser still gives a payload."""
    parts = [first]
    has_length = False
    for name, value in raw_headers:
        lower = name.lower()
        if lower not in _HOP:
            parts += (name, b": ", value, b"\r\n")
            has_length = has_length or lower == b"content-length"
    chunked = body and payload is not EMPTY_PAYLOAD and not has_length
    parts += (extra, b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n")
    return b"".join(parts), chunked


def _pump(payload, chunked: bool, out: list) -> bool:
    """Move what the parser put in ``payload`` to ``out``; True when the body is complete."""
    data = payload.read_nowait()
    if data:
        out.append(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
    if payload.is_eof():
        if chunked:
            out.append(b"0\r\n\r\n")
        return True
    return False


def _write(transport, out: list) -> None:
    if out:
        transport.write(out[0] if len(out) == 1 else b"".join(out))  # head + small body: one write


class FloorS3:
    """The least S3 work of the full path, straight-line: verify a presigned GET, re-sign it."""

    def __init__(self, client_key: str, client_secret: str, backend_key: str, backend_secret: str,
                 region: str, backend_host: str) -> None:
        self.secrets = {client_key: client_secret}
        self.backend_key, self.backend_secret, self.region = backend_key, backend_secret, region
        self.backend_host = backend_host
        self.keys: dict = {}  # (secret, date, region, service) -> signing key

    def _signing_key(self, secret: str, date: str, region: str, service: str) -> bytes:
        cache_key = (secret, date, region, service)
        key = self.keys.get(cache_key)
        if key is None:
            key = ("AWS4" + secret).encode()
            for part in (date, region, service, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            self.keys[cache_key] = key
        return key

    def rewrite(self, method: str, target: str, host: str) -> bytes | None:
        """The upstream request line and signing headers, or None if the signature is wrong."""
        path, _, query = target.partition("?")
        params = {}
        unsigned = []
        for piece in query.split("&"):
            name, _, value = piece.partition("=")
            params[name] = value
            if name != "X-Amz-Signature":
                unsigned.append(piece)
        try:
            access_key, date, region, service, _ = params["X-Amz-Credential"].replace("%2F", "/").split("/")
            amz_date, signature = params["X-Amz-Date"], params["X-Amz-Signature"]
            start = calendar.timegm((int(amz_date[:4]), int(amz_date[4:6]), int(amz_date[6:8]),
                                     int(amz_date[9:11]), int(amz_date[11:13]), int(amz_date[13:15])))
            if not start - 900 <= time.time() <= start + int(params["X-Amz-Expires"]):
                return None
            secret = self.secrets[access_key]
        except (KeyError, ValueError):
            return None
        unsigned.sort()
        canonical = (f"{method}\n{path}\n{'&'.join(unsigned)}\nhost:{host}\n\n"
                     f"{params['X-Amz-SignedHeaders']}\nUNSIGNED-PAYLOAD")
        to_sign = (f"AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n"
                   f"{hashlib.sha256(canonical.encode()).hexdigest()}")
        key = self._signing_key(secret, date, region, service)
        if not hmac.compare_digest(hmac.new(key, to_sign.encode(), "sha256").hexdigest(), signature):
            return None
        return self._signed(method, path)

    def _signed(self, method: str, path: str) -> bytes:
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        date = amz_date[:8]
        scope = f"{date}/{self.region}/s3/aws4_request"
        names = "host;x-amz-content-sha256;x-amz-date"
        canonical = (f"{method}\n{path}\n\nhost:{self.backend_host}\nx-amz-content-sha256:UNSIGNED-PAYLOAD\n"
                     f"x-amz-date:{amz_date}\n\n{names}\nUNSIGNED-PAYLOAD")
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        key = self._signing_key(self.backend_secret, date, self.region, "s3")
        signature = hmac.new(key, to_sign.encode(), "sha256").hexdigest()
        return (f"{method} {path} HTTP/1.1\r\nX-Amz-Date: {amz_date}\r\n"
                f"X-Amz-Content-SHA256: UNSIGNED-PAYLOAD\r\nAuthorization: AWS4-HMAC-SHA256 "
                f"Credential={self.backend_key}/{scope}, SignedHeaders={names}, Signature={signature}\r\n").encode()


_FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"


class Downstream(asyncio.Protocol):
    """A client connection and its own upstream connection."""

    def __init__(self, backend: tuple[str, int], s3: FloorS3 | None = None) -> None:
        self.backend = backend
        self.s3 = s3
        self.host_line = b"Host: %s:%d\r\n" % (backend[0].encode(), backend[1])
        self.transport: asyncio.Transport | None = None
        self.up: Upstream | None = None
        self.queue: collections.deque = collections.deque()  # parsed, waiting for their turn
        self.sending = None  # (payload, chunked) of the request body being forwarded
        self.in_flight = False  # one request at a time upstream (so HEAD can pick its parser)
        self.up_full = False  # the upstream's write buffer is full
        self.reading = True

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.parser = HttpRequestParser(_NO_FLOW, asyncio.get_running_loop(), _LIMIT,
                                        auto_decompress=False)
        # Requests that come before the upstream connection wait in the queue, which pauses
        # reading from data_received (uvloop ignores a pause here: it starts reading after this).
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(lambda: Upstream(self), *self.backend)
        except OSError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
                self.transport.close()
            return
        if self.transport is None:  # the client left meanwhile
            up.transport.close()
            return
        self.up = up
        if self.queue:  # requests that came before the connection
            out: list = []
            self._forward_next(out)
            _write(up.transport, out)
        self._update_reading()

    def _update_reading(self) -> None:
        want = self.up is not None and not self.queue and not self.up_full
        if want != self.reading and self.transport is not None and not self.transport.is_closing():
            self.reading = want
            (self.transport.resume_reading if want else self.transport.pause_reading)()

    def data_received(self, data: bytes) -> None:
        try:
            messages, _upgraded, _tail = self.parser.feed_data(data)
        except HttpProcessingError:
            self.transport.write(_BAD_REQUEST)
            self.transport.close()
            return
        out: list = []
        if self.sending is not None and _pump(*self.sending, out):
            self.sending = None
        if messages:
            self.queue.extend(messages)
            if not self.in_flight and self.up is not None:
                self._forward_next(out)
            self._update_reading()  # pipelined requests wait for their turn, unread
        if out:
            _write(self.up.transport, out)

    def _forward_next(self, out: list) -> None:
        message, payload = self.queue.popleft()
        if self.s3 is not None:
            first = self.s3.rewrite(message.method, message.path, message.headers.get("Host", ""))
            if first is None:
                self.transport.write(_FORBIDDEN)
                self.transport.close()
                return
        else:
            first = b"%s %s HTTP/1.1\r\n" % (message.method.encode(),
                                             message.path.encode("utf-8", "surrogateescape"))
        head, chunked = _head(first, message.raw_headers, payload, self.host_line)
        out.append(head)
        self.in_flight = True
        self.up.expect(message.method == "HEAD", message.should_close)
        if not _pump(payload, chunked, out):
            self.sending = (payload, chunked)

    def response_done(self, close: bool) -> None:
        """Called by the upstream side once a response was relayed in full."""
        self.in_flight = False
        if close:
            self.transport.close()
        elif self.queue:
            out: list = []
            self._forward_next(out)
            _write(self.up.transport, out)
            self._update_reading()

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.up is not None and self.up.transport is not None:
            self.up.transport.abort()

    # the client's socket buffer is full: stop reading the upstream until it drains
    def pause_writing(self) -> None:
        up = self.up.transport if self.up is not None else None
        if up is not None and not up.is_closing():
            up.pause_reading()

    def resume_writing(self) -> None:
        up = self.up.transport if self.up is not None else None
        if up is not None and not up.is_closing():
            up.resume_reading()


class Upstream(asyncio.Protocol):
    """The upstream connection of one Downstream: parses responses and relays them."""

    def __init__(self, down: Downstream) -> None:
        self.down = down
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        # A HEAD response has a Content-Length but no body: llhttp must be told, per parser.
        self.body_parser = HttpResponseParser(_NO_FLOW, loop, _LIMIT, read_until_eof=True,
                                              auto_decompress=False)
        self.head_parser = None
        self.parser = self.body_parser
        self.receiving = None  # (payload, chunked) of the response body being relayed
        self.close_after = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def expect(self, head: bool, close: bool) -> None:
        if head and self.head_parser is None:
            self.head_parser = HttpResponseParser(_NO_FLOW, asyncio.get_running_loop(), _LIMIT,
                                                  response_with_body=False, auto_decompress=False)
        self.parser = self.head_parser if head else self.body_parser
        self.close_after = close

    def data_received(self, data: bytes) -> None:
        try:
            messages, _upgraded, _tail = self.parser.feed_data(data)
        except HttpProcessingError:
            self.transport.abort()
            return
        self._relay(messages)

    def _relay(self, messages) -> None:
        out: list = []
        done = False
        if self.receiving is not None and _pump(*self.receiving, out):
            self.receiving, done = None, True
        for message, payload in messages:
            first = b"HTTP/1.1 %d %s\r\n" % (message.code,
                                             message.reason.encode("utf-8", "surrogateescape"))
            if message.code < 200:  # 100 Continue and the like: the final answer follows
                out.append(_head(first, message.raw_headers, payload, b"")[0])
                continue
            close = self.close_after or message.should_close
            head, chunked = _head(first, message.raw_headers, payload,
                                  b"Connection: close\r\n" if close else b"",
                                  message.code not in (204, 304))
            self.close_after = close
            out.append(head)
            if _pump(payload, chunked, out):
                done = True
            else:
                self.receiving = (payload, chunked)
        down = self.down
        if down.transport is not None:
            _write(down.transport, out)
            if done:
                down.response_done(self.close_after)

    def connection_lost(self, exc) -> None:
        self.transport = None
        down = self.down
        try:
            self.parser.feed_eof()  # completes a body that runs until EOF
            self._relay(())
        except Exception:  # a body cut short: the client must see it cut, not complete
            if down.transport is not None:
                down.transport.abort()
        if down.transport is not None:
            down.transport.close()  # after what is buffered was sent

    # the upstream's socket buffer is full (a large PUT): stop reading the client
    def pause_writing(self) -> None:
        self.down.up_full = True
        self.down._update_reading()

    def resume_writing(self) -> None:
        self.down.up_full = False
        self.down._update_reading()


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

    url = urlsplit(args.backend)
    backend = (url.hostname or "127.0.0.1", url.port or 80)
    s3 = None
    if args.auth == "raw-s3":
        s3 = FloorS3(args.client_key, args.client_secret, args.backend_key, args.backend_secret,
                     args.region, f"{backend[0]}:{backend[1]}")
    server = await loop.create_server(lambda: Downstream(backend, s3), "127.0.0.1", args.port)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port, "pid": os.getpid(), "loop": type(loop).__module__.split(".")[0],
                      "auth": "raw-s3" if s3 else "raw"}), flush=True)
    try:
        await stop.wait()
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--uvloop", action="store_true")
    p.add_argument("--auth", default="raw", help="raw (no S3 work) or raw-s3 (verify and re-sign)")
    for name in ("--client-key", "--client-secret", "--backend-key", "--backend-secret", "--region"):
        p.add_argument(name, default="")
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
