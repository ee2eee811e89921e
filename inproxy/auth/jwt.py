"""JWT (OIDC ID/access token) verification and ``Authorization: Bearer`` authentication.

:class:`JWTVerifier` checks a JWT with PyJWT against signing keys that come from

* the issuer's OIDC discovery document
  (``{issuer}/.well-known/openid-configuration`` -> ``jwks_uri``),
* an explicit ``jwks_url``, and/or
* static keys (PEM, cryptography key objects, JWK / JWKS dicts), plus an
  HMAC ``shared_secret`` for ``HS*`` tokens (only when configured explicitly).

Remote key sets are fetched with aiohttp (never blocking the event loop),
cached for ``jwks_ttl`` seconds and refreshed early when a token names a key id
that the cached set does not have; such refreshes happen at most once every
``min_refresh_interval`` seconds, so a flood of tokens with made-up ``kid``\\ s
costs at most one fetch per interval.  When a refresh fails, the keys already
cached stay in use.

Every token must carry an ``alg`` from the configured list (``RS256`` and
``ES256`` by default; ``none`` is never accepted) that fits the key it is
checked with: an RSA key only verifies ``RS*``/``PS*``, an EC key only the
``ES*`` of its curve, and HMAC algorithms only ever use the configured shared
secret, so a token cannot turn a public key into an HMAC secret.  ``iss`` and
``aud`` are checked when configured (and are then required); ``exp`` is
required by default; ``exp`` and ``nbf`` are checked against ``clock`` with
``leeway`` seconds of tolerance.

Errors are S3 errors: :class:`JWTMalformed` (``InvalidToken``, 400) for
tokens that cannot be parsed or use an algorithm that is not accepted,
:class:`JWTExpired` (``ExpiredToken``, 400), :class:`JWTRejected`
(``AccessDenied``, 403) for a bad signature, unknown key, wrong issuer or
audience, a token not yet valid or a missing claim, and :class:`KeysUnavailable`
(``ServiceUnavailable``, 503) when no key set could ever be fetched.  Their
messages never contain the token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl as ssl_module
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Mapping, Sequence

import aiohttp
import jwt as pyjwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .. import errors
from ..hooks import Authenticator, call_hook
from ..identity import Identity

if TYPE_CHECKING:
    from ..context import RequestContext

log = logging.getLogger("inproxy.auth.jwt")

DEFAULT_ALGORITHMS = ("RS256", "ES256")
DISCOVERY_PATH = "/.well-known/openid-configuration"

# Which kind of key verifies which algorithm ("oct" = the configured shared secret only).
_FAMILY = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA", "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "EC", "ES384": "EC", "ES512": "EC", "EdDSA": "OKP",
    "HS256": "oct", "HS384": "oct", "HS512": "oct",
}
_CURVE = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}

IdentityMapper = Callable[[Mapping[str, Any]], "Identity | Awaitable[Identity]"]


class JWTMalformed(errors.InvalidToken):
    """The token cannot be parsed, or its header asks for an algorithm that is not accepted."""

    default_message = "The provided token is malformed or otherwise invalid."


class JWTRejected(errors.AccessDenied):
    """A well-formed token that fails verification (signature, key, issuer, audience, time, claims)."""

    default_message = "The provided token is not valid for this service."


class JWTExpired(errors.ExpiredToken):
    """The token's ``exp`` has passed (beyond the leeway)."""

    default_message = "The provided token has expired."


class KeysUnavailable(errors.ServiceUnavailable):
    """The issuer's signing keys could not be fetched and none are cached."""

    default_message = "The token issuer's signing keys are unavailable. Please try again."


@dataclass(frozen=True)
class VerificationKey:
    """One key a token may be verified with; ``kid``/``alg`` ``None`` match any."""

    key: Any = dataclasses.field(repr=False)
    family: str  # "RSA", "EC", "OKP" or "oct"
    kid: str | None = None
    alg: str | None = None
    curve: str | None = None

    def fits(self, kid: str | None, alg: str) -> bool:
        """Whether a token with this header ``kid``/``alg`` may be checked with this key."""
        if _FAMILY.get(alg) != self.family or (self.alg is not None and self.alg != alg):
            return False
        if alg in _CURVE and self.curve != _CURVE[alg]:
            return False
        return kid is None or self.kid is None or kid == self.kid


