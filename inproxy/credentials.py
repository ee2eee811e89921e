"""Backend credentials: the value type every credential provider returns."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Credentials:
    """AWS-style credentials used to sign requests to a backend.

    ``expires_at`` is a UNIX timestamp (seconds); ``None`` means the credentials
    do not expire.  ``bearer_token`` is set instead of keys for backends that
    take an ``Authorization: Bearer`` token (IBM COS with IAM).
    """

    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    session_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    bearer_token: str | None = field(default=None, repr=False)

    def expires_in(self, now: float | None = None) -> float | None:
        """Seconds until expiry, or ``None`` when the credentials never expire."""
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)

    @classmethod
    def coerce(cls, value: Any) -> "Credentials":
        """Accept ``Credentials`` or a mapping with boto-style or short key names."""
        if isinstance(value, Credentials):
            return value
        if isinstance(value, Mapping):
            return cls(
                access_key=_first(value, "access_key", "aws_access_key_id", "AccessKeyId"),
                secret_key=_first(value, "secret_key", "aws_secret_access_key", "SecretAccessKey"),
                session_token=_first(value, "session_token", "aws_session_token", "SessionToken", default=None),
                expires_at=_expiry(_first(value, "expires_at", "Expiration", default=None)),
                bearer_token=_first(value, "bearer_token", default=None),
            )
        raise TypeError(f"cannot turn {type(value).__name__} into Credentials")


def _first(mapping: Mapping[str, Any], *names: str, default: Any = "") -> Any:
    for name in names:
        if name in mapping and mapping[name] is not None:
            return mapping[name]
    return default


def _expiry(value: Any) -> float | None:
    """An expiry as a timestamp: numbers pass through, datetimes are converted."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    from datetime import datetime

    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
