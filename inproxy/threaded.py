"""Run a ProxyServer on its own event loop in a background thread, for synchronous code."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .server import ProxyServer


class ThreadRunner:
    """A proxy in a background thread: started synchronously, stopped synchronously."""

    def __init__(self, make_proxy: Callable[[], ProxyServer],
                 loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> None:
        self._make_proxy, self._loop_factory = make_proxy, loop_factory
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxy: ProxyServer | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="inproxy", daemon=True)

    def start(self) -> ProxyServer:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self._proxy is not None
        return self._proxy

    def stop(self) -> None:
        if self._loop is not None and self._proxy is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._proxy.stop(), self._loop).result()
            finally:  # a failing stop() must not leave the loop running and join() hanging
                self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def _run(self) -> None:
        loop = self._loop_factory() if self._loop_factory else asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            self._proxy = loop.run_until_complete(self._start())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _start(self) -> ProxyServer:
        proxy = self._make_proxy()
        return await proxy.start()
