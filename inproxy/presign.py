"""Presigned URLs on the proxy's own endpoint.

A presigned URL lets any HTTP client (a browser, curl, a load tool) do one operation on
one object until it expires, with no SDK and no keys.  The proxy verifies the URL's
SigV4 query signature like any other, asks the authorizer as usual, and re-signs the
request for the backend with its own credentials::

    url = presign_url(proxy, "alice", "GetObject", "data", "team-a/report.csv", expires_in=600)

Signed with an :class:`~inproxy.Identity` (or a name), the URL carries temporary
credentials that the proxy issues for that identity (:meth:`ProxyServer.issue_credentials`),
valid a little longer than the URL; signed with :class:`~inproxy.Credentials`, it carries
those (which the proxy must accept: a client key of ``keys=`` or credentials it issued).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping
from urllib.parse import urlsplit

from .credentials import Credentials
from .identity import Identity
from .s3.sigv4 import MAX_PRESIGN_EXPIRES, PRESIGN_QUERY_PARAMS, Signer, uri_encode

if TYPE_CHECKING:
    from .server import ProxyServer

__all__ = ["PRESIGN_METHODS", "presign_url"]

#: The operations a presigned URL may do, and the HTTP method each one uses.
PRESIGN_METHODS = {"GetObject": "GET", "PutObject": "PUT", "HeadObject": "HEAD", "DeleteObject": "DELETE"}
# Issued credentials outlive the URL by this much, so a URL used at its last second still works.
_CREDENTIAL_MARGIN = 60


def presign_url(proxy: "ProxyServer", identity_or_credentials: "Identity | str | Credentials",
                operation: str, bucket: str, key: str, *, expires_in: int = 3600,
                params: Mapping[str, str] | None = None, region: str = "us-east-1") -> str:
    """A path-style URL on ``proxy.endpoint_url`` that does ``operation`` on ``bucket/key``
    for ``expires_in`` seconds (1 s to 7 days).

    ``params`` are extra query parameters to sign into the URL (``versionId``,
    ``response-content-type``...).  Raises ValueError for an operation other than
    GetObject, PutObject, HeadObject or DeleteObject, and for an unusable bucket or key.
    The proxy must be started (its address is part of the signature).
    """
    method = PRESIGN_METHODS.get(operation)
    if method is None:
        raise ValueError(f"cannot presign {operation!r}: only {', '.join(PRESIGN_METHODS)}")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) \
            or not 1 <= expires_in <= MAX_PRESIGN_EXPIRES:
        raise ValueError(f"expires_in must be an int of 1..{MAX_PRESIGN_EXPIRES} seconds")
    if not bucket or "/" in bucket or "%" in bucket or "?" in bucket:
        raise ValueError("not a bucket name")
    if not key:
        raise ValueError("a presigned URL needs an object key")
    if any(segment in (".", "..") for segment in key.split("/")) or "\x00" in key:
        raise ValueError("keys with '.' or '..' path segments are refused by the proxy")
    credentials = _credentials(proxy, identity_or_credentials, expires_in)
    if not credentials.access_key or not credentials.secret_key:
        raise ValueError("presigning needs an access key and a secret key")
    endpoint = proxy.endpoint_url
    host = urlsplit(endpoint).netloc
    path = f"/{bucket}/{uri_encode(key, keep_slash=True)}"
    pairs = []
    for name, value in (params or {}).items():
        if name in PRESIGN_QUERY_PARAMS or name.lower().startswith("x-amz-"):
            raise ValueError(f"{name!r} cannot be a parameter of a presigned URL")
        pairs.append(f"{uri_encode(str(name))}={uri_encode(str(value))}")
    # The proxy's own signer (its key cache is per proxy), or a fresh one.
    signer = getattr(getattr(proxy, "pipeline", None), "signer", None) or Signer()
    query = signer.presign_url_query(
        method, path, host, "&".join(pairs), access_key=credentials.access_key,
        secret_key=credentials.secret_key, session_token=credentials.session_token,
        region=region, expires_in=expires_in)
    return f"{endpoint}{path}?{query}"


def _credentials(proxy: "ProxyServer", who: "Identity | str | Credentials", expires_in: int) -> Credentials:
    if isinstance(who, Credentials):
        return who
    if isinstance(who, (Identity, str)):
        return proxy.issue_credentials(who, ttl=expires_in + _CREDENTIAL_MARGIN)
    raise TypeError("identity_or_credentials must be an Identity, a name or Credentials")
