"""A lean keep-alive HTTP/1.1 client for the proxy's requests to its backends.

The proxy needs a small part of what ``aiohttp.ClientSession`` does: send a request head
exactly as given (already encoded, already signed), stream a body up with backpressure,
stream the answer back, keep connections alive.  This module does only that, on one
``asyncio.Protocol`` per connection and aiohttp's C HTTP response parser (llhttp), so the
response side (``headers``, ``content``) is made of the same objects aiohttp hands out.

One :class:`ConnectionPool` per backend per proxy::

    pool = ConnectionPool(host="s3.example.com", port=443, tls=True, ...)
    resp = await pool.request("GET", "https://s3.example.com/bucket/key", headers={...})
    async for chunk in resp.content.iter_any(): ...
    resp.release()            # back to the pool when the body was read to its end

Behaviour, in short:

* the request line and header lines are sent exactly as given: names as given, the target
  never re-quoted, nothing added (no User-Agent, Accept, Connection); only a missing Host
  is filled in.  A body needs a Content-Length given by the caller (or a Transfer-Encoding:
  chunked the caller asked for, then each piece is framed here); more or fewer bytes than
  the Content-Length fail the request instead of desynchronising the connection.
* the head and a small first body piece leave in one ``transport.write``; each further
  piece is written and, when the transport's buffer is full, drained before the next is
  pulled.  An answer that arrives before the body is sent (an early error) ends the upload.
* responses: 1xx skipped; HEAD, 204 and 304 have no body; the body is buffered up to a
  high-water mark (``read_limit`` * 2), then the socket stops being read until the
  consumer catches up.
* timeouts without a timer per read: each connection has at most one timer handle, armed
  at most every ``min(read_timeout, keepalive_timeout)`` seconds and re-armed lazily; it
  checks the time of the last read against ``read_timeout`` (only while an answer is
  awaited and reading is not paused by our own backpressure) and the idle time against
  ``keepalive_timeout``.
* a kept-alive connection that the server closed before answering (stale keep-alive) is
  retried once on a new connection if nothing of the body beyond its first piece was
  pulled (that piece is kept and sent again), for idempotent methods only (as aiohttp:
  GET, HEAD, PUT, DELETE, OPTIONS, TRACE; never POST).
* errors are aiohttp's exception classes: cannot connect -> :class:`UpstreamConnectError`
  (a ``ClientOSError``), connect timeout -> ``ConnectionTimeoutError``, read timeout ->
  ``SocketTimeoutError`` (both ``asyncio.TimeoutError``), closed before answering ->
  ``ServerDisconnectedError`` / ``ClientOSError``, body cut -> ``ClientPayloadError``,
  an unparsable answer -> :class:`UpstreamProtocolError`, the caller's body iterator
  raising -> :class:`RequestBodyError` (the original as ``__cause__``).

Zero-copy bodies with Linux ``splice(2)`` (:mod:`inproxy.splice`), plain TCP only:

* download: ``resp.detach_body()`` hands the rest of a Content-Length body over to the
  caller as ``(bytes already received, bytes still to come, socket fd)``; the connection
  then stops reading for good, has no read timeout (the splice has its own) and is closed,
  never pooled, by ``release()``/``close()``.
* upload: ``data=SpliceBody(prefix, fd, remaining, timeout)`` sends ``prefix`` with the
  head, drains the transport to empty, then splices ``remaining`` bytes from ``fd`` (the
  client's socket) to the backend's socket, watching for an early answer meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl as ssl_module
from typing import Any, AsyncIterable, Awaitable, Callable, Mapping

from aiohttp.client_exceptions import (
    ClientConnectionError,
    ClientOSError,
    ClientPayloadError,
    ConnectionTimeoutError,
    ServerDisconnectedError,
    SocketTimeoutError,
)
from aiohttp.http_parser import HttpResponseParser
from aiohttp.streams import EMPTY_PAYLOAD

from . import splice as _splice
from . import tcp

try:  # aiohttp's own (C) head serializer: UTF-8, refuses control characters (header injection)
    from aiohttp.http_writer import _serialize_headers
except ImportError:  # pragma: no cover - an aiohttp without it
    _serialize_headers = None

__all__ = [
    "ConnectionPool", "UpstreamResponse", "UpstreamConnectError", "UpstreamProtocolError",
    "RequestBodyError", "RequestBodyLengthError", "SpliceBody",
]

KiB, MiB = 1024, 1024 * 1024
# StreamReader low-water mark: reading pauses above 2x this, resumes below it.
DEFAULT_READ_LIMIT = 1 * MiB
# A first body piece up to this size leaves in the same write as the head.
_JOIN_LIMIT = 64 * KiB
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Retried after a stale keep-alive connection (as aiohttp does): never POST or PATCH.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Informational (1xx) answers accepted before the final one: a few are normal (100 Continue,
# 103 Early Hints), an endless stream of them is a backend holding the request.
_MAX_INFORMATIONAL = 16


class UpstreamConnectError(ClientOSError):
    """The backend could not be reached (refused, unresolvable, TLS handshake failed)."""


class UpstreamProtocolError(ClientConnectionError):
    """The backend's answer is not valid HTTP/1.1."""


class RequestBodyError(ClientConnectionError):
    """The request body iterator raised; the original exception is ``__cause__``."""


class RequestBodyLengthError(ClientConnectionError):
    """The request body was longer or shorter than the Content-Length the caller gave."""