def default_identity(claims: Mapping[str, Any]) -> Identity:
    """``Identity(name=sub, method="jwt", claims=<all claims>)``; no ``sub`` is refused."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise JWTRejected("The token has no subject.")
    return Identity(name=subject, method="jwt", claims=dict(claims))


class JWTVerifier:
    """Verifies JWTs from one issuer (see the module documentation for the rules).

    Parameters:
        audience: the accepted ``aud`` value(s); required.  ``None`` disables the
            audience check explicitly (not recommended: any token of the issuer passes).
        issuer: the expected ``iss``; also where OIDC discovery looks when neither
            ``jwks_url`` nor static keys are given.  ``None``: ``iss`` is not checked.
        jwks_url: fetch the key set here instead of through discovery.
        keys: static public keys: one or a list of PEM (key or certificate), cryptography
            public key objects, JWK dicts or a JWKS dict; or ``{kid: key}``.
        shared_secret: the HMAC secret for ``HS*`` algorithms (which must then be listed
            in ``algorithms``); at least 32 bytes.
        algorithms: the accepted ``alg`` values.
        leeway: seconds of clock tolerance for ``exp`` and ``nbf``.
        required_claims: claims every token must have (``iss``/``aud`` are added when checked).
        identity_from_claims: ``claims -> Identity`` (sync or async; may raise an S3Error);
            :func:`default_identity` by default.
        jwks_ttl: seconds a fetched key set is used before it is fetched again.
        min_refresh_interval: the least number of seconds between two fetches.
        http_timeout: seconds for one discovery or JWKS fetch.
        ssl: TLS settings for those fetches (an SSLContext, or False to skip verification).
        clock: the time source for ``exp``/``nbf`` (UNIX seconds).
    """

    def __init__(self, *, audience: "str | Sequence[str] | None", issuer: str | None = None,
                 jwks_url: str | None = None, keys: Any = None, shared_secret: "bytes | str | None" = None,
                 algorithms: Sequence[str] = DEFAULT_ALGORITHMS, leeway: float = 30.0,
                 required_claims: Sequence[str] = ("exp",),
                 identity_from_claims: IdentityMapper | None = None, jwks_ttl: float = 300.0,
                 min_refresh_interval: float = 10.0, http_timeout: float = 10.0,
                 ssl: "ssl_module.SSLContext | bool | None" = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.algorithms = _check_algorithms(algorithms, shared_secret is not None)
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.required_claims = tuple(required_claims)
        self.identity_from_claims = identity_from_claims or default_identity
        self.clock = clock
        self._static = _static_keys(keys) + _secret_keys(shared_secret)
        self._remote = self._remote_keys(jwks_url, jwks_ttl, min_refresh_interval, http_timeout, ssl)
        if self._remote is None and not self._static:
            raise ValueError("JWTVerifier needs an issuer (for discovery), a jwks_url, keys or a shared_secret")

    def __repr__(self) -> str:
        return (f"JWTVerifier(issuer={self.issuer!r}, audience={self.audience!r}, "
                f"algorithms={list(self.algorithms)!r})")

    def _remote_keys(self, jwks_url: str | None, ttl: float, interval: float, timeout: float,
                     ssl: Any) -> "RemoteKeySet | None":
        if jwks_url is None and (self._static or self.issuer is None):
            return None
        fetcher = _HTTPFetcher(timeout, ssl)
        locate = _fixed(jwks_url) if jwks_url is not None else _discovery(self.issuer, fetcher)
        return RemoteKeySet(locate, fetcher, ttl=ttl, min_refresh_interval=interval)

    @property
    def key_set(self) -> "RemoteKeySet | None":
        """The remotely fetched key set (``None`` when only static keys are used)."""
        return self._remote

    async def verify(self, token: str) -> Identity:
        """The Identity behind a valid token; raise an S3 error for anything else."""
        claims = await self.decode(token)
        return await self.identity_for(claims)

    async def identity_for(self, claims: Mapping[str, Any]) -> Identity:
        """Map verified claims to an Identity with ``identity_from_claims``."""
        identity = await call_hook(self.identity_from_claims, claims)
        if not isinstance(identity, Identity):
            raise JWTRejected("The token does not name an identity.")
        return identity

    async def decode(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``."""
        alg, kid = self._header(token)
        candidates = await self._candidates(kid, alg)
        if not candidates:
            raise JWTRejected("The token's signing key is unknown.")
        claims = self._decode_with(token, alg, candidates)
        self._check_times(claims)
        return claims

    def _header(self, token: str) -> tuple[str, str | None]:
        if not isinstance(token, str) or not token or len(token) > 64 * 1024:
            raise JWTMalformed()
        try:
            header = pyjwt.get_unverified_header(token)
        except pyjwt.PyJWTError:
            raise JWTMalformed() from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise JWTMalformed("The token's signing algorithm is not accepted.")
        if kid is not None and not isinstance(kid, str):
            raise JWTMalformed()
        return alg, kid

    async def _candidates(self, kid: str | None, alg: str) -> list[VerificationKey]:
        static = [k for k in self._static if k.fits(kid, alg)]
        if self._remote is None:
            return static
        remote = await self._remote.keys_for(kid)
        return static + [k for k in remote if k.fits(kid, alg)]

    def _decode_with(self, token: str, alg: str, candidates: Iterable[VerificationKey]) -> dict[str, Any]:
        for candidate in candidates:
            try:
                return pyjwt.decode(token, candidate.key, algorithms=[alg], audience=self.audience,
                                    issuer=self.issuer, options=self._options())
            except pyjwt.InvalidSignatureError:
                continue
            except (pyjwt.PyJWTError, ValueError, TypeError) as exc:
                raise _translate(exc) from None
        raise JWTRejected("The token signature is not valid.")

    def _options(self) -> dict[str, Any]:
        required = list(self.required_claims)
        required += [c for c, on in (("iss", self.issuer), ("aud", self.audience)) if on and c not in required]
        return {"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                "verify_aud": self.audience is not None, "require": required,
                "enforce_minimum_key_length": True}

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self.clock()
        exp, nbf = _number(claims, "exp"), _number(claims, "nbf")
        if exp is not None and now >= exp + self.leeway:
            raise JWTExpired()
        if nbf is not None and now + self.leeway < nbf:
            raise JWTRejected("The token is not yet valid.")


