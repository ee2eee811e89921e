"""Which client headers reach the backend, and which of them are signed."""

from __future__ import annotations

from typing import Iterable, Mapping

# RFC 9110 hop-by-hop headers, plus what aiohttp sets itself (Host, Content-Length,
# Transfer-Encoding) and Expect, which the proxy answers itself after authentication.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "expect", "host", "content-length",
})
# The client's authentication material: never forwarded, the proxy signs anew.
CLIENT_AUTH = frozenset({
    "authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token",
})
# Framing of aws-chunked bodies: dropped when the proxy decodes the body.  The trailing
# checksum is verified by the proxy and cannot follow a plain body, so the header that
# announces it goes too (S3 refuses the algorithm header without its checksum).  When the
# checksum goes on (inproxy.s3.reframe) the proxy announces its own framing instead.
CHUNKED_FRAMING = frozenset({"x-amz-decoded-content-length", "x-amz-trailer", "x-amz-sdk-checksum-algorithm"})
_DROPPED = HOP_BY_HOP | CLIENT_AUTH
_DROPPED_DECODING = _DROPPED | CHUNKED_FRAMING
# Connection tokens that are options, not names of headers to drop.
CONNECTION_OPTIONS = frozenset({"close", "keep-alive", ""})
# Presigned-URL query parameters of the client's signature.
PRESIGN_PARAMS = frozenset({
    "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
    "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Security-Token",
})
# Response headers that describe the backend's connection, not the object.
RESPONSE_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade",
})


def forwarded_headers(headers: Iterable[tuple[str, str]], *, decoding_chunked: bool) -> dict[str, str]:
    """The client's headers to send upstream, lower-cased; repeated names joined with ','.
    Headers the client's ``Connection`` header names are hop-by-hop too (RFC 9110 7.6.1)."""
    dropped = _DROPPED_DECODING if decoding_chunked else _DROPPED
    out: dict[str, str] = {}
    named: set[str] = set()
    for name, value in headers:  # one pass: this runs on every request
        lname = name.lower()
        if lname in dropped:
            if lname == "connection":
                named |= connection_tokens(value)
            continue
        if lname == "content-encoding" and decoding_chunked:
            value = _without_aws_chunked(value)
            if not value:
                continue
        out[lname] = f"{out[lname]},{value}" if lname in out else value
    for token in named:  # named before or after Connection itself
        out.pop(token, None)
    return out


def connection_tokens(value: str) -> set[str]:
    """The header names a ``Connection`` header lists, lower-case, its ``close`` and
    ``keep-alive`` options aside: hop-by-hop headers too (RFC 9110 7.6.1)."""
    return {token.strip().lower() for token in value.split(",")} - CONNECTION_OPTIONS


def _without_aws_chunked(value: str) -> str:
    codings = [c.strip() for c in value.split(",")]
    return ",".join(c for c in codings if c and c.lower() != "aws-chunked")


def headers_to_sign(headers: Mapping[str, str], unsigned: frozenset[str] = frozenset()) -> dict[str, str]:
    """The subset of upstream headers covered by the signature: host, content-md5,
    content-type and every x-amz-* header (metadata, SSE, checksums, copy source).
    Others (Range, conditionals, Accept-Encoding) are sent unsigned, which S3
    accepts and which survives front ends that rewrite them."""
    return {
        name: value for name, value in headers.items()
        if name not in unsigned
        and (name in ("host", "content-md5", "content-type") or name.startswith("x-amz-"))
    }


def response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The backend's response headers to pass to the client."""
    return [(n, v) for n, v in headers if n.lower() not in RESPONSE_HOP_BY_HOP]


def decimal_count(value: str | None, max_digits: int = 18) -> int | None:
    """The integer of a count as HTTP sends one (Content-Length and the like): ASCII
    digits only, at most ``max_digits``; None for anything else.  ``str.isdigit()`` alone
    takes "²" and thousands of digits, on which ``int()`` raises."""
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > max_digits:
        return None
    return int(value)
