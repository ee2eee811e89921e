"""One client request as the pipeline and the hooks see it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from aiohttp import HttpVersion11
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import MultiDict, MultiDictProxy

from ..s3.headers import decimal_count
from .response import ResponseWriter

if TYPE_CHECKING:
    import asyncio

    from multidict import CIMultiDictProxy

    from .protocol import FrontConnection

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class FrontRequest:
    """A parsed request head and its body stream.

    The attributes a proxy reads, with the names and meanings of aiohttp's
    ``BaseRequest``: ``method``, ``raw_path`` (path and query exactly as sent),
    ``version``, ``headers`` (case-insensitive, read-only), ``raw_headers``,
    ``content`` (aiohttp's ``StreamReader``: ``iter_any()``, ``read()``...),
    ``transport``, ``host``, ``remote``, ``content_length``, ``body_exists``,
    ``query``, ``content_type``.  ``writer`` answers it (see :class:`ResponseWriter`).
    """

    __slots__ = ("method", "raw_path", "version", "headers", "raw_headers", "content",
                 "writer", "_connection", "_query")

    def __init__(self, connection: "FrontConnection", message: Any, payload: Any) -> None:
        self.method: str = message.method
        self.raw_path: str = message.path
        self.version = message.version
        self.headers: "CIMultiDictProxy[str]" = message.headers
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = message.raw_headers
        self.content = payload
        self._connection = connection
        self._query: MultiDictProxy[str] | None = None
        self.writer = ResponseWriter(connection, self.method == "HEAD", self.version,
                                     keep_alive=not message.should_close)

    def __repr__(self) -> str:
        return f"<FrontRequest {self.method} {self.raw_path}>"

    @property
    def transport(self) -> "asyncio.Transport | None":
        """The client connection's transport (``None`` once it is lost)."""
        return self._connection.transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's extra info (``peername``, ``ssl_object``, ``peercert``...)."""
        transport = self._connection.transport
        return transport.get_extra_info(name, default) if transport is not None else default

    @property
    def remote(self) -> str | None:
        """The client's IP address."""
        return self._connection.remote

    @property
    def secure(self) -> bool:
        return self._connection.secure

    @property
    def scheme(self) -> str:
        return "https" if self._connection.secure else "http"

    @property
    def host(self) -> str:
        """The Host header, or the address the client connected to."""
        host = self.headers.get("host")
        return host if host is not None else self._connection.local_host

    @property
    def path(self) -> str:
        """The raw path without its query."""
        return self.raw_path.partition("?")[0]

    @property
    def query_string(self) -> str:
        return self.raw_path.partition("?")[2]

    @property
    def query(self) -> "MultiDictProxy[str]":
        """The decoded query (``+`` is a space, as in forms and S3)."""
        if self._query is None:
            pairs = parse_qsl(self.query_string, keep_blank_values=True)
            self._query = MultiDictProxy(MultiDict(pairs))
        return self._query

    @property
    def content_type(self) -> str:
        """The media type of the body, lower-case, without parameters."""
        value = self.headers.get("content-type", "application/octet-stream")
        return value.partition(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        return decimal_count(self.headers.get("content-length"))

    @property
    def body_exists(self) -> bool:
        """Whether the request has a body (a Content-Length above 0, or chunked)."""
        return self.content is not EMPTY_PAYLOAD

    def body_consumed(self) -> bool:
        """Whether the body (if any) was read to its end: the connection can carry another request."""
        return self.content is EMPTY_PAYLOAD or self.content.at_eof()

    def splice_fd(self) -> int | None:
        """The client socket's fd when bytes may be spliced to or from it (plain TCP)."""
        return self._connection.splice_fd()

    def take_body(self) -> tuple[bytes, int, int] | None:
        """Take over the unread body for splicing: ``(bytes received, count still on the
        socket, fd)``, or None; then :meth:`body_returned` (see :mod:`inproxy.spliced`)."""
        return self._connection.take_body(self)

    def body_returned(self, complete: bool) -> None:
        """A body taken with :meth:`take_body` was spliced (``complete``) or abandoned."""
        self._connection.body_returned(self, complete)

    async def send_continue(self) -> None:
        """Write ``100 Continue`` (the caller decides when: only after authorization)."""
        # RFC 9110 10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored (a
        # 1.0 client has no interim responses: it would take the 100 for the final answer).
        if self.version < HttpVersion11:
            return
        connection = self._connection
        connection.write(_CONTINUE)
        connection.client_may_send()
        await connection.drain()
