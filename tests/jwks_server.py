"""A local OIDC identity provider for the tests: discovery document, JWKS, token signing.

Runs an aiohttp server on 127.0.0.1 (an ephemeral port) inside the test's
event loop.  Keys are generated with cryptography; a key can be made
(``add_key``) without being published, published later (rotation) or
withdrawn.  Counters record how often the discovery document and the JWKS
were fetched.  ``forge`` builds tokens PyJWT would refuse to produce
(``alg: none``, HS256 keyed with a public key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "inproxy-tests"
CLIENT_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")  # the clients' own logs are not the proxy's


@dataclass
class SigningKey:
    """A private key with its kid and algorithm."""

    kid: str
    alg: str
    private: Any = field(repr=False)

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.algorithms.RSAAlgorithm if self.alg.startswith(("RS", "PS")) else jwt.algorithms.ECAlgorithm
        jwk = json.loads(algorithm.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)


class OIDCProvider:
    """``async with OIDCProvider() as idp``: an issuer at ``idp.issuer`` with one RSA and one EC key."""

    def __init__(self) -> None:
        self.keys: dict[str, SigningKey] = {}
        self.published: list[str] = []
        self.discovery_fetches = 0
        self.jwks_fetches = 0
        self.fail_jwks = False
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/keys"

    async def __aenter__(self) -> "OIDCProvider":
        self.rsa_kid = self.add_key("RS256")
        self.ec_kid = self.add_key("ES256")
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/keys", self._jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def add_key(self, alg: str = "RS256", *, publish: bool = True) -> str:
        """Generate a key; ``publish=False`` keeps it out of the JWKS (until :meth:`publish`)."""
        private = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg.startswith(("RS", "PS"))
                   else ec.generate_private_key({"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}[alg]))
        kid = f"{alg.lower()}-{secrets.token_hex(4)}"
        self.keys[kid] = SigningKey(kid, alg, private)
        if publish:
            self.publish(kid)
        return kid

    def publish(self, kid: str) -> None:
        self.published.append(kid)

    def withdraw(self, kid: str) -> None:
        self.published.remove(kid)

    def claims(self, sub: str = "alice", *, ttl: float = 300, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + ttl}
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, sub: str = "alice", *, kid: str | None = None, ttl: float = 300,
              headers: dict[str, Any] | None = None, **extra: Any) -> str:
        """A signed token (RSA key by default); extra claims override (``None`` drops one)."""
        key = self.keys[kid or self.rsa_kid]
        return jwt.encode(self.claims(sub, ttl=ttl, **extra), key.private, algorithm=key.alg,
                          headers={"kid": key.kid, **(headers or {})})

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_fetches += 1
        return web.json_response({"issuer": self.issuer, "jwks_uri": self.jwks_url,
                                  "id_token_signing_alg_values_supported": ["RS256", "ES256"]})

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        if self.fail_jwks:
            return web.Response(status=500)
        return web.json_response({"keys": [self.keys[kid].public_jwk() for kid in self.published]})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], *, hmac_key: bytes | None = None) -> str:
    """A token with this header and claims, HMAC-SHA256-signed with ``hmac_key`` or unsigned."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest() if hmac_key else b""
    return signing_input + "." + b64url(signature)


def tamper(token: str) -> str:
    """The token with one character of its signature changed."""
    head, _, signature = token.rpartition(".")
    index = len(signature) // 2
    replacement = "A" if signature[index] != "A" else "B"
    return f"{head}.{signature[:index]}{replacement}{signature[index + 1:]}"


# -- shared by the auth tests ------------------------------------------------------------------


def assert_not_logged(caplog, watched) -> None:
    """None of ``watched`` appears in a log record of the proxy side (the SDK clients' own are skipped)."""
    formatter = logging.Formatter("%(name)s %(message)s")
    records = [r for r in caplog.records if not r.name.startswith(CLIENT_LOGGERS)]
    text = "\n".join(formatter.format(r) for r in records)
    for secret in watched:
        assert secret and secret not in text, "a secret appeared in the logs"


class Recorder:
    """An authorizer function that allows everything and remembers who asked."""

    def __init__(self) -> None:
        self.seen = []

    def __call__(self, access) -> bool:
        self.seen.append(access)
        return True
