"""Transport settings shared by the client-facing front and the upstream client."""

from __future__ import annotations

import asyncio
import socket


def no_delay(transport: asyncio.BaseTransport) -> None:
    """Send small writes at once (no Nagle delay): a request or an answer head is one write,
    and waiting for the peer's ACK before sending it would add a round trip."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def pause_reading(transport: asyncio.Transport | None) -> None:
    """Stop reading the socket; a transport that is gone or cannot pause is left as it is."""
    if transport is not None:
        try:
            transport.pause_reading()
        except (AttributeError, NotImplementedError, RuntimeError):
            pass


def resume_reading(transport: asyncio.Transport | None) -> None:
    """Read the socket again; a transport that is gone or closing is left as it is."""
    if transport is not None and not transport.is_closing():
        try:
            transport.resume_reading()
        except (AttributeError, NotImplementedError, RuntimeError):
            pass
