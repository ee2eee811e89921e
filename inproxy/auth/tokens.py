"""Temporary credentials that one proxy issues and only that proxy accepts.

Stateless: the session token carries the identity and the expiry, sealed with
an HMAC under the proxy's own key; the access key id and the secret are derived
from the token.  Any proxy holding the same key accepts them (set a shared
``token_key`` to let several proxies, or a restarted one, honour them); nothing
is stored per credential.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any, Mapping

from cachetools import LRUCache

from ..credentials import Credentials
from ..errors import ExpiredToken, InvalidAccessKeyId, InvalidToken
from ..identity import Identity

TOKEN_PREFIX = "inpx1."
ACCESS_KEY_PREFIX = "ASIP"


class TokenIssuer:
    """Issues and opens sealed session tokens for one proxy (or a group sharing ``key``)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)
        if len(self._key) < 16:
            raise ValueError("token key must be at least 16 bytes")
        # Opened tokens, so a client's every request does not re-parse and re-MAC its token.
        self._opened: LRUCache = LRUCache(maxsize=4096)

    def __repr__(self) -> str:
        return "TokenIssuer(<key hidden>)"

    def issue(self, identity: Identity, ttl: float, *, now: float | None = None) -> Credentials:
        """Credentials bound to ``identity`` that expire after ``ttl`` seconds."""
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        issued = time.time() if now is None else now
        body = {"sub": identity.name, "m": identity.method, "c": dict(identity.claims),
                "exp": int(issued + ttl), "n": secrets.token_hex(8)}
        payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
        token = TOKEN_PREFIX + payload + "." + _b64(self._mac(b"seal", payload))
        return Credentials(self._access_key(token), self._secret(token), token, expires_at=float(body["exp"]))

    @staticmethod
    def is_ours(session_token: str | None) -> bool:
        """Whether a session token has this module's format (it may still be forged or expired)."""
        return bool(session_token) and session_token.startswith(TOKEN_PREFIX)

    def open(self, access_key: str, session_token: str, *, now: float | None = None) -> tuple[str, Identity]:
        """The (secret, Identity) behind a token presented with ``access_key``; raise on anything wrong."""
        opened = self._opened.get(session_token)
        if opened is None:
            opened = self._open(session_token)
            self._opened[session_token] = opened
        expected_key, secret, identity, expires = opened
        if not hmac.compare_digest(access_key.encode(), expected_key.encode()):
            raise InvalidAccessKeyId()
        if (time.time() if now is None else now) >= expires:
            raise ExpiredToken()
        return secret, identity

    def _open(self, session_token: str) -> tuple[str, str, Identity, int]:
        body = self._unseal(session_token)
        access_key = self._access_key(session_token)
        identity = Identity(name=body["sub"], method=body["m"], claims=body.get("c", {}), token=access_key)
        return access_key, self._secret(session_token), identity, body["exp"]

    def _unseal(self, token: str) -> Mapping[str, Any]:
        try:
            payload, _, mac = token[len(TOKEN_PREFIX):].partition(".")
            if not hmac.compare_digest(_unb64(mac), self._mac(b"seal", payload)):
                raise InvalidToken()
            body = json.loads(_unb64(payload))
            if not isinstance(body, dict) or not isinstance(body.get("exp"), int):
                raise InvalidToken()
            return body
        except (ValueError, TypeError):
            raise InvalidToken() from None

    def _mac(self, purpose: bytes, text: str) -> bytes:
        return hmac.new(self._key, purpose + b"\0" + text.encode(), hashlib.sha256).digest()

    def _access_key(self, token: str) -> str:
        digest = self._mac(b"akid", token)
        return ACCESS_KEY_PREFIX + base64.b32encode(digest).decode()[:16]

    def _secret(self, token: str) -> str:
        return _b64(self._mac(b"secret", token))[:40]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
