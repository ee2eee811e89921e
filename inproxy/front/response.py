"""Writing one answer to a client: framing, keep-alive, backpressure."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Iterable

from aiohttp import HttpVersion11

from ..s3.headers import CONNECTION_OPTIONS, RESPONSE_HOP_BY_HOP, connection_tokens
from ..splice import splice

try:  # aiohttp's C head serializer: refuses control characters (header injection)
    from aiohttp.http_writer import _serialize_headers
except ImportError:  # pragma: no cover - an aiohttp without it
    from ..upstream_client import _serialize_py as _serialize_headers

if TYPE_CHECKING:
    from aiohttp import web

    from ..splice import Pipe

    from .protocol import FrontConnection

# Framing and other hop-by-hop headers are the writer's business: whatever a handler or a
# backend says is dropped (RFC 9110 7.6.1), and the writer's own framing is sent.
_FRAMING = frozenset(RESPONSE_HOP_BY_HOP)
# A first body piece up to this size leaves in the same write as the head (one copy, one send).
_JOIN_LIMIT = 64 * 1024


# Never dropped for being named in Connection: the framing and the date are the writer's own.
_NOT_NAMEABLE = frozenset({"content-length", "date"})


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Lines:
    """Header pairs in the shape aiohttp's serializer reads (``items()``)."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def items(self) -> list[tuple[str, str]]:
        return self.pairs