class SpliceBody:
    """A request body for ``ConnectionPool.request(data=...)``: ``prefix`` (bytes already
    read from the client) then ``remaining`` bytes spliced from socket ``fd`` (the client's)
    to the backend's socket, zero-copy (:func:`inproxy.splice.splice`; plain-TCP backends
    only).  ``timeout``: seconds without progress (None: none).  The caller gives the
    Content-Length (``len(prefix) + remaining``) in the headers and keeps the transport
    owning ``fd`` paused for reading with an empty write buffer until ``request`` returns.

    ``complete`` tells the caller afterwards whether all ``remaining`` bytes were taken
    from ``fd``: False after an early answer or a failure, and then the client's socket is
    somewhere inside the body (bytes may have been read and dropped): close it.  ``pipe``:
    the :class:`inproxy.splice.Pipe` to splice through (None: one is made for the splice);
    it is empty afterwards only when ``complete``."""

    __slots__ = ("prefix", "fd", "remaining", "timeout", "complete", "pipe")

    def __init__(self, prefix: bytes, fd: int, remaining: int,
                 timeout: float | None = 60.0, pipe: "_splice.Pipe | None" = None) -> None:
        if remaining < 0:
            raise ValueError(f"remaining must be >= 0, got {remaining}")
        self.prefix = prefix
        self.fd = fd
        self.remaining = remaining
        self.timeout = timeout
        self.complete = False
        self.pipe = pipe

    def __repr__(self) -> str:
        return f"<SpliceBody prefix={len(self.prefix)} fd={self.fd} remaining={self.remaining}>"


def _serialize_py(status_line: str, headers: Any) -> bytes:
    parts = [status_line]
    for name, value in headers.items():
        parts.append(f"{name}: {value}")
    text = "\r\n".join(parts)
    if any(ord(c) < 0x20 and c != "\t" or c == "\x7f" for c in text.replace("\r\n", "")):
        raise ValueError("Forbidden control character detected in headers. "
                         "Potential header injection attack.")
    return (text + "\r\n\r\n").encode("utf-8", "surrogateescape")


_serialize = _serialize_headers or _serialize_py


class UpstreamResponse:
    """The backend's answer: ``status``, ``reason``, ``headers`` (a read-only
    ``CIMultiDictProxy``), ``content`` (aiohttp's ``StreamReader``: ``iter_any()``,
    ``read()``...).  ``release()`` returns the connection to the pool when the body was
    received to its end (else closes it); ``close()`` closes it.  Either is idempotent."""

    __slots__ = ("status", "reason", "headers", "raw_headers", "version", "content", "_connection")

    def __init__(self, connection: "_Connection", message: Any, payload: Any) -> None:
        self.status: int = message.code
        self.reason: str = message.reason
        self.headers = message.headers
        self.raw_headers = message.raw_headers
        self.version = message.version
        self.content = payload
        self._connection: _Connection | None = connection

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} {self.reason}>"

    async def read(self) -> bytes:
        return await self.content.read()

    def detach_body(self) -> tuple[bytes, int, int] | None:
        """Hand the rest of the body over to the caller, to splice it from the socket.

        Returns ``(buffered, remaining, fd)``: the body bytes already received (send them
        first), the count still to come on socket ``fd``; or None when that is not
        possible or not worth it (TLS, no Content-Length, chunked, no body, body partly
        read already, whole body already received, released, failed): read ``content``
        as usual then.  After a detach, ``content`` must not be read; the connection's
        transport stays paused for reading, its read timeout is off (splice with a
        timeout), and ``release()``/``close()`` close it (never pooled): call one of
        them once the splice ended, never before (that would close ``fd``)."""
        connection = self._connection
        return None if connection is None else connection.detach(self)

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.response_done(self, keep=True)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.response_done(self, keep=False)

    async def __aenter__(self) -> "UpstreamResponse":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


