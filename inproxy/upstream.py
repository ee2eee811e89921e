"""Keep-alive connection pools to backends: one aiohttp ClientSession per Backend per proxy."""

from __future__ import annotations

import ssl

import aiohttp

from .backend import Backend


class UpstreamPool:
    """Owns the client sessions of one proxy (never shared: two proxies, two pools)."""

    def __init__(self) -> None:
        self._sessions: dict[int, tuple[Backend, aiohttp.ClientSession]] = {}

    def session(self, backend: Backend) -> aiohttp.ClientSession:
        """The session for a backend, created on first use inside the running loop."""
        entry = self._sessions.get(id(backend))
        if entry is None:
            entry = (backend, _new_session(backend))
            self._sessions[id(backend)] = entry
        return entry[1]

    async def close(self) -> None:
        sessions = [s for _, s in self._sessions.values()]
        self._sessions.clear()
        for session in sessions:
            await session.close()


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
