"""Parse an incoming HTTP request into an S3 request: bucket, key, query and operation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..errors import InvalidBucketName, InvalidURI, MethodNotAllowed
from .operations import LISTING_OPERATIONS, classify
from .sigv4 import QueryPieces, canonical_query_pairs, fast_unquote, join_canonical_query, parse_query, split_query

# Lenient on purpose (legacy S3 allowed upper case and underscores), strict about what
# could confuse a path: no slashes, no percent signs, no dot-only names.
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE"})


@dataclass(frozen=True, init=False)
class S3Request:
    """What a request asks of S3.

    ``key`` is the decoded object key (what S3 stores, and what prefix rules
    match); ``raw_key`` is the key exactly as it appeared in the request path.
    ``query`` holds the decoded query pairs in order; ``params`` the first
    value of each name.
    """

    method: str
    bucket: str | None
    key: str | None
    raw_key: str | None
    raw_path: str
    raw_query: str
    query: Sequence[tuple[str, str]] = field(repr=False)
    params: Mapping[str, str] = field(repr=False)
    operation: str
    addressing: str  # "path" or "virtual"

    def __init__(self, method: str, bucket: str | None, key: str | None, raw_key: str | None,
                 raw_path: str, raw_query: str, query: Sequence[tuple[str, str]],
                 params: Mapping[str, str], operation: str, addressing: str, *,
                 query_pieces: QueryPieces | None = None) -> None:
        # Frozen, so the fields go straight into the instance dict: one update instead of
        # one object.__setattr__ per field.
        vars(self).update(method=method, bucket=bucket, key=key, raw_key=raw_key, raw_path=raw_path,
                          raw_query=raw_query, query=query, params=params, operation=operation,
                          addressing=addressing, _query_pieces=query_pieces)

    @property
    def prefix(self) -> str | None:
        """The listing prefix of ListObjects(V2)/ListObjectVersions/ListMultipartUploads."""
        return self.params.get("prefix") if self.operation in LISTING_OPERATIONS else None

    @property
    def canonical_query_pairs(self) -> list[tuple[str, str, str]]:
        """The SigV4 canonical query pieces (computed once: verification and re-signing share them)."""
        # By hand, not functools.cached_property: on Python 3.11 that takes a lock per read.
        pairs = vars(self).get("_canonical_pairs")
        if pairs is None:
            pairs = vars(self)["_canonical_pairs"] = canonical_query_pairs(self.raw_query, self._query_pieces)
        return pairs

    def canonical_query(self, drop: "frozenset[str] | set[str]" = frozenset()) -> str:
        """The SigV4 canonical query string, without the parameters named in ``drop``."""
        return join_canonical_query(self.canonical_query_pairs, drop=drop)

    @property
    def resource(self) -> str:
        """``/bucket/key`` for error documents."""
        if self.bucket is None:
            return "/"
        return f"/{self.bucket}/{self.key}" if self.key is not None else f"/{self.bucket}"


def parse_s3_request(method: str, raw_path: str, raw_query: str, host: str,
                     headers: Mapping[str, str], base_domains: Sequence[str] = ()) -> S3Request:
    """Parse the raw request line pieces; raise an S3Error for what S3 would refuse."""
    if method not in _METHODS:
        raise MethodNotAllowed()
    if not raw_path.startswith("/"):
        raise InvalidURI()
    bucket = _virtual_host_bucket(host, base_domains)
    addressing = "virtual" if bucket is not None else "path"
    if bucket is None:
        bucket, raw_key = _split_path(raw_path)
    else:
        raw_key = raw_path[1:] or None
    if bucket is not None and not _BUCKET_RE.match(bucket):
        raise InvalidBucketName()
    key = _decode_key(raw_key) if raw_key is not None else None
    pieces = split_query(raw_query)  # shared with canonical_query_pairs, later
    query = parse_query(raw_query, pieces)
    params = _first_values(query)
    operation = classify(method, bucket, key, params, headers)
    return S3Request(method, bucket, key, raw_key, raw_path, raw_query, tuple(query), params,
                     operation, addressing, query_pieces=pieces)


def _first_values(query: list[tuple[str, str]]) -> dict[str, str]:
    """``{name: first value}``, names in order of first appearance."""
    params = dict(query)
    if len(params) == len(query):  # no name repeated (the common case): dict() is it
        return params
    params = {}
    for name, value in query:
        params.setdefault(name, value)
    return params


def _virtual_host_bucket(host: str, base_domains: Sequence[str]) -> str | None:
    if not base_domains:
        return None
    hostname = _strip_port(host).lower().rstrip(".")
    for domain in base_domains:
        suffix = "." + domain.lower().strip(".")
        if hostname.endswith(suffix) and len(hostname) > len(suffix):
            return hostname[: -len(suffix)]
    return None


def _strip_port(host: str) -> str:
    if host.startswith("["):  # IPv6 literal
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _split_path(raw_path: str) -> tuple[str | None, str | None]:
    """``/bucket/raw/key`` -> (bucket, raw key); ``/bucket`` and ``/bucket/`` have no key."""
    rest = raw_path[1:]
    if not rest:
        return None, None
    # The bucket is not decoded: an encoded character fails the name check.
    bucket, slash, raw_key = rest.partition("/")
    return bucket, (raw_key if slash and raw_key else None)


def _decode_key(raw_key: str) -> str:
    """Percent-decode a key; refuse what a backend could read as another path.

    Dot segments (``.``/``..``, encoded or not) are refused: HTTP servers and
    backends normalise them, which would let ``/a/../b/k`` reach bucket ``b``.
    """
    try:
        key = fast_unquote(raw_key, errors="strict")
    except UnicodeDecodeError:
        raise InvalidURI("The key is not valid percent-encoded UTF-8.") from None
    if "." in key and any(segment in (".", "..") for segment in key.split("/")):
        raise InvalidURI("Keys with '.' or '..' path segments are not supported by this proxy.")
    if "\x00" in key:
        raise InvalidURI()
    return key
