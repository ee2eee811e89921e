"""The listening socket and the live client connections of one proxy."""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .protocol import FrontConnection

if TYPE_CHECKING:
    from aiohttp import web

    from .request import FrontRequest

    Handler = Callable[[FrontRequest], Awaitable["web.Response | None"]]

log = logging.getLogger("inproxy")


class FrontServer:
    """Serves ``handler`` on a socket; each connection answers its requests in order.

    ``handler(request)`` answers through ``request.writer`` and returns ``None``, or
    returns a whole ``aiohttp.web.Response`` for the connection to send.
    """

    def __init__(self, handler: "Handler", *, max_header_bytes: int = 16 * 1024,
                 max_headers: int = 128, keepalive_timeout: float = 75.0, client_timeout: float = 60.0,
                 read_limit: int = 256 * 1024) -> None:
        self.handler = handler
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.keepalive_timeout = keepalive_timeout
        # A client sending none of its body, or reading none of its answer, this long is given up on.
        self.client_timeout = client_timeout
        self.read_limit = read_limit  # a request body buffers up to 2x this, then reading pauses
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self.connections: set[FrontConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._date: tuple[int, str] = (0, "")
        self.stopping = False  # stop() began: requests not started yet are left unanswered

    async def start(self, host: str, port: int, ssl: ssl_module.SSLContext | None = None) -> int:
        """Bind and listen; the port actually bound."""
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: FrontConnection(self), host, port, ssl=ssl, reuse_address=True, backlog=1024)
        return self._server.sockets[0].getsockname()[1]

    def connection_opened(self, connection: FrontConnection) -> None:
        self.connections.add(connection)

    def connection_closed(self, connection: FrontConnection) -> None:
        self.connections.discard(connection)

    def http_date(self) -> str:
        """The Date header value, formatted at most once a second."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]

    async def stop(self, grace: float, abort_after: float) -> None:
        """Stop accepting; idle connections close now, busy ones after their answer; answers
        still running after ``grace`` seconds are cancelled (given ``abort_after`` more)."""
        self.stopping = True
        server, self._server = self._server, None
        if server is not None:
            server.close()  # no new connections (wait_closed() would wait for every client)
        for connection in list(self.connections):
            connection.shut_down()
        busy = {c._task for c in self.connections if c.busy and c._task is not None}
        if busy:
            _, busy = await asyncio.wait(busy, timeout=grace)
        if busy:
            log.warning("inproxy: %d request(s) still running after the %.1f s grace period; aborting them",
                        len(busy), grace)
            for task in busy:
                task.cancel()
            await asyncio.wait(busy, timeout=abort_after)
        # What is left idles, lingers, or waits for a body that may never come.  Closing
        # still delivers what is buffered; each connection's task then ends at once.
        tasks = {c._task for c in self.connections if c._task is not None}
        for connection in list(self.connections):
            connection.close()
        if tasks:
            await asyncio.wait(tasks, timeout=abort_after)

    def __repr__(self) -> str:
        return f"<FrontServer {len(self.connections)} connection(s)>"

    @property
    def sockets(self) -> Any:
        return self._server.sockets if self._server is not None else ()
