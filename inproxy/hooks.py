"""The hooks an application plugs into the proxy: lifecycle phases and the three decisions.

``ProxyHooks`` follows Pingora's ``ProxyHttp``: one async method per phase, each
with a default, all taking the per-request ``RequestContext``.  ``Authenticator``,
``Authorizer`` and ``CredentialProvider`` are the decisions every deployment
makes.  Wherever one of these is accepted, a plain function (sync or async) is
accepted too and wrapped.  A sync function runs on the event loop unless it is
marked with :func:`blocking` (or the proxy is told ``sync_hooks_in_thread=True``),
in which case it runs in the default thread pool so that it cannot stall other
requests.
"""

from __future__ import annotations

import asyncio
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

from .credentials import Credentials
from .identity import Identity

if TYPE_CHECKING:
    from aiohttp import web

    from .backend import Backend
    from .context import AccessRequest, RequestContext

F = TypeVar("F", bound=Callable[..., Any])
_BLOCKING_ATTR = "__inproxy_blocking__"


def blocking(fn: F) -> F:
    """Mark a sync hook function as blocking: the proxy runs it in a thread."""
    setattr(fn, _BLOCKING_ATTR, True)
    return fn


async def call_hook(fn: Callable[..., Any], *args: Any, in_thread: bool = False) -> Any:
    """Call a sync or async function; a sync one runs in a thread when asked or marked blocking."""
    if in_thread or getattr(fn, _BLOCKING_ATTR, False):
        if not inspect.iscoroutinefunction(fn):
            result = await asyncio.to_thread(fn, *args)
            return await result if inspect.isawaitable(result) else result
    result = fn(*args)
    return await result if inspect.isawaitable(result) else result


class ProxyHooks:
    """Lifecycle phases of a proxied request; subclass and override what you need.

    Order: authentication and authorization (the proxy's ``Authenticator`` and
    ``Authorizer``) -> ``request_filter`` -> ``upstream_peer`` -> backend
    credentials -> ``upstream_request_filter`` -> signing -> body streams through
    ``request_body_filter`` -> ``response_filter`` -> ``response_body_filter`` ->
    ``logging`` (always, once).
    """

    async def request_filter(self, ctx: "RequestContext") -> "web.Response | None":
        """Runs after the client is authenticated and authorized; return a response to answer it here."""
        return None

    async def upstream_peer(self, ctx: "RequestContext") -> "Backend | None":
        """Choose the backend; ``None`` keeps the proxy's bucket routing."""
        return None

    async def upstream_request_filter(self, ctx: "RequestContext") -> None:
        """Edit ``ctx.upstream`` (headers, path, query) before it is signed and sent."""

    async def request_body_filter(self, ctx: "RequestContext", chunk: bytes) -> bytes:
        """See (or transform, keeping the length) each request body chunk on its way upstream."""
        return chunk

    async def response_filter(self, ctx: "RequestContext", status: int, headers: list[tuple[str, str]]) -> None:
        """Edit the backend's response headers before they reach the client: ``headers`` is
        the list of ``(name, value)`` pairs (repeated names kept), changed in place."""

    async def response_body_filter(self, ctx: "RequestContext", chunk: bytes) -> bytes:
        """See each response body chunk on its way to the client."""
        return chunk

    async def logging(self, ctx: "RequestContext", error: BaseException | None) -> None:
        """Called once per request, after the end or an error."""


class Authenticator(ABC):
    """Decides who sent a request."""

    @abstractmethod
    async def authenticate(self, ctx: "RequestContext") -> Identity | None:
        """Return the Identity; ``None`` if this authenticator does not recognise the
        request (the next one is asked); raise an S3Error to refuse it."""


class Authorizer(ABC):
    """Decides whether an identity may perform an S3 operation on a bucket/key."""

    @abstractmethod
    async def authorize(self, access: "AccessRequest") -> "bool | Decision":
        """Return True/False or a :class:`Decision` (which may carry its own cache TTL)."""


class CredentialProvider(ABC):
    """Gives the backend credentials to sign a request with.

    Results are cached in the proxy's SecretsCache (honouring ``expires_at``)
    under the provider, the backend and :meth:`cache_scope`; set ``cacheable``
    to False for a provider that caches by itself or is free to call.
    """

    cacheable: bool = True

    def cache_scope(self, identity: Identity, bucket: str | None) -> tuple:
        """What the credentials depend on; the default, (identity, bucket), suits per-user keys.
        Return ``()`` when every identity and bucket get the same credentials."""
        return (identity.cache_key, bucket)

    @abstractmethod
    async def get_credentials(self, identity: Identity, bucket: str | None,
                              backend: "Backend") -> Credentials:
        """Credentials for this identity on this (client-facing) bucket's backend."""


