"""One client connection: parse requests, hand them to the handler in order, write answers."""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.http_parser import HttpRequestParser
from aiohttp.web_protocol import RequestPayloadError

from .. import errors
from ..tcp import no_delay, pause_reading, resume_reading
from .request import FrontRequest
from .response import ResponseWriter

if TYPE_CHECKING:
    from .server import FrontServer

log = logging.getLogger("inproxy")

# Requests parsed ahead of the one being answered (pipelining) before the socket stops being read.
_MAX_QUEUED = 8
# After an answer that left the request body unread, how long the rest is read and dropped
# before closing: closing with unread bytes makes the kernel send a reset, which can destroy
# the answer before the client has read it.
_LINGER_SECONDS = 2.0


class FrontConnection(asyncio.Protocol):
    """A client connection: requests are parsed as bytes arrive (aiohttp's C parser) and
    answered one after the other by one task, which lives as long as the connection."""

    __slots__ = (
        "server", "_loop", "transport", "_parser", "_queue", "_waiter", "_task", "busy",
        "closing", "_current", "_reading_paused", "_queue_paused", "write_paused",
        "_drain_waiter", "remote", "local_host", "secure", "_last_active", "_timer", "_discarding",
        "_unread", "_body_taken", "_last_rx", "_write_blocked_at", "_client_done",
    )

    def __init__(self, server: "FrontServer") -> None:
        self.server = server
        self._loop = server.loop
        self.transport: asyncio.Transport | None = None
        self._parser: Any = None
        self._queue: collections.deque = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self.busy = False  # a request is being answered
        self.closing = False  # no further request is read: close after the current answer
        self._current: FrontRequest | None = None
        self._reading_paused = False  # by a request body's flow control
        self._queue_paused = False  # by too many requests parsed ahead
        self.write_paused = False
        self._drain_waiter: asyncio.Future | None = None
        self.remote: str | None = None
        self.local_host = ""
        self.secure = False
        self._last_active = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._discarding = False  # lingering: bytes are read and dropped
        self._unread = False  # the last answer left bytes of its request unread
        self._body_taken = False  # the current request's body is being spliced from the socket
        self._last_rx = 0.0  # when the client last sent bytes
        self._write_blocked_at = 0.0  # since when the client has not taken what we write (0: it has)
        self._client_done = False  # the client half-closed: answer what came, then close

    # -- asyncio.Protocol ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:  # for aiohttp's StreamReader
        return self.transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        no_delay(transport)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, (tuple, list)) and peer else None
        local = transport.get_extra_info("sockname")
        if isinstance(local, (tuple, list)) and local:
            host = local[0]
            self.local_host = f"[{host}]:{local[1]}" if ":" in host else f"{host}:{local[1]}"
        self.secure = transport.get_extra_info("sslcontext") is not None
        self._parser = self._new_parser()
        self._last_active = self._last_rx = self._loop.time()
        first = min(server.keepalive_timeout, server.client_timeout / 2)
        self._timer = self._loop.call_at(self._last_active + first, self._on_timer)
        server.connection_opened(self)
        self._task = self._loop.create_task(self._serve())

    def _new_parser(self) -> Any:
        server = self.server
        return HttpRequestParser(
            self, self._loop, server.read_limit, max_line_size=server.max_header_bytes,
            max_field_size=server.max_header_bytes, max_headers=server.max_headers,
            payload_exception=RequestPayloadError, auto_decompress=False)

    def data_received(self, data: bytes) -> None:
        if self._discarding or self.closing and not self.busy:
            return
        if data:
            self._last_rx = self._loop.time()
        try:
            messages, upgraded, _tail = self._parser.feed_data(data)
        except HttpProcessingError as exc:
            self._queue.append((None, exc))
            self._stop_reading()
            self._wake()
            return
        if messages:
            self._queue.extend(messages)
            if upgraded:  # S3 has no upgrades: answer what came, then close
                self._stop_reading()
            if len(self._queue) >= _MAX_QUEUED and not self._queue_paused:
                self._queue_paused = True
                self._pause_transport()
            self._wake()

    def eof_received(self) -> bool | None:
        """The client half-closed: it sends nothing more, but may still read (as tools that
        ``shutdown(SHUT_WR)`` after their request do).  What it sent whole is answered, then
        the connection closes.  Anything cut short (a request body or head), TLS (no
        half-close) or a lingering close: the transport closes now, connection_lost follows."""
        if self.secure or self._discarding or not self._received_whole():
            return None
        self._client_done = True  # _next() ends the connection once the queue is answered
        if not self._queue:
            self.closing = True  # the answer in progress (if any) is the last: it says so
        self._wake()
        return True

    def _received_whole(self) -> bool:
        """Every request received so far is complete, body included, and no other has begun."""
        current = self._current
        if current is not None and not current.content.is_eof():
            return False
        if any(message is None or not payload.is_eof() for message, payload in self._queue):
            return False
        try:
            return self._parser.feed_eof() is None  # a message the parser has begun
        except Exception:  # a body cut short
            return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self.closing = True
        try:
            self._parser.feed_eof()
        except Exception:
            pass  # a body cut short: its readers get the error below
        lost = ConnectionResetError("the client connection was lost")
        current = self._current
        bodies = [current.content] if current is not None else []
        bodies += [payload for message, payload in self._queue if message is not None]
        for body in bodies:
            if not body.is_eof() and body.exception() is None:
                body.set_exception(lost)
        self._wake_drain(lost)
        self._wake()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server.connection_closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._write_blocked_at = self._loop.time()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._write_blocked_at = 0.0
        self._wake_drain(None)

    # aiohttp's StreamReader calls these for flow control of a request body.
    def pause_reading(self) -> None:
        try:
            self._parser.pause_reading()  # llhttp stops after this piece; the rest stays in its tail
        except AssertionError:
            pass  # between messages: nothing to pause in the parser
        if not self._reading_paused:
            self._reading_paused = True
            self._pause_transport()

    def resume_reading(self, resume_parser: bool = True) -> None:
        if not self._reading_paused:
            return  # the StreamReader calls this after every read: keep it cheap
        self._reading_paused = False
        if resume_parser and self.transport is not None:
            self.data_received(b"")  # what llhttp kept back when it paused
        if not self._reading_paused and not self._queue_paused and not self._body_taken:
            self._resume_transport()

    # -- answering, one request after the other ------------------------------------------------

    async def _serve(self) -> None:
        try:
            while True:
                item = self._queue.popleft() if self._queue else await self._next()
                if item is None:
                    break
                message, payload = item
                if self._client_done and not self._queue:
                    self.closing = True  # the last request of a half-closed client
                if self._queue_paused and len(self._queue) < _MAX_QUEUED // 2:
                    self._queue_paused = False
                    if not self._reading_paused:
                        self._resume_transport()
                if message is None:
                    await self._refuse(payload)
                    break
                if self.server.stopping:
                    # Received but not started when stop() began (it waits only for answers in
                    # progress, and would close this one mid-answer): not started at all, so the
                    # backend never sees it and the client may retry it.  Linger: it is unread.
                    self._unread = True
                    break
                if not await self._answer(message, payload):
                    break
        except asyncio.CancelledError:
            self.abort()
            raise
        except ConnectionError as exc:
            # The client left before (or while) its answer was written (_answer re-raises
            # ConnectionError; ResponseWriter.write/drain raise it once the transport is gone):
            # nobody to answer, and not a proxy failure, so no ERROR traceback.
            log.debug("inproxy: client %s left before its answer was written: %r", self.remote, exc)
            self.abort()
            return
        except Exception:  # a bug here: never leave the client hanging
            log.exception("inproxy: client connection failed")
            self.abort()
            return
        if self._queue:
            # Requests (or a refusal) parsed behind the last answer are dropped unanswered, and
            # the client may still be sending (reading may be paused): close by lingering, as
            # after an unread body, or the reset would destroy the answer just sent.
            self._unread = True
        self._close_gracefully()

    async def _next(self) -> tuple | None:
        while not self._queue:
            if self.transport is None or self.closing or self._client_done:
                return None
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _answer(self, message: Any, payload: Any) -> bool:
        """Answer one request; whether the connection may carry another."""
        request = self._current = FrontRequest(self, message, payload)
        self.busy = True
        try:
            response = await self.server.handler(request)
            writer = request.writer
            if response is not None:
                await writer.answer(response)
            elif not writer.finished:  # the handler gave up on this answer (and said why in the log)
                self.abort()
                return False
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            # The id goes in the log line, the XML and the x-amz-request-id header, as every
            # other error's does: the client's report can then be found in the log.
            request_id = errors.new_request_id()
            log.exception("inproxy: request %s to %s failed", request_id, request.raw_path.partition("?")[0])
            if request.writer.started:
                self.abort()
                return False
            await request.writer.error(500, errors.InternalError().to_xml(request_id=request_id),
                                       (("x-amz-request-id", request_id),), close=True)
            return False
        finally:
            self.busy = False
            self._unread = not request.body_consumed()
            self._current = None
            self._last_active = self._loop.time()
        return writer.keep_alive and self.transport is not None and not self.closing

    def request_body_consumed(self) -> bool:
        current = self._current
        return current is None or current.body_consumed()

    async def _refuse(self, exc: BaseException) -> None:
        """Answer a request the parser refused, as S3 would, and close."""
        err = _parser_error(exc)
        request_id = errors.new_request_id()
        # The exception's text may quote a header (an Authorization value): log its type only.
        log.warning("request %s from %s refused by the HTTP parser: %s (%d)", request_id,
                    self.remote, type(exc).__name__, err.status)
        self._unread = True  # the rest of what the client sent is unknown
        writer = ResponseWriter(self, False, HttpVersion11, keep_alive=False)
        await writer.error(err.status, err.to_xml(request_id=request_id),
                           (("x-amz-request-id", request_id),), close=True)

    # -- writing -----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client connection was lost")
        transport.write(data)

    async def drain(self) -> None:
        if not self.write_paused:
            return
        if self.transport is None:
            raise ConnectionResetError("the client connection was lost")
        waiter = self._drain_waiter = self._loop.create_future()
        await waiter

    def _wake_drain(self, exc: BaseException | None) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    # -- zero-copy bodies (inproxy.spliced) ------------------------------------------------------

    def splice_fd(self) -> int | None:
        """The client socket's fd when bytes may be spliced to or from it (plain TCP)."""
        transport = self.transport
        if transport is None or self.secure or transport.is_closing():
            return None
        sock = transport.get_extra_info("socket")
        return sock.fileno() if sock is not None else None

    async def drain_empty(self) -> None:
        """Wait until everything written has left for the socket (not just below the
        high-water mark): nothing may sit in the transport's buffer while a splice writes."""
        transport = self.transport
        if transport is None:
            raise ConnectionResetError("the client connection was lost")
        if not transport.get_write_buffer_size():
            return
        high, low = transport.get_write_buffer_limits()
        try:
            transport.set_write_buffer_limits(high=0, low=0)  # resume_writing only once empty
            while transport.get_write_buffer_size() and self.transport is not None:
                self.write_paused = True
                await self.drain()
        finally:
            if self.transport is not None:
                transport.set_write_buffer_limits(high=high, low=low)

    def take_body(self, request: FrontRequest) -> tuple[bytes, int, int] | None:
        """Take over the unread rest of ``request``'s body for splicing: the bytes already
        received (from the parser and its held-back tail), the count still on the socket,
        and the socket's fd; None when that cannot be done (TLS, chunked, already read,
        complete).  Reading stays paused until :meth:`body_returned`."""
        content = request.content
        length = request.content_length
        fd = self.splice_fd()
        if (fd is None or request is not self._current or length is None
                or "transfer-encoding" in request.headers or content.is_eof()
                or content.exception() is not None or content.total_bytes != _buffered(content)):
            return None
        self._body_taken = True
        self._pause_transport()
        pieces = []
        while True:  # each read lets the parser deliver what it held back while paused
            piece = content.read_nowait(-1)
            if not piece:
                break
            pieces.append(piece)
        if content.is_eof() or content.exception() is not None:  # it was all here after all
            self._body_taken = False
            self._resume_reading_after_take()
            return None if content.exception() is not None else (b"".join(pieces), 0, fd)
        return b"".join(pieces), length - content.total_bytes, fd

    def body_returned(self, request: FrontRequest, complete: bool) -> None:
        """The splice of ``request``'s body ended.  Complete: the parser (which never saw those
        bytes) starts afresh at the next request.  Not complete: the socket is somewhere in
        the body; the connection closes after the answer (lingering)."""
        if not complete or not self._body_taken:
            return  # body_consumed() stays False: the answer says close, then we linger
        self._parser = self._new_parser()
        request.content.feed_eof()
        self._body_taken = False
        self._reading_paused = False
        self._resume_reading_after_take()

    def _resume_reading_after_take(self) -> None:
        if not self._queue_paused:
            self._resume_transport()

    # -- closing -----------------------------------------------------------------------------

    def shut_down(self) -> None:
        """The server stops: close now when idle, else after the current answer."""
        self.closing = True
        if not self.busy:
            self._wake()
            if self.transport is not None and self._task is not None and self._task.done():
                self.transport.close()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort()

    def close(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.close()

    def _close_gracefully(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if not self._unread or transport.get_extra_info("sslcontext") is not None:
            transport.close()
            return
        # Unread request bytes: send our FIN, drop what still comes, close a little later.
        self._discarding = True
        self._stop_reading(pause=False)
        try:
            transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            transport.close()
            return
        self._resume_transport()
        self._loop.call_later(_LINGER_SECONDS, transport.close)

    def _stop_reading(self, pause: bool = True) -> None:
        self.closing = True
        if pause:
            self._pause_transport()

    def _pause_transport(self) -> None:
        pause_reading(self.transport)

    def _resume_transport(self) -> None:
        resume_reading(self.transport)

    def _on_timer(self) -> None:
        """Close a connection idle for the keep-alive timeout (bytes of an unfinished request
        head do not count as activity, so a trickled head cannot hold it open)."""
        self._timer = None
        if self.transport is None:
            return
        now = self._loop.time()
        idle_since = self._last_active
        if not self.busy and not self._queue and now - idle_since >= self.server.keepalive_timeout:
            self.closing = True
            self._wake()
            self.transport.close()
            return
        if self.busy:
            if self._client_stalled(now):
                return
            due = now + min(1.0, self.server.client_timeout / 4)  # a stall is seen within 1 s
        else:  # idle: due at the keep-alive limit, or sooner so that a request's stall is seen in time
            due = min(max(idle_since + self.server.keepalive_timeout, now + 1.0),
                      now + self.server.client_timeout / 2)
        self._timer = self._loop.call_at(due, self._on_timer)

    def _client_stalled(self, now: float) -> bool:
        """While a request is answered: a client that stopped sending its body, or stopped
        reading its answer, for ``client_timeout`` seconds is given up on (S3 does the same:
        RequestTimeout), so that it cannot hold a task and a backend connection for ever.
        Not while the proxy itself holds the body back (flow control, a splice with its own
        deadline).  True when the connection was aborted."""
        timeout = self.server.client_timeout
        if self._write_blocked_at and now - self._write_blocked_at >= timeout:
            log.warning("inproxy: client %s has not read its answer for %.0f s; closing", self.remote, timeout)
            self.abort()
            return True
        current = self._current
        if current is None or self._reading_paused or self._body_taken or now - self._last_rx < timeout:
            return False
        content = current.content
        if current.body_exists and not content.is_eof() and content.exception() is None:
            content.set_exception(errors.RequestTimeout())
        return False

    def client_may_send(self) -> None:
        """The client was just invited to send (``100 Continue``): its clock starts now."""
        self._last_rx = self._loop.time()


def _buffered(content: Any) -> int:
    """Bytes waiting in a StreamReader (aiohttp keeps the count private)."""
    return getattr(content, "_size", -1)


def _parser_error(exc: BaseException) -> errors.S3Error:
    """The S3 error for a request the parser refused."""
    # aiohttp has no exception class for "too many headers": its message is all there is.
    if isinstance(exc, LineTooLong) or "too many headers" in str(exc).lower():
        return errors.RequestHeaderSectionTooLarge()
    return errors.InvalidRequest("The request is not valid HTTP/1.1.")