class BearerAuthenticator(Authenticator):
    """``Authorization: Bearer <jwt>`` -> the verifier's Identity (with ``token`` set to the JWT).

    Requests without a bearer token are not recognised (``None``), so other
    authenticators (SigV4) still get them; a bearer token that fails
    verification refuses the request.
    """

    def __init__(self, verifier: JWTVerifier) -> None:
        self.verifier = verifier

    def __repr__(self) -> str:
        return f"BearerAuthenticator({self.verifier!r})"

    async def authenticate(self, ctx: "RequestContext") -> Identity | None:
        token = bearer_token(ctx.request.headers)
        if token is None:
            return None
        if not token:
            raise JWTMalformed()
        identity = await self.verifier.verify(token)
        return dataclasses.replace(identity, token=token)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer`` header ("" if empty); ``None`` if there is none."""
    scheme, _, rest = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return rest.strip()


# -- remote key sets ------------------------------------------------------------------------


class RemoteKeySet:
    """A JWKS fetched over HTTP: cached for ``ttl``, refreshed at most every ``min_refresh_interval``.

    ``locate()`` gives the JWKS URL (a fixed one, or found through OIDC
    discovery); concurrent refreshes on one event loop share a single fetch.
    ``fetches`` counts fetch attempts.
    """

    def __init__(self, locate: Callable[[], Awaitable[str]], fetcher: "_HTTPFetcher", *,
                 ttl: float, min_refresh_interval: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._locate, self._fetcher = locate, fetcher
        self.ttl, self.min_refresh_interval, self._monotonic = ttl, min_refresh_interval, monotonic
        self._keys: list[VerificationKey] | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._inflight: "tuple[asyncio.AbstractEventLoop, asyncio.Task[None]] | None" = None
        self.fetches = 0

    async def keys_for(self, kid: str | None) -> list[VerificationKey]:
        """The cached keys, refreshed first when stale or when ``kid`` is unknown (rate-limited)."""
        await self._join()
        if self._stale() and self._may_fetch():
            await self.refresh()
        keys = self._keys or []
        if kid is not None and all(k.kid != kid for k in keys) and self._may_fetch():
            await self.refresh()
            keys = self._keys or []
        if self._keys is None:
            raise KeysUnavailable()
        return keys

    def _stale(self) -> bool:
        return self._monotonic() - self._fetched_at >= self.ttl

    def _may_fetch(self) -> bool:
        return self._monotonic() - self._attempted_at >= self.min_refresh_interval

    async def _join(self) -> None:
        """Wait for a fetch already running on this loop (its result is what we would get)."""
        inflight = self._inflight
        if inflight is not None and inflight[0] is asyncio.get_running_loop() and not inflight[1].done():
            await asyncio.shield(inflight[1])

    async def refresh(self) -> None:
        """Fetch the key set now (joining a fetch already running on this loop)."""
        loop = asyncio.get_running_loop()
        inflight = self._inflight
        if inflight is None or inflight[0] is not loop or inflight[1].done():
            self._attempted_at = self._monotonic()
            inflight = (loop, loop.create_task(self._fetch()))
            self._inflight = inflight
        await asyncio.shield(inflight[1])

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            url = await self._locate()
            keys = jwks_keys(await self._fetcher.get_json(url))
        except Exception as exc:  # kept quiet: the cached keys (if any) stay in use
            log.warning("fetching the JWT signing keys failed (%s); %s", type(exc).__name__,
                        "keeping the cached keys" if self._keys else "no keys cached")
            return
        self._keys, self._fetched_at = keys, self._monotonic()
        log.debug("fetched %d JWT signing keys", len(keys))


class _HTTPFetcher:
    """GETs a small JSON document (discovery or JWKS) without blocking the loop."""

    max_bytes = 1024 * 1024

    def __init__(self, timeout: float, ssl: Any) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl = True if ssl is None else ssl

    async def get_json(self, url: str) -> Any:
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            async with session.get(url, ssl=self._ssl, headers={"accept": "application/json"}) as response:
                if response.status != 200:
                    raise OSError(f"HTTP {response.status} from the key server")
                body = await _read_bounded(response, self.max_bytes)
        return json.loads(body)


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    parts, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ValueError("key server document too large")
        parts.append(chunk)
    return b"".join(parts)


def _fixed(url: str) -> Callable[[], Awaitable[str]]:
    async def locate() -> str:
        return url
    return locate


def _discovery(issuer: str, fetcher: _HTTPFetcher) -> Callable[[], Awaitable[str]]:
    """``jwks_uri`` from the issuer's OIDC discovery document (looked up on every refresh)."""
    async def locate() -> str:
        document = await fetcher.get_json(issuer.rstrip("/") + DISCOVERY_PATH)
        if not isinstance(document, dict) or document.get("issuer", "").rstrip("/") != issuer.rstrip("/"):
            raise ValueError("the discovery document names another issuer")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise ValueError("the discovery document has no jwks_uri")
        return uri
    return locate


