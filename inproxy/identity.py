"""Identity: who made a request, as decided by an Authenticator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Identity:
    """The authenticated principal behind a request.

    ``name`` is the stable id used in authorization and cache keys; ``method``
    says how it was established (``"sigv4"``, ``"jwt"``, ``"mtls"``,
    ``"anonymous"``, ...); ``claims`` carries whatever the authenticator learnt
    (JWT claims, certificate subject); ``token`` is the credential the client
    presented (bearer token or access key id) for the simple hook forms.  Never
    log ``token``: it is excluded from ``repr``.
    """

    name: str
    method: str = "custom"
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    token: str | None = field(default=None, repr=False, compare=False, hash=False)

    @property
    def cache_key(self) -> tuple[str, str]:
        """What identifies this principal in cache keys."""
        return (self.method, self.name)


ANONYMOUS = Identity(name="anonymous", method="anonymous")
