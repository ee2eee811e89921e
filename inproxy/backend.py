"""Backends: where requests go, how to address them, and which credentials sign for them."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping
from urllib.parse import urlsplit

from .hooks import CredentialProvider, as_credential_provider

Flavor = Literal["s3", "gcs", "ibm"]
_DEFAULT_PORTS = {"http": 80, "https": 443}
_GCS_UNSIGNED = frozenset({"accept-encoding"})
_NONE: frozenset[str] = frozenset()


@dataclass(eq=False)
class Backend:
    """An S3-compatible service the proxy forwards to.

    ``credentials`` may be :class:`~inproxy.Credentials`, a mapping, a
    :class:`~inproxy.CredentialProvider` or a function ``(identity, bucket) ->
    Credentials | dict`` (sync or async); ``None`` uses the proxy's
    ``credential_provider``.  ``bucket`` renames: clients see the name they are
    routed by, the backend receives this one.  ``flavor`` covers known vendor
    differences: ``"s3"`` (AWS, MinIO, Ceph, SeaweedFS...), ``"gcs"`` (Google
    Cloud Storage XML API with HMAC keys, region ``auto``), ``"ibm"`` (IBM COS; a
    provider returning ``Credentials(bearer_token=...)`` sends an IAM token).
    ``keepalive_timeout`` stays below the ~20 s after which S3 drops idle
    connections.

    ``forward_checksums``: a client's ``aws-chunked`` body that ends with a trailing
    checksum (boto3 >= 1.36 over HTTPS) is decoded and verified by the proxy either way.
    When on, the verified checksum goes on to the backend in a trailer of the proxy's own
    framing (:mod:`inproxy.s3.reframe`), so the object stores it and a multipart upload
    created with a ``ChecksumAlgorithm`` gets the part checksums AWS requires; when off,
    the body goes on plain with ``Content-Length`` and the checksum is dropped.  ``None``
    (the default) means on for ``"s3"`` and off for the others: GCS's XML API knows no
    ``aws-chunked``.  Never forwarded while a ``request_body_filter`` hook may change the
    bytes (the client's checksum would then be wrong).
    """

    endpoint: str
    region: str = "us-east-1"
    credentials: Any = field(default=None, repr=False)
    addressing_style: Literal["path", "virtual"] = "path"
    bucket: str | None = None
    verify_tls: bool | ssl.SSLContext = True
    flavor: Flavor = "s3"
    service: str = "s3"
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    keepalive_timeout: float = 15.0
    max_connections: int = 256
    forward_checksums: bool | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"backend endpoint must be http(s)://host[:port], got {self.endpoint!r}")
        if self.addressing_style not in ("path", "virtual"):
            raise ValueError("addressing_style must be 'path' or 'virtual'")
        self.scheme = parts.scheme
        self.hostname = parts.hostname
        self.port = parts.port or _DEFAULT_PORTS[parts.scheme]
        self.base_path = parts.path.rstrip("/")
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        self._netloc = host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"
        self.credential_provider: CredentialProvider | None = as_credential_provider(self.credentials)

    @property
    def netloc(self) -> str:
        """host[:port] as sent in the Host header (the port only when not the scheme's default)."""
        return self._netloc

    @property
    def unsigned_headers(self) -> frozenset[str]:
        """Headers never signed for this backend (GCS's front end rewrites Accept-Encoding)."""
        return _GCS_UNSIGNED if self.flavor == "gcs" else _NONE

    @property
    def forwards_checksums(self) -> bool:
        """Whether a client's verified trailing checksum goes on to this backend."""
        if self.forward_checksums is None:
            return self.flavor == "s3"
        return self.forward_checksums

    def backend_bucket(self, client_bucket: str | None) -> str | None:
        """The bucket name the backend knows, after renaming."""
        if client_bucket is None:
            return None
        return self.bucket or client_bucket

    def locate(self, client_bucket: str | None, encoded_key: str | None) -> tuple[str, str]:
        """(Host header, encoded path) for a bucket and an already-encoded key."""
        bucket = self.backend_bucket(client_bucket)
        key_path = "/" + encoded_key if encoded_key is not None else ""
        if bucket is None:
            return self.netloc, (self.base_path or "") + "/"
        if self.addressing_style == "virtual":
            return f"{bucket}.{self.netloc}", (self.base_path + key_path) or "/"
        return self.netloc, f"{self.base_path}/{bucket}{key_path}"


class BackendMap:
    """Routes a client-facing bucket name to a Backend; ``"*"`` is the default route."""

    def __init__(self, backends: "Mapping[str, Backend] | Backend | None") -> None:
        if isinstance(backends, Backend):
            backends = {"*": backends}
        self._routes: dict[str, Backend] = dict(backends or {})
        for name, backend in self._routes.items():
            if not isinstance(backend, Backend):
                raise TypeError(f"backend for {name!r} is not a Backend")

    def route(self, bucket: str | None) -> Backend | None:
        """The backend for a bucket, or None when nothing routes it."""
        if bucket is None:
            return self._routes.get("*")
        return self._routes.get(bucket) or self._routes.get("*")

    @property
    def bucket_names(self) -> list[str]:
        """Client-facing bucket names configured explicitly (not the default route)."""
        return sorted(name for name in self._routes if name != "*")

    @property
    def default(self) -> Backend | None:
        return self._routes.get("*")

    def __iter__(self):
        return iter(dict.fromkeys(self._routes.values()))