# -- keys -----------------------------------------------------------------------------------


def jwks_keys(document: Any) -> list[VerificationKey]:
    """The signature keys of a JWKS document; symmetric, encryption-only and unusable keys are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys = []
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") == "oct" or jwk.get("use", "sig") != "sig":
            continue
        try:
            keys.append(_from_jwk(jwk))
        except (pyjwt.PyJWTError, ValueError, TypeError, KeyError):
            log.debug("skipping an unusable JWK (kid %r)", jwk.get("kid"))
    return keys


def _from_jwk(jwk: Mapping[str, Any]) -> VerificationKey:
    parsed = pyjwt.PyJWK(dict(jwk))
    key = parsed.key
    kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) else None
    alg = jwk.get("alg") if isinstance(jwk.get("alg"), str) else None
    return _key(key, kid=kid, alg=alg)


def _key(key: Any, *, kid: str | None = None, alg: str | None = None) -> VerificationKey:
    """A VerificationKey for a cryptography public (or private: its public half) key."""
    if hasattr(key, "public_key") and not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        key = key.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return VerificationKey(key, "RSA", kid, alg)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return VerificationKey(key, "EC", kid, alg, key.curve.name)
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return VerificationKey(key, "OKP", kid, alg)
    raise ValueError(f"unsupported key type {type(key).__name__}")


def _static_keys(keys: Any) -> list[VerificationKey]:
    if keys is None:
        return []
    if isinstance(keys, Mapping) and "keys" in keys:
        return jwks_keys(keys)
    if isinstance(keys, Mapping) and "kty" in keys:
        return [_from_jwk(keys)]
    if isinstance(keys, Mapping):
        return [dataclasses.replace(k, kid=kid) for kid, value in keys.items() for k in _static_keys(value)]
    if isinstance(keys, (list, tuple)):
        return [k for value in keys for k in _static_keys(value)]
    return [_key(_load_pem(keys) if isinstance(keys, (str, bytes)) else keys)]


def _load_pem(pem: "str | bytes") -> Any:
    data = pem.encode() if isinstance(pem, str) else pem
    if b"CERTIFICATE" in data:
        return x509.load_pem_x509_certificate(data).public_key()
    return load_pem_public_key(data)


def _secret_keys(secret: "bytes | str | None") -> list[VerificationKey]:
    if secret is None:
        return []
    data = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(data) < 32:
        raise ValueError("shared_secret must be at least 32 bytes")
    return [VerificationKey(data, "oct")]


def _check_algorithms(algorithms: Sequence[str], has_secret: bool) -> tuple[str, ...]:
    algs = tuple(algorithms)
    if not algs:
        raise ValueError("algorithms must not be empty")
    unknown = [a for a in algs if a not in _FAMILY]
    if unknown:
        raise ValueError(f"unsupported JWT algorithms (never 'none'): {unknown}")
    hmac_algs = [a for a in algs if _FAMILY[a] == "oct"]
    if hmac_algs and not has_secret:
        raise ValueError("HS* algorithms need an explicit shared_secret")
    if has_secret and not hmac_algs:
        raise ValueError("a shared_secret needs an HS* algorithm listed in algorithms")
    return algs


# -- errors ---------------------------------------------------------------------------------


def _translate(exc: Exception) -> errors.S3Error:
    """A PyJWT failure as the S3 error the client gets (never quoting the token)."""
    if isinstance(exc, pyjwt.InvalidAudienceError):
        return JWTRejected("The token is not intended for this audience.")
    if isinstance(exc, pyjwt.InvalidIssuerError):
        return JWTRejected("The token's issuer is not trusted.")
    if isinstance(exc, pyjwt.MissingRequiredClaimError):
        return JWTRejected(f"The token lacks the required claim {exc.claim!r}.")
    if isinstance(exc, pyjwt.InvalidKeyError):
        return JWTRejected("The token's signing key is not acceptable.")
    if isinstance(exc, pyjwt.ExpiredSignatureError):
        return JWTExpired()
    if isinstance(exc, pyjwt.ImmatureSignatureError):
        return JWTRejected("The token is not yet valid.")
    return JWTMalformed()


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JWTMalformed(f"The token's {name} claim is not a number.")
    return float(value)