def _payload_complete(payload: Any) -> bool:
    return payload is EMPTY_PAYLOAD or (payload.is_eof() and payload.exception() is None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: the protocol the transport calls, and the per-request
    state of the exchange on it.  The pool's ``request`` drives it."""

    __slots__ = (
        "pool", "key", "transport", "_loop", "_parser", "_body_parser", "_head_parser",
        "_response", "_head_waiter", "_drain_waiter", "_write_paused", "_reading_paused",
        "_closed", "_error", "busy", "_waiting", "got_data", "body_taken", "_informational", "_reusable",
        "served", "_last_rx", "_idle_since", "_timer", "_detached",
    )

    def __init__(self, pool: "ConnectionPool", key: tuple) -> None:
        self.pool = pool
        self.key = key
        self._loop = pool._loop
        self.transport: asyncio.Transport | None = None
        self._parser: Any = None  # the parser of the exchange in progress, None when idle
        self._body_parser: Any = None
        self._head_parser: Any = None  # for answers to HEAD (no body whatever they announce)
        self._response: UpstreamResponse | None = None
        self._head_waiter: asyncio.Future | None = None
        self._drain_waiter: asyncio.Future | None = None
        self._write_paused = False
        self._reading_paused = False
        self._closed = False  # closing or closed, out of the pool's count
        self._error: BaseException | None = None  # what ended the current exchange
        self.busy = True  # in use by a request (a new connection is made for one)
        self._waiting = False  # the request is sent: the read timeout runs
        self.got_data = False  # bytes of an answer arrived for the current request
        # Body bytes were taken from the caller that cannot be sent again (a second piece of
        # an iterable, a started splice): a failure then is not retried on a new connection.
        self.body_taken = False
        self._informational = 0  # 1xx answers to the current request
        self._reusable = True
        self.served = 0  # answers completed on this connection
        self._last_rx = 0.0
        self._idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._detached = False  # the body was handed over (detach): reading stays off

    # -- asyncio.Protocol ------------------------------------------------------------------

    @property
    def connected(self) -> bool:  # for aiohttp's StreamReader
        return self.transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        tcp.no_delay(transport)
        self._timer = self._loop.call_at(self._loop.time() + self.pool._period, self._on_timer)

    def data_received(self, data: bytes) -> None:
        previous_rx, self._last_rx = self._last_rx, self._loop.time()
        parser = self._parser
        if parser is None:  # bytes while idle: the server broke the protocol
            if data:
                self._reusable = False
                self._abort()
            return
        if data:
            if self._detached:  # cannot happen: the transport is paused for good
                self._lost_detached()
                return
            self.got_data = True
        try:
            messages, _upgraded, _tail = parser.feed_data(data)
        except Exception as exc:
            self._protocol_error(exc)
            return
        if messages:
            for message, payload in messages:
                self._on_message(message, payload)
            if self._response is None and self._informational:
                self._last_rx = previous_rx  # 1xx answers are no progress towards the answer

    def eof_received(self) -> None:
        return None  # the transport closes; connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        error: BaseException | None = None
        parser = self._parser
        response = self._response
        if parser is not None:
            if exc is not None and response is not None and not _payload_complete(response.content):
                # A reset is no end of a body, not even of one that runs until the connection
                # closes: feeding the EOF would make it look complete.
                error = ClientPayloadError(f"Response payload is not completed: {exc!r}")
            else:
                try:
                    parser.feed_eof()
                except Exception as underlying:
                    error = ClientPayloadError(f"Response payload is not completed: {underlying!r}"
                                               + (f". {exc!r}" if exc is not None else ""))
        if self.busy and self._error is None:
            if response is None:
                if isinstance(exc, OSError):
                    error = ClientOSError(*exc.args)
                else:
                    error = ServerDisconnectedError()
            elif response.content is not EMPTY_PAYLOAD and not response.content.is_eof():
                error = error or ClientPayloadError("Response payload is not completed: connection lost")
            if error is not None:
                error.__cause__ = exc
                self._fail(error)
        self._reusable = False
        self.transport = None
        self._wake_drain(None)
        self._cancel_timer()
        self._forget()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain(None)

    # aiohttp's StreamReader calls these for flow control of the response body.
    def pause_reading(self) -> None:
        parser = self._parser
        if parser is not None and not self._detached:  # (detach flushes the parser's tail)
            parser.pause_reading()  # llhttp stops after this piece; the rest stays in its tail
        if not self._reading_paused:
            self._reading_paused = True
            tcp.pause_reading(self.transport)

    def resume_reading(self, resume_parser: bool = True) -> None:
        if not self._reading_paused or self._detached:
            return  # the StreamReader calls this after every read: keep it cheap
        self._reading_paused = False
        if resume_parser and self._parser is not None:
            self.data_received(b"")  # what llhttp kept back when it paused
        else:
            self._last_rx = self._loop.time()
        if not self._reading_paused:
            tcp.resume_reading(self.transport)

    # -- an exchange -----------------------------------------------------------------------

    def begin(self, head_only: bool) -> None:
        self._response = None
        self._error = None
        self.got_data = False
        self.body_taken = False
        self._informational = 0
        self._waiting = False
        if head_only:
            parser = self._head_parser
            if parser is None:
                parser = self._head_parser = self.pool._new_parser(self, False)
        else:
            parser = self._body_parser
            if parser is None:
                parser = self._body_parser = self.pool._new_parser(self, True)
        self._parser = parser

    def sent(self) -> None:
        """The whole request is out: the read timeout runs from now."""
        self._waiting = True
        self._last_rx = self._loop.time()

    def head_future(self) -> "asyncio.Future[UpstreamResponse]":
        """A future for the answer's head (await it only when ``response`` is None)."""
        if self._error is not None:
            raise self._error
        waiter = self._head_waiter = self._loop.create_future()
        return waiter

    @property
    def response(self) -> UpstreamResponse | None:
        return self._response

    async def drain(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._write_paused or self._response is not None or self.transport is None:
            return
        waiter = self._drain_waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None
        if self._error is not None:
            raise self._error

    def failed(self) -> BaseException | None:
        """Why the exchange cannot go on (the connection is gone or broken), if it cannot."""
        if self._error is not None:
            return self._error
        if self._closed:
            return ServerDisconnectedError()
        return None

    def answered(self) -> bool:
        return self._response is not None

    def answered_or_raise(self) -> bool:
        """While a body is being sent: True when an answer arrived (the rest is not wanted);
        raises what broke the connection, if anything did."""
        if self._response is not None:
            return True
        error = self.failed()
        if error is not None:
            raise error
        return False

    def stale(self) -> bool:
        """A kept-alive connection the server dropped before answering this request."""
        return self.served > 0 and not self.got_data

    def response_done(self, response: UpstreamResponse, keep: bool) -> None:
        if self._response is not response:
            return
        if self._detached:  # the body went around the parser: never reuse
            self._response = None
            self._parser = None  # (connection_lost must not feed it an EOF mid-body)
            (self.close if keep else self._abort)()
            return
        if (keep and self._reusable and not self._closed and self._error is None
                and _payload_complete(response.content)):
            self._response = None
            # New parsers for the next exchange: bytes the backend sent after this answer
            # (the start of another, in the same read) would sit in this one's and be read
            # as the next request's answer.  (~1.5 us per request.)
            self._parser = self._body_parser = self._head_parser = None
            self._waiting = False
            self.busy = False
            self.served += 1
            self._idle_since = self._loop.time()
            self.pool._release(self)
        else:
            self._response = None
            if keep and _payload_complete(response.content):
                self.close()  # complete, but the server or the exchange ends the connection
            else:
                self._abort()

    def not_reusable(self) -> None:
        self._reusable = False

    # -- zero-copy bodies (inproxy.splice) ---------------------------------------------------

    def _plain_socket_fd(self) -> int | None:
        """The socket's fd when the connection is plain TCP (splice cannot see through TLS)."""
        transport = self.transport
        if (transport is None or self.key[2] or not _splice.available()
                or transport.get_extra_info("sslcontext") is not None):
            return None
        sock = transport.get_extra_info("socket")
        return None if sock is None else sock.fileno()

    def detach(self, response: UpstreamResponse) -> tuple[bytes, int, int] | None:
        """See :meth:`UpstreamResponse.detach_body`."""
        if (self._response is not response or self._closed or self._error is not None
                or self._detached or self._parser is None):
            return None
        content = response.content
        if content is EMPTY_PAYLOAD or content.is_eof() or content.exception() is not None:
            return None
        headers = response.headers
        raw_length = headers.get("Content-Length")
        if raw_length is None or headers.get("Transfer-Encoding") is not None:
            return None  # chunked or until EOF: the end is in the framing, not a count
        try:
            length = int(raw_length)
        except ValueError:
            return None
        # Partly read by the caller, or a read in progress: the caller goes on reading.
        if content.total_bytes != content._size or getattr(content, "_waiter", None) is not None:
            return None
        fd = self._plain_socket_fd()
        if fd is None:
            return None
        reusable = self._reusable
        # From here the transport stays paused: nothing but the splice reads the socket.
        self._detached = True
        self._reusable = False
        if not self._reading_paused:
            self._reading_paused = True
            try:
                self.transport.pause_reading()  # type: ignore[union-attr]
            except (AttributeError, NotImplementedError, RuntimeError):
                self._detached, self._reusable, self._reading_paused = False, reusable, False
                return None
        # What llhttp kept back when it paused (the tail of the last read) goes into the
        # payload now, without pausing again (pause_reading leaves the parser alone).
        self.data_received(b"")
        if self._error is not None or self._closed:
            return None  # the tail was invalid: content holds the error
        if content.is_eof() or length <= content.total_bytes:
            # The whole body was received after all: undo, the caller reads it as usual.
            self._detached, self._reusable = False, reusable
            self.resume_reading(resume_parser=False)
            return None
        buffered = content.read_nowait(-1)  # (its resume_reading call is ignored: detached)
        return buffered, length - content.total_bytes, fd

    def _lost_detached(self) -> None:
        """Bytes reached the protocol after a detach: the splice would miss them.  Shut the
        socket down so the splice fails instead of delivering a body with a hole."""
        self._reusable = False
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            try:  # on a duplicate: uvloop's socket objects cannot shut down
                with socket.fromfd(sock.fileno(), sock.family, sock.type) as dup:
                    dup.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._abort()

    async def drain_empty(self) -> None:
        """Until the transport's write buffer is empty (all handed to the kernel), an answer
        arrives or the connection fails: a splice writes behind the transport's back."""
        transport = self.transport
        while (transport is not None and transport.get_write_buffer_size()
               and self._response is None):
            if self._error is not None:
                raise self._error
            low, high = transport.get_write_buffer_limits()
            # With a high-water mark of 0 the transport pauses us now and resumes us only
            # once its buffer is empty.
            transport.set_write_buffer_limits(high=0, low=0)
            try:
                if self._write_paused:
                    await self.drain()
                else:  # pragma: no cover - a transport that did not pause us: poll, never spin
                    await asyncio.sleep(0.001)
            finally:
                if self.transport is not None and not transport.is_closing():
                    transport.set_write_buffer_limits(high=high, low=low)
            transport = self.transport
        if self._error is not None:
            raise self._error
        if transport is None:
            raise ServerDisconnectedError()

    async def splice_up(self, body: SpliceBody) -> None:
        """Splice ``body.remaining`` bytes from ``body.fd`` to this connection's socket while
        the response side keeps reading; an answer arriving meanwhile stops it (the upload
        is abandoned, not an error).  ``body.complete`` tells whether all was sent.  The
        write buffer must be empty (``drain_empty``)."""
        fd = self._plain_socket_fd()
        if fd is None:
            raise self.failed() or ServerDisconnectedError()
        # A task, so that an answer or a failure of the connection can stop it.
        task = self._loop.create_task(
            _splice.splice(body.fd, fd, body.remaining, timeout=body.timeout, pipe=body.pipe))
        try:
            while not task.done() and self._quiet():
                await self._event_or(task)
            error = task.exception() if task.done() and not task.cancelled() else None
            if (isinstance(error, _splice.SpliceConnectionError) and not error.source
                    and self._quiet()):
                # The backend broke the upload: its answer (a 4xx, then a reset) may still
                # be in the receive queue.  Give the transport a moment to read it.
                await self._event_or(None, timeout=1.0)
        finally:
            if not task.done():
                task.cancel()  # its finally unregisters the fds and closes its duplicates
                await asyncio.wait((task,))
        error = None if task.cancelled() else task.exception()
        body.complete = not task.cancelled() and error is None
        if self._response is not None:
            return  # an early answer: whatever became of the upload
        if self._error is not None:
            raise self._error
        if error is None:
            return
        if isinstance(error, _splice.SpliceTimeout) and not error.source:
            raise SocketTimeoutError(
                "Timeout on writing the request body to the backend") from error
        if isinstance(error, _splice.SpliceConnectionError) and not error.source:
            raise ClientOSError(error.errno, f"the backend broke the upload: {error}") from error
        raise RequestBodyError(f"the request body failed: {error!r}") from error

    def _quiet(self) -> bool:
        """No answer, no failure, still connected."""
        return self._response is None and self._error is None and self.transport is not None

    async def _event_or(self, task: "asyncio.Task | None", timeout: float | None = None) -> None:
        """Until ``task`` ends, or an answer, a failure or a write resumption (the events
        that wake ``_drain_waiter``) arrives, or ``timeout``."""
        waiter = self._drain_waiter = self._loop.create_future()
        try:
            await asyncio.wait((waiter,) if task is None else (task, waiter), timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            if self._drain_waiter is waiter:
                self._drain_waiter = None
            if not waiter.done():
                waiter.cancel()
            elif not waiter.cancelled():
                waiter.exception()  # retrieved: self._error tells it

    # -- internals -------------------------------------------------------------------------

    def _on_message(self, message: Any, payload: Any) -> None:
        code = message.code
        if code < 200:
            if code == 101:
                self._protocol_error(ValueError("unexpected 101 Switching Protocols"))
                return
            # 100 Continue, 103 Early Hints: informational, skipped.  Bounded: a backend must
            # not hold a request forever with them (they are no progress for the read timeout).
            self._informational += 1
            if self._informational > _MAX_INFORMATIONAL:
                self._protocol_error(ValueError(f"more than {_MAX_INFORMATIONAL} informational answers"))
            return
        if self._response is not None:  # a second final answer to one request
            self._reusable = False
            return
        if message.should_close:
            self._reusable = False
        response = self._response = UpstreamResponse(self, message, payload)
        waiter = self._head_waiter
        if waiter is not None:
            self._head_waiter = None
            if not waiter.done():
                waiter.set_result(response)
        self._wake_drain(None)  # an upload in progress stops: the answer is here

    def _protocol_error(self, exc: BaseException) -> None:
        if self._response is None:
            error: ClientConnectionError = UpstreamProtocolError(f"invalid response from the backend: {exc!r}")
        else:  # the head was fine, the body's framing is not
            error = ClientPayloadError(f"Response payload is not valid: {exc!r}")
        error.__cause__ = exc
        self._reusable = False
        self._fail(error)
        self._abort()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        waiter = self._head_waiter
        if waiter is not None:
            self._head_waiter = None
            if not waiter.done():
                waiter.set_exception(exc)
        response = self._response
        if response is not None:
            payload = response.content
            if payload is not EMPTY_PAYLOAD and not payload.is_eof() and payload.exception() is None:
                payload.set_exception(exc)
        self._wake_drain(exc)

    def _wake_drain(self, exc: BaseException | None) -> None:
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        loop, pool = self._loop, self.pool
        now = loop.time()
        if not self.busy:
            deadline = self._idle_since + pool._keepalive
            if now >= deadline:
                self.close()
                return
        elif (self._waiting and not self._reading_paused and not self._detached
              and pool._read_timeout
              and (self._response is None or not _payload_complete(self._response.content))):
            deadline = self._last_rx + pool._read_timeout
            if now >= deadline:
                self._reusable = False
                self._fail(SocketTimeoutError("Timeout on reading data from socket"))
                self._abort()
                return
        else:
            deadline = now + pool._period
        self._timer = loop.call_at(min(deadline, now + pool._period), self._on_timer)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def close(self) -> None:
        """Close gracefully (what is buffered is still sent)."""
        self._shut(abort=False)

    def _abort(self) -> None:
        self._shut(abort=True)

    def _shut(self, *, abort: bool) -> None:
        first = not self._closed
        if first:
            self._closed = True
            self._cancel_timer()
        if self.transport is not None and (first or abort):
            # An abort also cuts a graceful close that is still flushing.
            (self.transport.abort if abort else self.transport.close)()
        if first:
            self.pool._discard(self)

    def _forget(self) -> None:
        if not self._closed:
            self._closed = True
            self.pool._discard(self)


def _first_value(headers: Any, lower: str, title: str) -> str | None:
    """A header's value by its usual spellings, else a case-insensitive scan."""
    value = headers.get(lower)
    if value is None:
        value = headers.get(title)
        if value is None and not hasattr(headers, "getall"):  # a plain dict: scan
            for name, v in headers.items():
                if name.lower() == lower:
                    return v
    return value


class ConnectionPool:
    """Keep-alive connections to one backend (one ``host:port``, or several for
    virtual-host addressing) for one proxy: at most ``max_connections`` at once, further
    requests queue; idle connections close after ``keepalive_timeout`` seconds."""

    def __init__(self, *, scheme: str = "http", host: str = "127.0.0.1", port: int | None = None,
                 verify_tls: "bool | ssl_module.SSLContext" = True, connect_timeout: float | None = 10.0,
                 read_timeout: float | None = 300.0, keepalive_timeout: float = 15.0,
                 max_connections: int = 256, read_limit: int = DEFAULT_READ_LIMIT,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"scheme must be http or https, got {scheme!r}")
        self._loop = loop or asyncio.get_running_loop()
        self.scheme = scheme
        self.default_key = (host, port or _DEFAULT_PORTS[scheme], scheme == "https")
        authority = f"[{host}]" if ":" in host else host
        if self.default_key[1] != _DEFAULT_PORTS[scheme]:
            authority = f"{authority}:{self.default_key[1]}"
        self._default_authority = authority
        self._verify_tls = verify_tls
        self._ssl_contexts: dict[bool, ssl_module.SSLContext] = {}
        self._connect_timeout = connect_timeout or None
        self._read_timeout = read_timeout or 0.0
        self._keepalive = keepalive_timeout or 0.0
        self._period = min([t for t in (self._read_timeout, self._keepalive) if t > 0] or [15.0])
        self._limit = max_connections or 0
        self._read_limit = read_limit
        self._idle: dict[tuple, list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._count = 0  # open and opening connections
        self._waiters: collections.deque = collections.deque()
        self._targets: dict[str, tuple] = {}  # "scheme://authority" -> (key, authority, query cut)
        self._closed = False

    @classmethod
    def for_backend(cls, backend: Any, **kwargs: Any) -> "ConnectionPool":
        return cls(scheme=backend.scheme, host=backend.hostname, port=backend.port,
                   verify_tls=backend.verify_tls, connect_timeout=backend.connect_timeout,
                   read_timeout=backend.read_timeout, keepalive_timeout=backend.keepalive_timeout,
                   max_connections=backend.max_connections, **kwargs)

    # -- the request -------------------------------------------------------------------------

    async def request(self, method: str, url: Any, headers: Mapping[str, str] | None = None,
                      data: "AsyncIterable[bytes] | SpliceBody | None" = None) -> UpstreamResponse:
        """Send one request and return once the answer's head has arrived.

        ``url``: an absolute URL string (``http://host[:port]/path?query``, already
        encoded), a ``yarl.URL``, or an origin-form target (``/path?query``) for the
        pool's default host.  ``headers`` are sent as given.  ``data``: an async iterable
        of bytes-like pieces, sent with the caller's Content-Length; or a
        :class:`SpliceBody` (plain-TCP backends only: ValueError for https), see
        :meth:`_with_splice`.
        """
        if self._closed:
            raise ClientConnectionError("the upstream connection pool is closed")
        key, target, authority = self._target(url)
        if headers is None:
            headers = {}
        if _first_value(headers, "host", "Host") is None:
            headers = {"Host": authority, **headers}
        if isinstance(data, SpliceBody):
            self._check_splice(key, headers, data)
        head = _serialize(f"{method} {target} HTTP/1.1", headers)
        if isinstance(data, SpliceBody):
            return await self._with_splice(key, method, head, data)
        if data is not None:
            return await self._with_body(key, method, head, headers, data)
        return await self._exchange(key, method, head, None)

    async def _exchange(self, key: tuple, method: str, head: bytes,
                        send_body: "Callable[[_Connection], Awaitable[None]] | None") -> UpstreamResponse:
        """Write ``head`` (and, through ``send_body``, the body) on an idle or a new
        connection and wait for the answer's head.  A kept-alive connection that turns out
        stale (the server's close crossed the request) is retried once on a new one, for
        idempotent methods, unless body bytes that cannot be sent again were taken
        (``body_taken``)."""
        retried = False
        while True:
            conn = None if retried else self._idle_connection(key)
            if conn is None:
                conn = await self._acquire(key)
            conn.begin(method == "HEAD")
            try:
                if send_body is None:
                    conn.transport.write(head)
                else:
                    await send_body(conn)
                conn.sent()
                response = conn.response
                return response if response is not None else await conn.head_future()
            except (ServerDisconnectedError, ClientOSError):
                conn._abort()
                if retried or conn.body_taken or not conn.stale() or method not in _IDEMPOTENT:
                    raise
                retried = True
            except BaseException:
                conn._abort()
                raise

    async def _with_body(self, key: tuple, method: str, head: bytes, headers: Any,
                         data: AsyncIterable[bytes]) -> UpstreamResponse:
        te = _first_value(headers, "transfer-encoding", "Transfer-Encoding")
        chunked = te is not None and te.lower().rstrip().endswith("chunked")
        raw_length = _first_value(headers, "content-length", "Content-Length")
        if chunked == (raw_length is not None) or (te is not None and not chunked):
            raise ValueError("a request body needs a Content-Length or Transfer-Encoding: chunked "
                             "(one of them)")
        length = None if chunked else int(raw_length)
        body = data.__aiter__()
        # The first piece is pulled before a connection is taken (none is held while the
        # client is slow to start) and kept: it can be sent again on a fresh connection.
        try:
            first = await body.__anext__()
        except StopAsyncIteration:
            first = None
        except Exception as exc:
            raise RequestBodyError(f"the request body failed: {exc!r}") from exc
        if first is not None and length is not None and len(first) > length:
            raise RequestBodyLengthError("the request body is longer than its Content-Length")

        async def send_body(conn: _Connection) -> None:
            transport = conn.transport
            sent = 0
            if first is None:
                transport.write(head)
            else:
                sent = len(first)
                if chunked:
                    transport.writelines((head, b"%x\r\n" % sent, first, b"\r\n") if sent else (head,))
                elif sent <= _JOIN_LIMIT:
                    transport.write(head + first)
                else:
                    transport.write(head)
                    transport.write(first)
                while True:
                    await conn.drain()
                    if conn.answered_or_raise():
                        break  # an early answer: the rest of the body is not wanted
                    try:
                        chunk = await body.__anext__()
                    except StopAsyncIteration:
                        break
                    except Exception as exc:
                        raise RequestBodyError(f"the request body failed: {exc!r}") from exc
                    conn.body_taken = True
                    if conn.answered_or_raise():
                        break
                    size = len(chunk)
                    if not size:
                        continue
                    sent += size
                    if length is not None and sent > length:
                        raise RequestBodyLengthError("the request body is longer than its Content-Length")
                    if chunked:
                        transport.writelines((b"%x\r\n" % size, chunk, b"\r\n"))
                    else:
                        transport.write(chunk)
            if conn.answered():
                conn.not_reusable()  # the body may be partly sent: never reuse
            else:
                if length is not None and sent != length:
                    raise RequestBodyLengthError(
                        f"the request body ended after {sent} of {length} bytes (Content-Length)")
                if chunked:
                    transport.write(b"0\r\n\r\n")

        return await self._exchange(key, method, head, send_body)

    @staticmethod
    def _check_splice(key: tuple, headers: Any, body: SpliceBody) -> None:
        if key[2]:
            raise ValueError("a SpliceBody needs a plain-TCP (http) backend: TLS encrypts in user space")
        if not _splice.available():
            raise ValueError("a SpliceBody needs Linux splice() (inproxy.splice.available())")
        te = _first_value(headers, "transfer-encoding", "Transfer-Encoding")
        raw_length = _first_value(headers, "content-length", "Content-Length")
        if te is not None or raw_length is None:
            raise ValueError("a SpliceBody needs a Content-Length (and no Transfer-Encoding)")
        if int(raw_length) != len(body.prefix) + body.remaining:
            raise RequestBodyLengthError(
                f"a SpliceBody of {len(body.prefix)} + {body.remaining} bytes "
                f"with a Content-Length of {raw_length}")

    async def _with_splice(self, key: tuple, method: str, head: bytes,
                           body: SpliceBody) -> UpstreamResponse:
        """The head and ``body.prefix`` are written, the transport's buffer drained to empty,
        then ``body.remaining`` bytes spliced from ``body.fd`` to the connection's socket.

        * an answer that arrives before or during the splice stops it: the response is
          returned, ``body.complete`` is False, the connection is not reused (as for an
          iterable body), and the client's socket is somewhere inside the body.
        * a stale kept-alive connection found dead before the splice started is retried
          once on a new connection (``prefix`` is still here); once bytes were taken from
          ``body.fd`` nothing can be sent again: an error then fails the request.
        * errors: the client's side (``fd``) failing, ending early or stalling ->
          :class:`RequestBodyError` (the :mod:`inproxy.splice` error as ``__cause__``);
          the backend's side failing -> ``ClientOSError``, stalling -> ``SocketTimeoutError``.
        * after a complete splice and no early answer, the connection carried exactly the
          head and Content-Length bytes in order (the transport's buffer was empty and
          nothing else writes to it meanwhile): it is reused like any other.
        """
        prefix = body.prefix

        async def send_body(conn: _Connection) -> None:
            transport = conn.transport
            if not prefix or len(prefix) <= _JOIN_LIMIT:
                transport.write(head + prefix if prefix else head)
            else:
                transport.write(head)
                transport.write(prefix)
            if body.remaining:
                await conn.drain_empty()
                if not conn.answered():
                    conn.body_taken = True
                    await conn.splice_up(body)
            else:
                body.complete = True
            if conn.answered():
                conn.not_reusable()  # the body may be partly sent: never reuse

        return await self._exchange(key, method, head, send_body)

    # -- targets -------------------------------------------------------------------------------

    def _target(self, url: Any) -> tuple[tuple, str, str]:
        """(connection key, request target, authority) of a URL."""
        if isinstance(url, str):
            if url[:1] == "/":
                return self.default_key, url, self._default_authority
            start = url.find("://")
            if start < 0:
                raise ValueError(f"not an absolute URL nor an origin-form target: {url!r}")
            slash = url.find("/", start + 3)
            if slash < 0:
                slash = len(url)
            prefix = url[:slash]
            cached = self._targets.get(prefix)
            if cached is None:
                cached = self._parse_prefix(prefix)
            key, authority, query_cut = cached
            if query_cut:  # a "?" right after the authority: http://host?x
                return key, "/" + prefix[query_cut:] + url[slash:], authority
            return key, url[slash:] or "/", authority
        # a yarl.URL
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS or not url.raw_host:
            raise ValueError(f"not an http(s) URL: {url!r}")
        key = (url.raw_host.strip("[]"), url.port or _DEFAULT_PORTS[scheme], scheme == "https")
        return key, url.raw_path_qs or "/", url.raw_authority

    def _parse_prefix(self, prefix: str) -> tuple[tuple, str, int]:
        scheme, _, authority = prefix.partition("://")
        query_cut = 0
        if "?" in authority:
            query_cut = len(scheme) + 3 + authority.index("?")
            authority = authority[:authority.index("?")]
        cached = (_parse_authority(scheme, authority), authority, query_cut)
        if len(self._targets) >= 1024:
            self._targets.clear()
        self._targets[prefix] = cached
        return cached

    # -- connections ---------------------------------------------------------------------------

    def _new_parser(self, conn: _Connection, with_body: bool) -> Any:
        return HttpResponseParser(
            conn, self._loop, self._read_limit, payload_exception=ClientPayloadError,
            response_with_body=with_body, read_until_eof=True, auto_decompress=False)

    def _idle_connection(self, key: tuple) -> _Connection | None:
        """The most recently used idle connection to ``key`` (now busy), if any."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn._closed and conn.transport is not None and not conn.transport.is_closing():
                conn.busy = True
                return conn
            conn._abort()
        return None

    async def _acquire(self, key: tuple) -> _Connection:
        """A new connection, or one handed over by a request that ended, at the limit."""
        while True:
            if self._closed:
                raise ClientConnectionError("the upstream connection pool is closed")
            if self._limit and self._count >= self._limit and not self._close_an_idle():
                conn = await self._wait(key)
                if conn is None:  # a slot was counted for us
                    return await self._connect(key)
                if not conn._closed and conn.transport is not None:
                    return conn
                # handed over, then closed by the server meanwhile: try again
            else:
                self._count += 1
                return await self._connect(key)

    def _close_an_idle(self) -> bool:
        """Make room at the limit by closing an idle connection (to another host)."""
        for conns in self._idle.values():
            if conns:
                conns.pop(0).close()
                return self._count < self._limit
        return False

    async def _wait(self, key: tuple) -> _Connection | None:
        waiter = self._loop.create_future()
        self._waiters.append((key, waiter))
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                conn = waiter.result()
                if conn is None:  # the slot we were given goes to the next one
                    self._count -= 1
                    self._wake_for_slot()
                else:
                    conn.busy = False
                    self._release(conn)
            raise

    async def _connect(self, key: tuple) -> _Connection:
        """Open a connection for a slot already counted."""
        host, port, tls = key
        try:
            ssl_context = self._ssl_context() if tls else None
            factory = lambda: _Connection(self, key)  # noqa: E731
            connect = self._loop.create_connection(
                factory, host, port, ssl=ssl_context, server_hostname=host if tls else None)
            try:
                if self._connect_timeout is None:
                    _transport, conn = await connect
                else:
                    async with asyncio.timeout(self._connect_timeout):
                        _transport, conn = await connect
            except asyncio.TimeoutError as exc:
                raise ConnectionTimeoutError(
                    f"Connection timeout to host {host}:{port}") from exc
            except OSError as exc:
                raise UpstreamConnectError(
                    exc.errno, f"Cannot connect to host {host}:{port}: {exc}") from exc
        except BaseException:
            self._count -= 1
            self._wake_for_slot()
            raise
        if self._closed:
            conn.close()
            raise ClientConnectionError("the upstream connection pool is closed")
        self._all.add(conn)
        return conn

    def _ssl_context(self) -> ssl_module.SSLContext:
        verify = self._verify_tls
        if isinstance(verify, ssl_module.SSLContext):
            return verify
        context = self._ssl_contexts.get(bool(verify))
        if context is None:
            if verify:
                context = ssl_module.create_default_context()
            else:
                context = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl_module.CERT_NONE
            self._ssl_contexts[bool(verify)] = context
        return context

    def _release(self, conn: _Connection) -> None:
        """A connection whose exchange ended cleanly: to a waiter, or idle."""
        if self._closed or self._keepalive <= 0:
            conn.close()
            return
        waiters = self._waiters
        while waiters:
            key, waiter = waiters[0]
            if waiter.done():
                waiters.popleft()
                continue
            if key == conn.key:
                waiters.popleft()
                conn.busy = True
                waiter.set_result(conn)
            else:
                conn.close()  # its slot goes to that waiter (in _discard)
            return
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        idle.append(conn)

    def _discard(self, conn: _Connection) -> None:
        """A connection leaves the pool (called once per connection)."""
        self._count -= 1
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        self._wake_for_slot()

    def _wake_for_slot(self) -> None:
        waiters = self._waiters
        while waiters and (not self._limit or self._count < self._limit):
            _key, waiter = waiters.popleft()
            if waiter.done():
                continue
            self._count += 1
            waiter.set_result(None)

    # -- state and shutdown ------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Connections open or opening."""
        return self._count

    @property
    def idle_count(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    async def close(self) -> None:
        """Close every connection (busy ones too) and refuse further requests."""
        self._closed = True
        while self._waiters:
            _key, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ClientConnectionError("the upstream connection pool is closed"))
        for conn in list(self._all):
            if conn.busy:
                conn._reusable = False
                conn._fail(ClientConnectionError("the upstream connection pool is closed"))
                conn._abort()
            else:
                conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports call connection_lost


def _parse_authority(scheme: str, authority: str) -> tuple[str, int, bool]:
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"not an http(s) URL scheme: {scheme!r}")
    hostport = authority.rpartition("@")[2]
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise ValueError(f"no host in {authority!r}")
    port = int(port_text) if port_text else _DEFAULT_PORTS[scheme]
    return host, port, scheme == "https"