@dataclass(frozen=True)
class Decision:
    """An authorization answer; ``ttl`` lets a cached allow/deny live that long (seconds).

    ``scope_prefix`` widens a cached answer from the one request asked about to every
    request that differs from it only by its object key (or listing prefix) starting with
    ``scope_prefix`` (a plain string prefix, as S3 prefixes are: ``"a/"``, not ``"a"``).
    ``Decision(True, ttl=60, scope_prefix="a/")`` says: for 60 s this identity may do this
    operation, on this bucket, from this address, to any key under ``a/``.  It never
    covers another identity, operation, bucket, method or source address, nor a
    bucket-level request, and it is ignored when the key asked about is outside it.  A
    scoped deny wins over a scoped allow.  Without ``ttl`` the proxy's ``cache_decisions``
    applies (and with 0 nothing is cached).
    """

    allowed: bool
    ttl: float | None = None
    reason: str = ""
    scope_prefix: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.allowed, bool):
            raise TypeError("Decision.allowed must be a bool")
        if self.ttl is not None and (isinstance(self.ttl, bool) or not self.ttl >= 0):
            raise ValueError("Decision.ttl must be a number >= 0 or None")
        if self.scope_prefix is not None and not isinstance(self.scope_prefix, str):
            raise TypeError("Decision.scope_prefix must be a str or None")

    def __bool__(self) -> bool:
        return self.allowed


class AllowAll(Authorizer):
    """Allows everything an authenticated identity asks. Only for tests and trusted set-ups."""

    async def authorize(self, access: "AccessRequest") -> bool:
        return True

    def authorize_now(self, access: "AccessRequest") -> bool:
        return True


class DenyAll(Authorizer):
    """The default: refuses every request."""

    async def authorize(self, access: "AccessRequest") -> bool:
        return False

    def authorize_now(self, access: "AccessRequest") -> bool:
        return False


class _FunctionAuthenticator(Authenticator):
    def __init__(self, fn: Callable[..., Any], in_thread: bool) -> None:
        self._fn, self._in_thread = fn, in_thread

    async def authenticate(self, ctx: "RequestContext") -> Identity | None:
        return await call_hook(self._fn, ctx, in_thread=self._in_thread)


class _FunctionAuthorizer(Authorizer):
    def __init__(self, fn: Callable[..., Any], in_thread: bool) -> None:
        self._fn, self._in_thread = fn, in_thread
        if not (in_thread or getattr(fn, _BLOCKING_ATTR, False) or inspect.iscoroutinefunction(fn)):
            # A plain function runs on the loop anyway (no deadline can interrupt it): call it
            # directly, without a coroutine and a timer (inproxy.decisions).
            self.authorize_now = fn

    async def authorize(self, access: "AccessRequest") -> "bool | Decision":
        return await call_hook(self._fn, access, in_thread=self._in_thread)


class _FunctionCredentialProvider(CredentialProvider):
    def __init__(self, fn: Callable[..., Any], in_thread: bool) -> None:
        self._fn, self._in_thread = fn, in_thread

    async def get_credentials(self, identity: Identity, bucket: str | None,
                              backend: "Backend") -> Credentials:
        value = await call_hook(self._fn, identity, bucket, in_thread=self._in_thread)
        return Credentials.coerce(value)


class _StaticCredentials(CredentialProvider):
    cacheable = False

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    async def get_credentials(self, identity: Identity, bucket: str | None,
                              backend: "Backend") -> Credentials:
        return self._credentials


def as_authenticator(obj: Any, *, in_thread: bool = False) -> Authenticator:
    """An Authenticator from an instance or a function ``(ctx) -> Identity | None``."""
    if isinstance(obj, Authenticator):
        return obj
    if callable(obj):
        return _FunctionAuthenticator(obj, in_thread)
    raise TypeError(f"not an Authenticator: {obj!r}")


def as_authorizer(obj: Any, *, in_thread: bool = False) -> Authorizer:
    """An Authorizer from an instance, a function ``(AccessRequest) -> bool | Decision``, or ``None`` (deny all)."""
    if obj is None:
        return DenyAll()
    if isinstance(obj, Authorizer):
        return obj
    if callable(obj):
        return _FunctionAuthorizer(obj, in_thread)
    raise TypeError(f"not an Authorizer: {obj!r}")


def as_credential_provider(obj: Any, *, in_thread: bool = False) -> CredentialProvider | None:
    """A CredentialProvider from an instance, Credentials, a mapping, or ``(identity, bucket) -> Credentials | dict``."""
    if obj is None or isinstance(obj, CredentialProvider):
        return obj
    if isinstance(obj, (Credentials, Mapping)):
        return _StaticCredentials(Credentials.coerce(obj))
    if callable(obj):
        return _FunctionCredentialProvider(obj, in_thread)
    raise TypeError(f"not a CredentialProvider: {obj!r}")
