"""Anonymous access, only where the application opens it: named buckets or prefixes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping

from ..hooks import Authenticator
from ..identity import ANONYMOUS, Identity

if TYPE_CHECKING:
    from ..context import RequestContext

_READS = frozenset({"GetObject", "HeadObject", "ListObjects", "ListObjectsV2", "HeadBucket"})


class AnonymousAccess(Authenticator):
    """Gives requests that carry no credentials at all the ``ANONYMOUS`` identity, for the
    buckets and prefixes named here and read operations only; the authorizer still decides.

    ``AnonymousAccess({"public": ["docs/", "img/"], "open-data": [""]})`` opens keys under
    ``docs/`` and ``img/`` of ``public`` and all of ``open-data``.  A request with any
    credential (Authorization header, presigned parameters, a session token) is never made
    anonymous: a wrong signature stays wrong.
    """

    def __init__(self, prefixes: Mapping[str, Iterable[str]], *, operations: Iterable[str] = _READS) -> None:
        self.prefixes = {bucket: tuple(p) for bucket, p in prefixes.items()}
        self.operations = frozenset(operations)

    async def authenticate(self, ctx: "RequestContext") -> Identity | None:
        if _has_credentials(ctx) or ctx.s3.operation not in self.operations:
            return None
        allowed = self.prefixes.get(ctx.s3.bucket or "")
        if allowed is None:
            return None
        target = ctx.s3.key if ctx.s3.key is not None else (ctx.s3.prefix or "")
        return ANONYMOUS if any(target.startswith(p) for p in allowed) else None


def _has_credentials(ctx: "RequestContext") -> bool:
    headers = ctx.request.headers
    if "authorization" in headers or "x-amz-security-token" in headers:
        return True
    return any(name.startswith("X-Amz-") or name in ("AWSAccessKeyId", "Signature") for name in ctx.s3.params)
