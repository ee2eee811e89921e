"""A TCP relay in front of a test backend that records every byte sent to it, so that a
test can prove what reached the backend (and what never did)."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter
from contextlib import contextmanager
from urllib.parse import urlsplit

from inproxy import Backend


class Relay:
    """Forwards 127.0.0.1:port to the backend byte for byte, recording the upstream bytes."""

    _REQUEST_LINE = re.compile(rb"(?m)^([A-Za-z]+) (\S+) HTTP/1\.[01]\r$")

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname, parts.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._buffers: list[bytearray] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def backend(self, info, **kwargs) -> Backend:
        kwargs.setdefault("credentials", {"access_key": info.access_key, "secret_key": info.secret_key})
        return Backend(endpoint=self.url, region=info.region, **kwargs)

    def data(self) -> bytes:
        with self._lock:
            return b"".join(bytes(b) for b in self._buffers)

    def lines(self) -> list[tuple[str, str]]:
        """Every request line sent upstream so far: (method, target)."""
        with self._lock:
            buffers = [bytes(b) for b in self._buffers]
        return [(m.decode(), t.decode()) for data in buffers for m, t in self._REQUEST_LINE.findall(data)]

    @contextmanager
    def watch(self):
        """Yields a list that, after the block, holds the request lines sent during it."""
        before = Counter(self.lines())
        seen: list[tuple[str, str]] = []
        try:
            yield seen
        finally:
            time.sleep(0.05)  # let the relay threads record what is in flight
            after = Counter(self.lines())
            seen.extend((after - before).elements())

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            buffer = bytearray()
            with self._lock:
                self._buffers.append(buffer)
            threading.Thread(target=self._pipe, args=(client, upstream, buffer), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, record: bytearray | None) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if record is not None:
                    with self._lock:
                        record.extend(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (sink, source):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
