"""The per-request context that carries state from one lifecycle phase to the next."""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

from .errors import new_request_id

if TYPE_CHECKING:
    from .backend import Backend
    from .credentials import Credentials
    from .front import FrontRequest
    from .identity import Identity
    from .s3.request import S3Request


class RequestIds:
    """Request ids like S3's (16 upper-case hex characters), unique within a proxy: a random
    prefix and a counter, so that an id costs no system call (one per proxy, no global state)."""

    def __init__(self) -> None:
        self._prefix = secrets.randbits(32)
        self._count = itertools.count(secrets.randbits(24))

    def __call__(self) -> str:
        return f"{self._prefix:08X}{next(self._count) & 0xFFFFFFFF:08X}"


@dataclass
class AccessRequest:
    """Everything an Authorizer may base a decision on (and so what a cached decision is keyed by)."""

    identity: "Identity"
    operation: str
    bucket: str | None
    key: str | None = None
    prefix: str | None = None
    method: str = "GET"
    source_ip: str | None = None

    @property
    def cache_key(self) -> tuple:
        """Every input of the decision: a cached decision can serve nothing else."""
        return (self.identity.cache_key, self.operation, self.bucket, self.key, self.prefix,
                self.method, self.source_ip)


@dataclass
class UpstreamRequest:
    """The request about to be sent to the backend; hooks may edit it before it is signed."""

    method: str
    scheme: str
    host: str  # host[:port], exactly as sent in the Host header and signed
    path: str  # already percent-encoded
    query: str  # already encoded, canonical order
    headers: dict[str, str]  # lower-case names
    payload_hash: str = "UNSIGNED-PAYLOAD"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.target}"

    @property
    def target(self) -> str:
        """The request target: path and query, as in the request line."""
        return f"{self.path}?{self.query}" if self.query else self.path


@dataclass
class RequestContext:
    """State of one request through the proxy, handed to every hook.

    ``state`` is free for the application's hooks.  ``body`` is the request
    body as it will be forwarded: an authenticator or hook may wrap it (to
    verify chunk signatures, say) but must keep it streaming.
    """

    request: "FrontRequest"
    s3: "S3Request | None" = None
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.monotonic)
    identity: "Identity | None" = None
    backend: "Backend | None" = None
    credentials: "Credentials | None" = field(default=None, repr=False)
    upstream: UpstreamRequest | None = None
    body: AsyncIterator[bytes] | None = field(default=None, repr=False)
    body_length: int | None = None
    status: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    error: BaseException | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def access(self) -> AccessRequest:
        """The authorization question this request asks."""
        assert self.identity is not None and self.s3 is not None, "asked only after authentication"
        return AccessRequest(self.identity, self.s3.operation, self.s3.bucket, self.s3.key,
                             self.s3.prefix, self.s3.method, self.request.remote)
