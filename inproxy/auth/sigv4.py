"""Verify AWS SigV4 signatures of S3 clients (header and presigned-URL auth, signed chunks)."""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .. import errors
from ..hooks import Authenticator, call_hook
from ..identity import Identity
from ..s3 import sigv4
from ..secrets import Cached
from .tokens import TokenIssuer

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..secrets import SecretsCache

# The presigned-URL parameter that is not itself signed.
_SIGNATURE_PARAM = frozenset({"X-Amz-Signature"})


class KeyStore(ABC):
    """Where client secrets come from: ``access_key -> (secret, Identity) | None``."""

    @abstractmethod
    async def lookup(self, access_key: str) -> "tuple[str, Identity] | None":
        """The secret and identity for an access key, or None if it is unknown."""


class StaticKeys(KeyStore):
    """A fixed map ``{access_key: secret}`` or ``{access_key: (secret, Identity)}``."""

    def __init__(self, keys: Mapping[str, Any]) -> None:
        self._keys = {ak: _entry(ak, value) for ak, value in keys.items()}

    def __repr__(self) -> str:
        return f"StaticKeys({len(self._keys)} keys)"

    async def lookup(self, access_key: str) -> "tuple[str, Identity] | None":
        return self._keys.get(access_key)

    def lookup_now(self, access_key: str) -> "tuple[str, Identity] | None":
        """:meth:`lookup` without a coroutine: the map is in memory."""
        return self._keys.get(access_key)


class _FunctionKeyStore(KeyStore):
    def __init__(self, fn: Callable[[str], Any]) -> None:
        self._fn = fn

    async def lookup(self, access_key: str) -> "tuple[str, Identity] | None":
        value = await call_hook(self._fn, access_key)
        return None if value is None else _entry(access_key, value)


def _entry(access_key: str, value: Any) -> "tuple[str, Identity]":
    if isinstance(value, str):
        return value, Identity(name=access_key, method="sigv4", token=access_key)
    secret, identity = value
    return secret, identity


def as_key_store(keys: Any) -> KeyStore | None:
    """A KeyStore from a mapping, a KeyStore, or a function ``access_key -> secret | (secret, Identity) | None``."""
    if keys is None or isinstance(keys, KeyStore):
        return keys
    if isinstance(keys, Mapping):
        return StaticKeys(keys)
    if callable(keys):
        return _FunctionKeyStore(keys)
    raise TypeError(f"not a key store: {keys!r}")


@dataclass
class _Signed:
    """What a verified signature leaves behind for the body: the chain of chunk signatures."""

    signing_key: bytes
    amz_date: str
    scope: str
    previous: str

    def verify_chunk(self, chunk_sha256: str, signature: str) -> None:
        expected = sigv4.chunk_signature(self.signing_key, self.amz_date, self.scope, self.previous, chunk_sha256)
        if not sigv4.signatures_equal(expected, signature):
            raise errors.SignatureDoesNotMatch("A chunk signature does not match.")
        self.previous = signature

    def verify_trailer(self, trailer: bytes, signature: str) -> None:
        expected = sigv4.trailer_signature(self.signing_key, self.amz_date, self.scope, self.previous, trailer)
        if not sigv4.signatures_equal(expected, signature):
            raise errors.SignatureDoesNotMatch("The trailer signature does not match.")


