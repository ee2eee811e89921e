"""The simple form: two functions, ``validator(token, bucket)`` and ``fetch_credentials(token, bucket)``.

For applications whose whole access model is "this token may use that bucket,
with these backend credentials"::

    simple = SimpleTokenAuth(validator=may_use, fetch_credentials=backend_keys_for)
    async with ProxyServer(backends=backend, **simple.proxy_options()) as proxy:
        ...

What *token* is: the credential the client presented, i.e. ``identity.token``:

* for ``Authorization: Bearer <token>`` requests, the bearer token itself (any
  opaque string: ``.authenticator`` recognises it, the validator judges it);
* for SigV4-signed requests (keys given to the proxy with ``keys=``, or
  credentials from :meth:`~inproxy.ProxyServer.issue_credentials` or the STS
  endpoint), the client's access key id.

``validator(token, bucket) -> bool`` and ``fetch_credentials(token, bucket) ->
Credentials | dict | str`` may be sync or async (sync ones that block should
be marked with :func:`~inproxy.blocking`, or pass ``in_thread=True``).
``bucket`` is the client-facing bucket name (``ListBuckets`` asks the validator
once per configured bucket).  A ``str`` from ``fetch_credentials`` is
``"access_key:secret_key"`` or ``"access_key:secret_key:session_token"``; a
dict uses the key names :meth:`~inproxy.Credentials.coerce` knows
(``access_key``/``aws_access_key_id``/``AccessKeyId``, ...).  Backend
credentials are cached per (token, bucket) in the proxy's SecretsCache: for
its default TTL (300 s unless configured), never past their ``expires_at``.

The three parts:

* ``.authenticator``: ``Authorization: Bearer <token>`` ->
  ``Identity(name="token:<sha256 prefix>", method="token", token=<token>)``;
  other requests are not recognised (SigV4 may take them).  It does not call
  the validator: the bucket is judged per request by...
* ``.authorizer``: allowed iff ``validator(identity.token, bucket)`` is true
  (an identity without a token is refused);
* ``.credential_provider``: ``fetch_credentials(identity.token, bucket)``.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .. import errors
from ..credentials import Credentials
from ..hooks import Authenticator, Authorizer, CredentialProvider, call_hook
from ..identity import Identity
from .jwt import bearer_token

if TYPE_CHECKING:
    from ..backend import Backend
    from ..context import AccessRequest, RequestContext

Validator = Callable[[str, "str | None"], "bool | Awaitable[bool]"]
Fetcher = Callable[[str, "str | None"], Any]


class SimpleTokenAuth:
    """Adapts ``validator`` and ``fetch_credentials`` to the proxy's three decisions."""

    def __init__(self, validator: Validator, fetch_credentials: Fetcher, *, in_thread: bool = False) -> None:
        self.authenticator = SimpleBearerAuthenticator()
        self.authorizer = SimpleAuthorizer(validator, in_thread=in_thread)
        self.credential_provider = SimpleCredentialProvider(fetch_credentials, in_thread=in_thread)

    def proxy_options(self) -> dict[str, Any]:
        """``authenticator=``, ``authorizer=`` and ``credential_provider=`` for :class:`~inproxy.ProxyServer`."""
        return {"authenticator": self.authenticator, "authorizer": self.authorizer,
                "credential_provider": self.credential_provider}


class SimpleBearerAuthenticator(Authenticator):
    """Any bearer token becomes an identity; whether it may do anything is the validator's call."""

    async def authenticate(self, ctx: "RequestContext") -> Identity | None:
        token = bearer_token(ctx.request.headers)
        if token is None:
            return None
        if not token:
            raise errors.InvalidToken()
        return Identity(name="token:" + token_digest(token)[:16], method="token", token=token)


class SimpleAuthorizer(Authorizer):
    """Allowed iff ``validator(identity.token, bucket)``."""

    def __init__(self, validator: Validator, *, in_thread: bool = False) -> None:
        self._validator, self._in_thread = validator, in_thread

    async def authorize(self, access: "AccessRequest") -> bool:
        token = access.identity.token
        if not token:
            return False
        return bool(await call_hook(self._validator, token, access.bucket, in_thread=self._in_thread))


class SimpleCredentialProvider(CredentialProvider):
    """Backend credentials from ``fetch_credentials(identity.token, bucket)``, cached per (token, bucket)."""

    def __init__(self, fetch_credentials: Fetcher, *, in_thread: bool = False) -> None:
        self._fetch, self._in_thread = fetch_credentials, in_thread

    def cache_scope(self, identity: Identity, bucket: str | None) -> tuple:
        return (token_digest(identity.token or ""), bucket)

    async def get_credentials(self, identity: Identity, bucket: str | None, backend: "Backend") -> Credentials:
        if not identity.token:
            raise errors.AccessDenied()
        value = await call_hook(self._fetch, identity.token, bucket, in_thread=self._in_thread)
        return credentials_from(value)


def credentials_from(value: Any) -> Credentials:
    """Credentials from a Credentials, a mapping, or ``"access_key:secret_key[:session_token]"``."""
    if isinstance(value, str):
        parts = value.split(":", 2)
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise ValueError("fetch_credentials returned a string that is not 'access_key:secret_key'")
        return Credentials(parts[0], parts[1], parts[2] if len(parts) == 3 and parts[2] else None)
    return Credentials.coerce(value)


def token_digest(token: str) -> str:
    """A SHA-256 hex digest of a token: safe to log and to use in cache keys."""
    return hashlib.sha256(token.encode()).hexdigest()
