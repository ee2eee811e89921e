"""Keep-alive connection pools to backends: one pool per Backend per proxy.

By default (``client="lean"``) a pool is inproxy's own HTTP/1.1 client
(:mod:`inproxy.upstream_client`); ``client="aiohttp"`` uses an ``aiohttp.ClientSession``
instead.  Both answer :meth:`UpstreamPool.request` with an object that has ``status``,
``reason``, ``headers``, ``content`` (``iter_any()``, ``read()``), ``release()`` and
``close()``, and raise the same kinds of errors (``aiohttp.ClientError`` subclasses,
``asyncio.TimeoutError``).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any, AsyncIterable, Awaitable, Mapping

import aiohttp
from yarl import URL

from .backend import Backend
from .upstream_client import ConnectionPool

if TYPE_CHECKING:
    from .context import UpstreamRequest
    from .upstream_client import SpliceBody

CLIENTS = ("lean", "aiohttp")


class UpstreamPool:
    """Owns the backend connections of one proxy (never shared: two proxies, two pools)."""

    def __init__(self, client: str = "lean") -> None:
        if client not in CLIENTS:
            raise ValueError(f"client must be one of {CLIENTS}, got {client!r}")
        self.client = client
        self._pools: dict[int, tuple[Backend, Any]] = {}
        self._sessions: dict[int, tuple[Backend, aiohttp.ClientSession]] = {}

    def request(self, backend: Backend, method: str, url: "str | URL", *,
                headers: Mapping[str, str], data: AsyncIterable[bytes] | None = None) -> Awaitable[Any]:
        """Send a request to ``backend``; awaiting it gives the response once its head arrived.

        ``url`` is absolute and already encoded (never re-quoted); ``headers`` are sent as
        given (the caller sets Host and, with ``data``, Content-Length).
        """
        entry = self._pools.get(id(backend))
        if entry is None:
            pool = ConnectionPool.for_backend(backend) if self.client == "lean" else _AiohttpPool(self.session(backend))
            entry = self._pools[id(backend)] = (backend, pool)
        return entry[1].request(method, url, headers, data)

    def send(self, backend: Backend, upstream: "UpstreamRequest",
             data: "AsyncIterable[bytes] | SpliceBody | None" = None) -> Awaitable[Any]:
        """Send ``ctx.upstream`` (signed) to ``backend``, like :meth:`request`."""
        # The lean pool connects to the backend's own host:port: when the Host header names
        # that too, the origin-form target spares building a URL only to take it apart again.
        if self.client == "lean" and upstream.host == backend.netloc:
            url = upstream.target
        else:
            url = upstream.url
        return self.request(backend, upstream.method, url, headers=upstream.headers, data=data)

    def session(self, backend: Backend) -> aiohttp.ClientSession:
        """An aiohttp session for a backend, created on first use inside the running loop."""
        entry = self._sessions.get(id(backend))
        if entry is None:
            entry = (backend, _new_session(backend))
            self._sessions[id(backend)] = entry
        return entry[1]

    async def close(self) -> None:
        pools = [p for _, p in self._pools.values()]
        sessions = [s for _, s in self._sessions.values()]
        self._pools.clear()
        self._sessions.clear()
        for pool in pools:
            await pool.close()
        for session in sessions:
            await session.close()


class _AiohttpPool:
    """The request interface on an aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    def request(self, method: str, url: "str | URL", headers: Mapping[str, str],
                data: AsyncIterable[bytes] | None) -> Awaitable[aiohttp.ClientResponse]:
        if isinstance(url, str):
            url = URL(url, encoded=True)
        return self.session.request(method, url, headers=headers, data=data, allow_redirects=False)

    async def close(self) -> None:
        pass  # the session is closed by UpstreamPool.close()


def _new_session(backend: Backend) -> aiohttp.ClientSession:
    ssl_arg: ssl.SSLContext | bool = backend.verify_tls
    if backend.scheme == "http":
        ssl_arg = False
    connector = aiohttp.TCPConnector(
        limit=backend.max_connections,
        keepalive_timeout=backend.keepalive_timeout,
        ssl=ssl_arg,
        enable_cleanup_closed=False,
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=backend.connect_timeout,
                                    sock_read=backend.read_timeout)
    # auto_decompress off: bytes pass through exactly as the backend sent them.
    # No cookie jar, no default headers: the proxy sends what the client sent and it signed,
    # nothing of aiohttp's own (a default Content-Type would change the stored object's type).
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent", "Content-Type", "Accept", "Accept-Encoding"),
        read_bufsize=2**18,
    )
