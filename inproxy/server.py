"""ProxyServer: binds the proxy inside the host application's running event loop."""

from __future__ import annotations

import asyncio
import logging
import ssl
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

from .auth.sigv4 import SigV4Authenticator
from .auth.tokens import TokenIssuer
from .backend import Backend, BackendMap
from .clients import ClientHelpers
from .credentials import Credentials
from .front import FrontServer
from .hooks import ProxyHooks, as_authenticator, as_authorizer, as_credential_provider
from .identity import Identity
from .pipeline import Pipeline
from .s3.sigv4 import Signer
from .secrets import SecretsCache
from .threaded import ThreadRunner
from .upstream import UpstreamPool

log = logging.getLogger("inproxy")
# After the grace period, how long cancelled requests and closing connections may take.
_ABORT_SECONDS = 3.0


class ProxyServer(ClientHelpers):
    """An S3 reverse proxy bound in the running event loop.

    ``async with ProxyServer(backends=..., authenticator=..., authorizer=...) as proxy:``
    binds ``host:port`` (loopback and an ephemeral port by default) and serves
    until the block ends.  With no ``authorizer`` every request is denied;
    pass :class:`~inproxy.AllowAll` to allow everything explicitly.

    Parameters:
        backends: a Backend (the default route) or ``{"bucket": Backend, "*": default}``.
        keys: client SigV4 keys: ``{access_key: secret}`` (or ``(secret, Identity)``
            values), a :class:`~inproxy.auth.sigv4.KeyStore`, or a function
            ``access_key -> secret | (secret, Identity) | None``.  Turns SigV4
            verification on; lookups are cached for ``key_ttl`` seconds.
        authenticator: one Authenticator (or function) or a list; the first that
            recognises a request decides.  With ``keys``, SigV4 is asked first;
            without, it is asked last (it still accepts :meth:`issue_credentials` keys).
        token_key: the key that seals :meth:`issue_credentials` tokens (random per
            proxy by default; share it to let several proxies accept the same ones).
        max_skew: the accepted clock difference of signed requests, seconds.
        authorizer: an Authorizer or ``(AccessRequest) -> bool | Decision``.
        credential_provider: backend credentials for backends that have none of their own.
        hooks: a :class:`~inproxy.ProxyHooks` subclass instance for the lifecycle phases.
        cache: a :class:`~inproxy.SecretsCache` (shareable between proxies); a new one by default.
        cache_decisions: seconds an authorization decision is cached (0: never), keyed by
            every input of the decision.
        base_domains: domains for virtual-host style (``bucket.<domain>``), e.g. ``["localhost"]``.
        ssl: an ``ssl.SSLContext`` to serve HTTPS.
        sync_hooks_in_thread: run every sync hook function in a thread (else only those
            marked with :func:`~inproxy.blocking`).
        endpoints: extra services answered on the proxy's own endpoint before S3
            (e.g. the STS exchange); each has ``async handle(ctx) -> response | None`` and
            an optional ``bind(proxy)`` called here.
        upstream_client: ``"lean"`` (default: pooled asyncio connections with aiohttp's C
            parser, the cheaper per request) or ``"aiohttp"`` (aiohttp's ClientSession).
        shutdown_timeout: seconds ``stop()`` lets in-flight requests finish.
        keepalive_timeout: seconds an idle client connection stays open.
        client_timeout: seconds a client may send none of its request body, or read none of
            its answer, before the proxy gives up on it (``RequestTimeout``, or a closed
            connection once the answer has started).
        max_splices: large bodies spliced socket to socket at once (each holds a 1 MiB
            kernel pipe, which counts against the user's pipe quota); beyond it they are
            copied through Python.  0: never splice.
    """

    def __init__(self, backends: "Mapping[str, Backend] | Backend | None" = None, *,
                 keys: Any = None, authenticator: Any = None, authorizer: Any = None,
                 credential_provider: Any = None, hooks: ProxyHooks | None = None,
                 cache: SecretsCache | None = None, cache_decisions: float = 0.0,
                 host: str = "127.0.0.1", port: int = 0, ssl: ssl.SSLContext | None = None,
                 base_domains: Sequence[str] = (), sync_hooks_in_thread: bool = False,
                 max_header_bytes: int = 16 * 1024, authorize_timeout: float = 10.0,
                 token_key: bytes | None = None, max_skew: float = 900.0, key_ttl: float = 60.0,
                 verify_payload_hash: bool = True, endpoints: Sequence[Any] = (),
                 upstream_client: str = "lean", shutdown_timeout: float = 5.0,
                 keepalive_timeout: float = 75.0, client_timeout: float = 60.0,
                 max_splices: int = 32) -> None:
        self.host, self._requested_port, self.ssl = host, port, ssl
        self.shutdown_timeout = shutdown_timeout
        self.keepalive_timeout = keepalive_timeout
        self.client_timeout = client_timeout
        self.cache = cache if cache is not None else SecretsCache()
        self.backends = BackendMap(backends)
        self._pool = UpstreamPool(client=upstream_client)
        self.issuer = TokenIssuer(token_key)
        signer = Signer()
        self.sigv4 = sigv4_auth = SigV4Authenticator(
            keys, issuer=self.issuer, cache=self.cache, key_ttl=key_ttl, max_skew=max_skew, signer=signer)
        custom = authenticator if isinstance(authenticator, (list, tuple)) else [authenticator]
        authenticators = [as_authenticator(a, in_thread=sync_hooks_in_thread) for a in custom if a is not None]
        authenticators = [sigv4_auth, *authenticators] if keys is not None else [*authenticators, sigv4_auth]
        self.pipeline = Pipeline(
            backends=self.backends,
            authenticators=authenticators,
            authorizer=as_authorizer(authorizer, in_thread=sync_hooks_in_thread),
            credential_provider=as_credential_provider(credential_provider, in_thread=sync_hooks_in_thread),
            hooks=hooks or ProxyHooks(), cache=self.cache, signer=signer, pool=self._pool,
            base_domains=base_domains, max_header_bytes=max_header_bytes,
            authorize_timeout=authorize_timeout, cache_decisions=cache_decisions,
            verify_payload_hash=verify_payload_hash, endpoints=endpoints, max_splices=max_splices,
        )
        for endpoint in endpoints:
            if hasattr(endpoint, "bind"):
                endpoint.bind(self)
        self._front: FrontServer | None = None
        self.port: int | None = None

    @property
    def endpoint_url(self) -> str:
        """``http(s)://host:port`` of the bound proxy."""
        if self.port is None:
            raise RuntimeError("the proxy is not started")
        scheme = "https" if self.ssl else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def issue_credentials(self, identity: "Identity | str", ttl: float = 3600.0) -> Credentials:
        """Temporary client credentials (access key, secret, session token) bound to
        ``identity`` that only this proxy (or proxies sharing ``token_key``) accepts."""
        if isinstance(identity, str):
            identity = Identity(name=identity, method="issued")
        return self.issuer.issue(identity, ttl)

    async def start(self) -> "ProxyServer":
        """Bind and start serving in the running event loop."""
        if self._front is not None:
            raise RuntimeError("already started")
        front = FrontServer(self.pipeline.handle, max_header_bytes=self.pipeline.max_header_bytes,
                            keepalive_timeout=self.keepalive_timeout, client_timeout=self.client_timeout)
        self.port = await front.start(self.host, self._requested_port, self.ssl)  # port 0 -> ephemeral
        self._front = front
        log.info("inproxy listening on %s", self.endpoint_url)
        return self

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within ``shutdown_timeout``, then close.

        Returns within ``shutdown_timeout`` plus a few seconds whatever clients and backends
        do: requests still running after the grace period are aborted.
        """
        front, self._front = self._front, None
        if front is None:
            return
        try:
            await front.stop(self.shutdown_timeout, _ABORT_SECONDS)
        finally:
            await self._pool.close()
            self.pipeline.pipes.close()
            self.port = None

    async def __aenter__(self) -> "ProxyServer":
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @classmethod
    @contextmanager
    def run_in_thread(cls, *args: Any, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
                      **kwargs: Any) -> Iterator["ProxyServer"]:
        """Run a proxy on its own event loop in a daemon thread, for sync code and notebooks::

            with ProxyServer.run_in_thread(backends=..., authorizer=...) as proxy:
                boto3.client("s3", endpoint_url=proxy.endpoint_url, ...)
        """
        runner = ThreadRunner(lambda: cls(*args, **kwargs), loop_factory)
        proxy = runner.start()
        try:
            yield proxy
        finally:
            runner.stop()