class ResponseWriter:
    """The answer to one request, written once: ``head()``, then ``write()`` pieces, then
    ``finish()``; or ``answer()`` with a whole ``aiohttp.web.Response``.

    The head is held until the first body piece (or ``finish()``), so that a small answer
    leaves in one ``send()``.  A Content-Length given in the head is enforced: more bytes
    raise, and ``finish()`` before all of them raises (a short body must never look
    complete; the caller then breaks the connection).  Without one the body is sent
    chunked (HTTP/1.1) or delimited by closing the connection (HTTP/1.0).  ``write()``
    waits while the client's socket buffer is full.
    """

    __slots__ = ("_conn", "_head_only", "_version", "keep_alive", "_head", "_chunked",
                 "_remaining", "status", "started", "finished")

    def __init__(self, connection: "FrontConnection", head_only: bool, version: Any, *,
                 keep_alive: bool) -> None:
        self._conn = connection
        self._head_only = head_only
        self._version = version
        self.keep_alive = keep_alive
        self._head: bytes | None = None
        self._chunked = False
        self._remaining: int | None = None
        self.status: int | None = None
        self.started = False  # head() was called
        self.finished = False

    def head(self, status: int, reason: str | None, headers: Iterable[tuple[str, str]], *,
             close: bool = False) -> None:
        """Set the status line and headers (sent with the first body bytes)."""
        if self.started:
            raise RuntimeError("the response head is already set")
        # The writer's state changes only once the head is built: a head that cannot be
        # (a CR/LF in a hook's header, a Content-Length that is not a number) raises and
        # leaves it unstarted, so the caller may still send an error answer instead.
        conn = self._conn
        remaining: int | None = None
        chunked = False
        keep_alive = self.keep_alive
        no_body = self._head_only or status < 200 or status in (204, 304)
        pairs: list[tuple[str, str]] = []
        length: str | None = None
        has_date = False
        named: set[str] | None = None  # what a Connection header names: hop-by-hop too
        for name, value in headers:
            lname = name.lower()
            if lname in _FRAMING:
                if lname == "connection" and value.lower() not in CONNECTION_OPTIONS:
                    named = (named or set()) | (connection_tokens(value) - _NOT_NAMEABLE)
                continue
            if lname == "content-length":
                length = value
            elif lname == "date":
                has_date = True
            pairs.append((name, value))
        if named:  # RFC 9110 7.6.1 (rare: only a Connection header naming more than close/keep-alive)
            pairs = [(n, v) for n, v in pairs if n.lower() not in named]
        if not has_date:
            pairs.append(("Date", conn.server.http_date()))
        if no_body:
            remaining = 0
        elif length is not None:
            if not (length.isascii() and length.isdigit()):  # int() would take " 5", "+5", "1_0"
                raise ValueError(f"invalid Content-Length {length!r}")
            remaining = int(length)
        elif self._version >= HttpVersion11:
            chunked = True
            pairs.append(("Transfer-Encoding", "chunked"))
        else:
            close = True  # HTTP/1.0 without a length: the end of the body is the end of the connection
        if close or conn.closing or not conn.request_body_consumed():
            keep_alive = False
        if not keep_alive:
            pairs.append(("Connection", "close"))
        elif self._version < HttpVersion11:
            pairs.append(("Connection", "keep-alive"))
        # aiohttp's serializer raises ValueError on control characters (CR, LF, NUL...): header injection.
        self._head = _serialize_headers(f"HTTP/1.1 {status} {reason or _phrase(status)}", _Lines(pairs))
        self.started = True
        self.status = status
        self._remaining = remaining
        self._chunked = chunked
        self.keep_alive = keep_alive

    def retract(self) -> bool:
        """Forget a head that is still held (nothing of this answer has been sent): the
        caller may then answer something else, an error.  False once anything was sent."""
        if self._head is None or self.finished:
            return False
        self._head = None
        self.started = False
        self.status = None
        return True

    async def write(self, data: bytes) -> None:
        """Send a piece of the body; waits while the client's socket buffer is full."""
        if self.finished:
            raise RuntimeError("the response is finished")
        piece = self._counted(data)
        if not piece:
            return
        self._send(piece)
        await self.drain()

    async def splice_body(self, src_fd: int, count: int, *, timeout: float | None,
                          pipe: "Pipe | None" = None) -> None:
        """Send the next ``count`` body bytes straight from socket ``src_fd`` to the client's
        (:func:`inproxy.splice.splice`, through ``pipe`` if given): what was written before
        leaves first, the bytes never enter Python.  Only with a Content-Length that covers
        them, on a plain-TCP client."""
        remaining = self._remaining
        if self.finished or self._chunked or remaining is None or count > remaining:
            raise ValueError("splicing needs a response with a Content-Length covering the bytes")
        conn = self._conn
        dst_fd = conn.splice_fd()
        if dst_fd is None:
            raise ValueError("the client connection cannot be spliced to (TLS, or closed)")
        self._send(b"")  # the head, if still held
        await conn.drain_empty()
        self._remaining = remaining - count
        await splice(src_fd, dst_fd, count, timeout=timeout, pipe=pipe)

    def end(self, data: bytes) -> bool:
        """The last body piece and the end of the answer in one write (the head too, if it
        is still held), without waiting: True when the caller should await :meth:`drain`.
        A body short of its Content-Length raises before anything is sent."""
        if self.finished:
            raise RuntimeError("the response is finished")
        if self._remaining is not None and len(data) < self._remaining:
            raise self._short(self._remaining - len(data))
        self._send(self._counted(data) + self._tail())
        return self._conn.write_paused

    async def drain(self) -> None:
        """Wait while the client's socket buffer is full."""
        if self._conn.write_paused:
            await self._conn.drain()

    async def finish(self) -> None:
        """End the body (raises when a Content-Length was promised and not met)."""
        if self.finished:
            return
        self._send(self._tail())
        await self.drain()

    def _counted(self, data: bytes) -> bytes:
        """``data`` counted against the Content-Length and framed (a chunk when chunked)."""
        remaining = self._remaining
        if remaining is not None:
            if len(data) > remaining:
                raise ValueError("more body bytes than the Content-Length of the response")
            self._remaining = remaining - len(data)
        if self._chunked and data:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def _tail(self) -> bytes:
        """What ends the body (raises when a Content-Length was promised and not met)."""
        if self._remaining:
            raise self._short(self._remaining)
        self.finished = True
        return b"0\r\n\r\n" if self._chunked else b""

    @staticmethod
    def _short(missing: int) -> ConnectionError:
        return ConnectionError(f"response body ended {missing} bytes short of its Content-Length")

    def _send(self, data: bytes) -> None:
        """Write ``data``, after the head if it is still held (joined when small: one send)."""
        conn = self._conn
        head, self._head = self._head, None
        if head is not None:
            if len(data) <= _JOIN_LIMIT:
                data = head + data
            else:
                conn.write(head)
        if data:
            conn.write(data)

    async def answer(self, response: "web.Response") -> None:
        """Send a whole ``aiohttp.web.Response`` (status, reason, headers, bytes body)."""
        body = response.body
        if body is None:
            body = b""
        elif not isinstance(body, (bytes, bytearray)):
            body = getattr(body, "_value", None)
            if not isinstance(body, (bytes, bytearray)):
                raise TypeError("only responses with a bytes body can be answered")
        headers = [(n, v) for n, v in response.headers.items() if n.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        self.head(response.status, response.reason, headers, close=response.keep_alive is False)
        if not self._head_only and body:
            await self.write(bytes(body))
        await self.finish()

    async def error(self, status: int, body: bytes, headers: Iterable[tuple[str, str]], *,
                    close: bool = False) -> None:
        """Send a whole answer of this status with an XML body."""
        pairs = [("Content-Type", "application/xml"), ("Content-Length", str(len(body))), *headers]
        self.head(status, None, pairs, close=close)
        if not self._head_only and body:
            await self.write(body)
        await self.finish()