class SigV4Authenticator(Authenticator):
    """Verifies SigV4 header auth and presigned URLs against known client secrets.

    Secrets come from ``keys`` (a mapping, a :class:`KeyStore` or a function;
    lookups are cached in the SecretsCache for ``key_ttl`` seconds so that a
    revoked key stops working within it) and from session tokens issued by
    ``issuer``.  Requests without SigV4 material are not recognised (``None``),
    so another authenticator may take them.
    """

    def __init__(self, keys: Any = None, *, issuer: TokenIssuer | None = None,
                 cache: "SecretsCache | None" = None, key_ttl: float = 60.0,
                 max_skew: float = 900.0, signer: sigv4.Signer | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.keys = as_key_store(keys)
        self.issuer = issuer
        self.cache = cache
        self.key_ttl = key_ttl
        self.max_skew = max_skew
        self.signer = signer or sigv4.Signer()
        self.clock = clock
        self._namespace = object()

    async def authenticate(self, ctx: "RequestContext") -> Identity | None:
        request = ctx.request
        authorization = request.headers.get("authorization", "")
        if authorization.startswith(sigv4.ALGORITHM):
            return await self._verify_header(ctx, authorization)
        if "X-Amz-Algorithm" in ctx.s3.params:
            return await self._verify_presigned(ctx)
        return None

    async def _verify_header(self, ctx: "RequestContext", authorization: str) -> Identity:
        headers = ctx.request.headers
        auth = sigv4.parse_authorization_header(authorization)
        amz_date, when = self._request_time(headers)
        if amz_date[:8] != auth.date:
            raise errors.SignatureDoesNotMatch("The credential scope date does not match x-amz-date.")
        payload_hash = headers.get("x-amz-content-sha256")
        if payload_hash is None:
            raise errors.InvalidRequest("Missing required header for this request: x-amz-content-sha256")
        self._check_skew(when)  # before the key lookup: a stale or replayed request costs nothing more
        token = headers.get("x-amz-security-token")
        secret, identity = (self._secret_at_hand(auth.access_key, token)
                            or await self._looked_up_secret(auth.access_key))
        query = ctx.s3.canonical_query()
        key = self._check_signature(ctx, secret, auth, amz_date, query, payload_hash)
        if payload_hash.startswith(sigv4.STREAMING_PAYLOAD):  # with or without -TRAILER
            ctx.state["chunk_verifier"] = _Signed(key, amz_date, auth.scope, auth.signature)
        return identity

    async def _verify_presigned(self, ctx: "RequestContext") -> Identity:
        presign = sigv4.parse_presigned_query(ctx.s3.query)
        now = self.clock()
        start = presign.amz_seconds
        if now < start - self.max_skew:
            raise errors.AccessDenied("Request is not yet valid.")
        if now > start + presign.expires:
            raise errors.AccessDenied("Request has expired")
        secret, identity = (self._secret_at_hand(presign.access_key, presign.security_token)
                            or await self._looked_up_secret(presign.access_key))
        query = ctx.s3.canonical_query(drop=_SIGNATURE_PARAM)
        payload_hash = ctx.s3.params.get("X-Amz-Content-Sha256") or sigv4.UNSIGNED_PAYLOAD
        self._check_signature(ctx, secret, presign, presign.amz_date, query, payload_hash)
        return identity

    def _request_time(self, headers: Mapping[str, str]) -> tuple[str, float]:
        if "x-amz-date" in headers:
            amz_date = headers["x-amz-date"]
            return amz_date, sigv4.amz_date_seconds(amz_date)
        if "date" in headers:
            when = sigv4.parse_http_date(headers["date"])
            return sigv4.format_amz_date(when), when.timestamp()
        raise errors.AccessDenied("AWS authentication requires a valid Date or x-amz-date header")

    def _check_skew(self, when: float) -> None:
        if abs(self.clock() - when) > self.max_skew:
            raise errors.RequestTimeTooSkewed()

    def _check_signature(self, ctx: "RequestContext", secret: str, auth: Any, amz_date: str,
                         query: str, payload_hash: str) -> bytes:
        """Compare in constant time; try the raw path, then its canonical form (clients that
        sent characters unencoded but signed them encoded)."""
        request = ctx.request
        key = self.signer.signing_key(secret, auth.date, auth.region, auth.service)
        # canonical_headers lower-cases the names itself: the client's Host, as sent.
        headers_block = sigv4.canonical_headers(request.headers, auth.signed_headers)
        # Everything but the path, once: the canonical request is ``{method}\n{path}{rest}``.
        rest = f"\n{query}\n{headers_block}\n{auth.signed_headers_str}\n{payload_hash}"
        scope = auth.scope
        raw_path = ctx.s3.raw_path
        canonical = f"{request.method}\n{raw_path}{rest}"
        to_sign = sigv4.string_to_sign(amz_date, scope, canonical)
        if sigv4.signatures_equal(self.signer.signature(key, to_sign), auth.signature):
            return key
        normalised = sigv4.canonical_uri(raw_path)
        if normalised != raw_path:  # a client that sent characters unencoded but signed them encoded
            canonical = f"{request.method}\n{normalised}{rest}"
            to_sign = sigv4.string_to_sign(amz_date, scope, canonical)
            if sigv4.signatures_equal(self.signer.signature(key, to_sign), auth.signature):
                return key
        raise errors.SignatureDoesNotMatch(AWSAccessKeyId=auth.access_key, StringToSign=to_sign,
                                           CanonicalRequest=_redacted(canonical))

    def _secret_at_hand(self, access_key: str, session_token: str | None) -> "tuple[str, Identity] | None":
        """The secret when no I/O can be involved (a session token we issued, a StaticKeys
        map), without a coroutine; None when a key store must be awaited."""
        if self.issuer is not None and TokenIssuer.is_ours(session_token):
            return self.issuer.open(access_key, session_token, now=self.clock())
        keys = self.keys
        if keys is None:
            raise errors.InvalidAccessKeyId()
        if type(keys) is not StaticKeys:  # exactly: a subclass may override lookup
            return None
        found = keys.lookup_now(access_key)
        if found is None:
            raise errors.InvalidAccessKeyId()
        return found

    async def _looked_up_secret(self, access_key: str) -> "tuple[str, Identity]":
        found = await self._lookup(access_key)
        if found is None:
            raise errors.InvalidAccessKeyId()
        return found

    async def _lookup(self, access_key: str) -> "tuple[str, Identity] | None":
        if self.cache is None or isinstance(self.keys, StaticKeys):
            return await self.keys.lookup(access_key)
        async def fetch():
            found = await self.keys.lookup(access_key)
            # Unknown keys are remembered briefly too, so a flood of bad keys is not a flood of lookups.
            return Cached(found, ttl=min(self.key_ttl, 5.0)) if found is None else found

        return await self.cache.get(("sigv4-key", self._namespace, access_key), fetch, ttl=self.key_ttl)


_QUERY_TOKEN = re.compile(r"(^|&)(X-Amz-Security-Token=)[^&]*")


def _redacted(canonical_request: str) -> str:
    """The canonical request for an error body, without the session token's value (a header
    of header auth, a query parameter of a presigned URL)."""
    lines = canonical_request.split("\n")
    if len(lines) > 2:
        lines[2] = _QUERY_TOKEN.sub(r"\1\2<redacted>", lines[2])
    return "\n".join("x-amz-security-token:<redacted>" if line.startswith("x-amz-security-token:") else line
                     for line in lines)
