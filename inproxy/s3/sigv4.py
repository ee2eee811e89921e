"""AWS Signature Version 4 for S3: signing and verification primitives.

Two uses, one module:

* **Signing** requests to backends: :class:`Signer` (``sign`` for the
  ``Authorization`` header, ``presign_url_query`` for presigned URLs).
* **Verifying** clients: strict parsers for the ``Authorization`` header and
  the presigned query parameters, the canonicalisation functions, the string to
  sign, the signing-key derivation and the chunk/trailer signatures of
  ``aws-chunked`` bodies.  The authenticator composes them; this module holds
  no policy (clock skew, key lookup, which headers must be signed).

S3 flavour throughout: the canonical URI is the URI-encoded path *once*, with
no dot-segment normalisation and no collapsing of ``//`` (unlike other AWS
services), and the payload hash is the ``x-amz-content-sha256`` value.

It sits on the hot path, so it is written for speed: queries and paths that
are already canonical are recognised with one regular expression and returned
unchanged, signing keys are derived once per (secret, day, region, service)
and the HMAC inner/outer states of each key are kept, so a signature costs
one SHA-256 of the canonical request plus one HMAC finalisation.

Only ``hashlib``/``hmac`` from the standard library are used; errors raised on
client input are :class:`inproxy.errors.S3Error` subclasses, never anything
else.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from datetime import date as _date, datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Collection, Iterable, Mapping, NamedTuple, Sequence, Union
from urllib.parse import quote_from_bytes, unquote, unquote_to_bytes

from ..errors import AccessDenied, InvalidArgument

__all__ = [
    "ALGORITHM", "EMPTY_SHA256", "UNSIGNED_PAYLOAD", "STREAMING_PAYLOAD", "STREAMING_PAYLOAD_TRAILER",
    "STREAMING_UNSIGNED_PAYLOAD_TRAILER", "STREAMING_ECDSA_PAYLOAD", "STREAMING_ECDSA_PAYLOAD_TRAILER",
    "PAYLOAD_SENTINELS", "MAX_PRESIGN_EXPIRES", "PRESIGN_QUERY_PARAMS",
    "uri_encode", "canonical_uri", "split_query", "parse_query", "canonical_query_string", "canonical_headers",
    "canonical_request", "string_to_sign", "credential_scope", "derive_signing_key", "signature",
    "chunk_signature", "trailer_signature", "canonical_trailer", "signatures_equal", "is_sha256_hex",
    "parse_amz_date", "amz_date_seconds", "format_amz_date", "fast_unquote", "parse_http_date",
    "ParsedAuth", "parse_authorization_header", "ParsedPresign", "parse_presigned_query", "Signer",
]

# -- constants ------------------------------------------------------------------------------

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_PAYLOAD_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_PAYLOAD_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_ECDSA_PAYLOAD = "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"
STREAMING_ECDSA_PAYLOAD_TRAILER = "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER"
#: The non-hash values ``x-amz-content-sha256`` may take.
PAYLOAD_SENTINELS = frozenset({
    UNSIGNED_PAYLOAD, STREAMING_PAYLOAD, STREAMING_PAYLOAD_TRAILER, STREAMING_UNSIGNED_PAYLOAD_TRAILER,
    STREAMING_ECDSA_PAYLOAD, STREAMING_ECDSA_PAYLOAD_TRAILER,
})
#: Longest validity of a presigned URL (seven days), as S3 enforces it.
MAX_PRESIGN_EXPIRES = 604800
#: The query parameters that carry a presigned URL's signature.
PRESIGN_QUERY_PARAMS = frozenset({
    "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
    "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Security-Token",
})

_CHUNK_PREFIX = "AWS4-HMAC-SHA256-PAYLOAD\n"
_TRAILER_PREFIX = "AWS4-HMAC-SHA256-TRAILER\n"
_MALFORMED_AUTH = "AuthorizationHeaderMalformed"
_MALFORMED_QUERY = "AuthorizationQueryParametersError"
_MAX_AUTH_LENGTH = 8192

# -- URI encoding ---------------------------------------------------------------------------

# A percent escape that canonical form keeps: upper-case hex of a byte that is *not*
# unreserved (escapes of A-Z a-z 0-9 - . _ ~ must be decoded, lower-case hex re-cased).
_KEPT_ESCAPE = r"%(?:[0189A-F][0-9A-F]|2[0-9A-CF]|3[A-F]|[46]0|5[B-E]|7[B-DF])"
# Unreserved runs and kept escapes, in any order.  Written as an unrolled loop with
# possessive quantifiers: no alternative is ever tried twice, so one match costs about a
# third of the plain ``(?:[...]+|escape)*`` form.  Possessive is safe because what follows
# each repetition ('%', '=', '&' or the end) is never something it could have consumed.
_CANONICAL_COMPONENT = rf"[A-Za-z0-9\-._~]*+(?:{_KEPT_ESCAPE}[A-Za-z0-9\-._~]*+)*+"
_is_canonical_component = re.compile(_CANONICAL_COMPONENT).fullmatch
# A whole query whose every name and value is canonical already (at most one '=' a piece):
# one match instead of one per component, the common case (SDKs encode canonically).
_is_canonical_query = re.compile(
    rf"{_CANONICAL_COMPONENT}(?:={_CANONICAL_COMPONENT})?+(?:&{_CANONICAL_COMPONENT}(?:={_CANONICAL_COMPONENT})?+)*+"
).fullmatch
_is_canonical_path = re.compile(rf"[A-Za-z0-9\-._~/]*+(?:{_KEPT_ESCAPE}[A-Za-z0-9\-._~/]*+)*+").fullmatch
_is_unreserved = re.compile(r"[A-Za-z0-9\-._~]*").fullmatch
_is_unreserved_path = re.compile(r"[A-Za-z0-9\-._~/]*").fullmatch


def _utf8(value: str) -> bytes:
    """UTF-8 bytes of ``value``; lone surrogates (from surrogateescape decoding of raw
    bytes, or anything else) are mapped back to bytes rather than raising."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass")


def uri_encode(value: str, *, keep_slash: bool = False) -> str:
    """AWS ``UriEncode``: keep ``A-Za-z0-9-_.~`` (and ``/`` if ``keep_slash``), encode every
    other UTF-8 byte as ``%XX`` with upper-case hex.  ``value`` is text, not yet encoded."""
    if (value.isalnum() and value.isascii()) or (_is_unreserved_path if keep_slash else _is_unreserved)(value):
        return value
    return quote_from_bytes(_utf8(value), "/" if keep_slash else "")


def _canonical_component(raw: str) -> str:
    """Canonical form of one raw (as sent) query name or value: percent-decoded at byte
    level (like ``unquote``, but lossless for escapes that are not UTF-8), then re-encoded."""
    if (raw.isalnum() and raw.isascii()) or _is_unreserved(raw) or ("%" in raw and _is_canonical_component(raw)):
        return raw
    return quote_from_bytes(unquote_to_bytes(_utf8(raw.replace("+", " "))), "")


def canonical_uri(raw_path: str) -> str:
    """The S3 canonical URI of a path as sent on the wire: each ``/``-separated segment is
    percent-decoded and re-encoded with :func:`uri_encode`, so ``%2F`` stays ``%2F``, lower-case
    escapes become upper-case, needless escapes are decoded.  No ``.``/``//`` normalisation."""
    if _is_unreserved_path(raw_path) or ("%" in raw_path and _is_canonical_path(raw_path)):
        return raw_path
    return "/".join(quote_from_bytes(unquote_to_bytes(_utf8(s)), "") for s in raw_path.split("/"))


# -- query strings --------------------------------------------------------------------------

# Every escape of an ASCII byte, upper- and lower-case hex: such an escape decodes to one
# character whatever surrounds it, so a string made only of them and plain text decodes
# piece by piece, without unquote's byte-level machinery (about five times slower).
_ASCII_ESCAPES = {f"{byte:02{case}}": chr(byte) for byte in range(0x80) for case in "Xx"}


def fast_unquote(value: str, errors: str = "replace") -> str:
    """Exactly ``urllib.parse.unquote(value, errors=errors)``, quicker in the common cases:
    no escape at all, only ``%2F`` (the slashes of ``X-Amz-Credential``), only escapes of
    ASCII bytes (which decode alike whatever ``errors`` says).  Anything else (escapes of
    non-ASCII bytes, stray ``%``) goes to ``unquote``."""
    if "%" not in value:
        return value
    slashes_decoded = value.replace("%2F", "/")
    if "%" not in slashes_decoded:  # every '%' began a %2F
        return slashes_decoded
    first, *rest = value.split("%")
    try:
        return first + "".join([_ASCII_ESCAPES[piece[:2]] + piece[2:] for piece in rest])
    except KeyError:  # an escape of a non-ASCII byte, or no escape at all
        return unquote(value, errors=errors)


QueryPieces = list[tuple[str, str, str]]


def split_query(raw_query: str) -> QueryPieces:
    """The raw query split on ``&`` (empty pieces skipped), each piece split on its first
    ``=``: what :func:`parse_query` and :func:`canonical_query_pairs` start from, so a
    request that needs both splits once."""
    return [piece.partition("=") for piece in raw_query.split("&") if piece] if raw_query else []


def parse_query(raw_query: str, pieces: QueryPieces | None = None) -> list[tuple[str, str]]:
    """The decoded ``(name, value)`` pairs of a raw query string, in order: split on ``&``,
    empty pieces skipped, each split on its first ``=`` (a missing value is ``""``), both
    sides decoded like a form: ``+`` is a space, as S3 and the SDKs that send it (polars'
    object_store) mean it; a literal plus arrives as ``%2B``.  ``pieces`` is
    :func:`split_query` of ``raw_query`` if the caller has it already."""
    if not raw_query:
        return []
    if pieces is None:
        pieces = split_query(raw_query)
    if "+" in raw_query:
        return [(_decode_component(name), _decode_component(value)) for name, _, value in pieces]
    if "%" not in raw_query:  # nothing to decode (the common case)
        return [(name, value) for name, _, value in pieces]
    # Presigned URLs: only some components carry escapes; test inline rather than call.
    return [(fast_unquote(name) if "%" in name else name, fast_unquote(value) if "%" in value else value)
            for name, _, value in pieces]


def _decode_component(raw: str) -> str:
    if "+" in raw:
        raw = raw.replace("+", " ")
    return fast_unquote(raw)


def canonical_query_string(raw_query: str, *, drop: Collection[str] = ()) -> str:
    """The SigV4 canonical query string of a raw query string (as in the request line).

    Parsed like :func:`parse_query`; parameters whose *decoded* name is in ``drop``
    (case-sensitive, e.g. ``{"X-Amz-Signature"}``) are left out; names and values are
    re-encoded with :func:`uri_encode` and the pairs sorted by encoded (name, value).
    Percent-decoding is byte-level, so ``%FF`` stays ``%FF`` and a stray ``%`` becomes
    ``%25``.  Idempotent: a canonical query string is returned unchanged.
    """
    return join_canonical_query(canonical_query_pairs(raw_query), drop=drop)


def canonical_query_pairs(raw_query: str, pieces: QueryPieces | None = None) -> list[tuple[str, str, str]]:
    """The pieces of :func:`canonical_query_string`, computed once per request and joined
    as often as needed (the proxy verifies with one set of names and forwards another):
    sorted ``(encoded name, encoded value, decoded name)`` triples.  ``pieces`` is
    :func:`split_query` of ``raw_query`` if the caller has it already."""
    if not raw_query:
        return []
    if pieces is None:
        pieces = split_query(raw_query)
    if _is_canonical_query(raw_query):
        pairs = [(name, value, fast_unquote(name) if "%" in name else name) for name, _, value in pieces]
    else:
        pairs = [(_canonical_component(name), _canonical_component(value),
                  fast_unquote(name) if "%" in name else name) for name, _, value in pieces]
    pairs.sort()
    return pairs


def join_canonical_query(pairs: Sequence[tuple[str, str, str]], *, drop: Collection[str] = ()) -> str:
    """The canonical query string of :func:`canonical_query_pairs`, without the parameters
    whose decoded name is in ``drop``."""
    if drop:
        return "&".join([f"{n}={v}" for n, v, decoded in pairs if decoded not in drop])
    return "&".join([f"{n}={v}" for n, v, _ in pairs])


# -- headers --------------------------------------------------------------------------------

def _trim(value: str) -> str:
    # Trim and collapse runs of whitespace (str.split(): spaces, tabs, and the other ASCII
    # and Unicode separators) to one space, exactly as botocore does.
    return " ".join(value.split())


HeadersLike = Union[Mapping[str, str], Iterable[tuple[str, str]]]


def canonical_headers(headers: HeadersLike, signed: Sequence[str]) -> str:
    """The canonical headers block of a request: one ``name:value\\n`` line per name of
    ``signed``, in that order.  Names compare case-insensitively; each value is trimmed with
    inner whitespace runs collapsed to one space; repeated headers are joined with ``,`` in
    the order received.  A signed header that is absent gets an empty value.

    ``headers`` is a mapping (a multidict's repeated items are all used) or ``(name, value)``
    pairs; ``signed`` is the list of lower-case names (e.g. from ``SignedHeaders``).
    """
    items = headers.items() if hasattr(headers, "items") else headers
    if len(signed) == 1:  # presigned URLs usually sign host alone: no set, no dict
        only = signed[0]
        return f"{only}:{','.join([_trim(value) for name, value in items if name.lower() == only])}\n"
    wanted = set(signed)
    found: dict[str, list[str]] = {}
    for name, value in items:
        lname = name.lower()
        if lname in wanted:
            found.setdefault(lname, []).append(_trim(value))
    return "".join([f"{name}:{','.join(found.get(name, ()))}\n" for name in signed])


# -- canonical request, string to sign, keys, signatures ------------------------------------

def canonical_request(method: str, canonical_uri: str, canonical_query: str, canonical_headers: str,
                      signed_headers: str | Sequence[str], payload_hash: str) -> str:
    """The SigV4 canonical request.  ``canonical_headers`` is the block from
    :func:`canonical_headers` (each line ending in ``\\n``); ``signed_headers`` is the
    ``;``-joined string or the list of names."""
    if not isinstance(signed_headers, str):
        signed_headers = ";".join(signed_headers)
    return f"{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"


def credential_scope(date: str, region: str, service: str) -> str:
    """``YYYYMMDD/region/service/aws4_request``."""
    return f"{date}/{region}/{service}/{TERMINATOR}"


def string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    """The SigV4 string to sign: algorithm, ``YYYYMMDDTHHMMSSZ`` time, credential scope
    (without the access key) and the hex SHA-256 of the canonical request."""
    digest = hashlib.sha256(canonical_request.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def derive_signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """The SigV4 signing key (uncached; see :meth:`Signer.signing_key`)."""
    key = hmac.digest(b"AWS4" + secret_key.encode("utf-8"), date.encode("utf-8"), "sha256")
    key = hmac.digest(key, region.encode("utf-8"), "sha256")
    key = hmac.digest(key, service.encode("utf-8"), "sha256")
    return hmac.digest(key, b"aws4_request", "sha256")


# HMAC-SHA256 with the inner and outer hash states of each signing key kept: a signature is
# then two copies, two updates and two finalisations (about half of hmac.digest's cost with
# OpenSSL 3).  The states live in a Signer (bounded, oldest evicted first), never in a
# module-level cache: two proxies in one process share no key material.
_HMAC_STATES_MAX = 1024
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _new_hmac_states(key: bytes) -> tuple:
    padded = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    return hashlib.sha256(padded.translate(_IPAD)), hashlib.sha256(padded.translate(_OPAD))


def _hmac_states(key: bytes, cache: dict[bytes, tuple] | None = None) -> tuple:
    if cache is None:
        return _new_hmac_states(key)
    states = cache.get(key)
    if states is None:
        states = _new_hmac_states(key)
        if len(cache) >= _HMAC_STATES_MAX:
            del cache[next(iter(cache))]
        cache[key] = states
    return states


def _hmac_hex(key: bytes, message: bytes, cache: dict[bytes, tuple] | None = None) -> str:
    inner, outer = _hmac_states(key, cache)
    inner = inner.copy()
    inner.update(message)
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.hexdigest()


def signature(signing_key: bytes, string_to_sign: str) -> str:
    """Hex HMAC-SHA256 of ``string_to_sign`` with ``signing_key``."""
    return _hmac_hex(signing_key, string_to_sign.encode("utf-8", "surrogatepass"))


def chunk_signature(signing_key: bytes, amz_date: str, scope: str, previous_signature: str,
                    chunk_data_sha256_hex: str) -> str:
    """Signature of one ``aws-chunked`` chunk (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]``).
    ``previous_signature`` is the seed (request) signature for the first chunk, then the
    previous chunk's; ``scope`` is the credential scope without the access key."""
    return _hmac_hex(signing_key, (
        f"{_CHUNK_PREFIX}{amz_date}\n{scope}\n{previous_signature}\n{EMPTY_SHA256}\n"
        f"{chunk_data_sha256_hex}").encode())


def canonical_trailer(trailers: Iterable[tuple[str, str]]) -> bytes:
    """The bytes a trailer signature covers: ``name:value\\n`` per trailing header, in the
    order given, names lower-cased, values stripped (the SDKs send ``x-amz-checksum-*``)."""
    return "".join([f"{n.strip().lower()}:{v.strip()}\n" for n, v in trailers]).encode("utf-8", "surrogatepass")


def trailer_signature(signing_key: bytes, amz_date: str, scope: str, previous_signature: str,
                      trailer_bytes: bytes) -> str:
    """Signature of the trailing headers of a ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER``
    body.  ``trailer_bytes`` is :func:`canonical_trailer` (``name:value\\n`` lines, without the
    ``x-amz-trailer-signature`` line); ``previous_signature`` is the final (empty) chunk's."""
    digest = hashlib.sha256(trailer_bytes).hexdigest()
    return _hmac_hex(signing_key, f"{_TRAILER_PREFIX}{amz_date}\n{scope}\n{previous_signature}\n{digest}".encode())


def signatures_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two signatures (``False`` for non-ASCII input)."""
    if not (isinstance(a, str) and isinstance(b, str) and a.isascii() and b.isascii()):
        return False
    return hmac.compare_digest(a, b)


_is_sha256_hex = re.compile(r"[0-9a-f]{64}").fullmatch


def is_sha256_hex(value: str) -> bool:
    """Whether ``value`` is a SHA-256 in lower-case hex (a real payload hash, not a sentinel)."""
    return isinstance(value, str) and _is_sha256_hex(value) is not None


# -- dates ----------------------------------------------------------------------------------

_is_amz_date = re.compile(r"[0-9]{8}T[0-9]{6}Z").fullmatch


def parse_amz_date(value: str) -> datetime:
    """Parse ``YYYYMMDDTHHMMSSZ`` into an aware UTC datetime; :class:`AccessDenied` otherwise."""
    if isinstance(value, str) and _is_amz_date(value):
        try:
            return datetime(int(value[0:4]), int(value[4:6]), int(value[6:8]), int(value[9:11]),
                            int(value[11:13]), int(value[13:15]), tzinfo=timezone.utc)
        except ValueError:
            pass
    raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")


_EPOCH_ORDINAL = _date(1970, 1, 1).toordinal()


def amz_date_seconds(value: str) -> int:
    """The POSIX time of ``YYYYMMDDTHHMMSSZ``: ``parse_amz_date(value).timestamp()`` without
    building an aware datetime (the authenticator needs only the number); the same
    :class:`AccessDenied` for the same invalid input."""
    if isinstance(value, str) and _is_amz_date(value):
        year, month_day = divmod(int(value[:8]), 10000)
        hour, minute_second = divmod(int(value[9:15]), 10000)
        minute, second = divmod(minute_second, 100)
        if hour < 24 and minute < 60 and second < 60:
            try:  # date() validates year, month and day as datetime() would
                days = _date(year, *divmod(month_day, 100)).toordinal() - _EPOCH_ORDINAL
            except ValueError:
                pass
            else:
                return days * 86400 + hour * 3600 + minute * 60 + second
    raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")


def format_amz_date(when: datetime) -> str:
    """``YYYYMMDDTHHMMSSZ`` of a datetime (naive means UTC)."""
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return (f"{when.year:04d}{when.month:02d}{when.day:02d}T"
            f"{when.hour:02d}{when.minute:02d}{when.second:02d}Z")


def parse_http_date(value: str) -> datetime:
    """Parse an HTTP ``Date`` header (RFC 7231 IMF-fixdate, or the obsolete forms
    :func:`email.utils.parsedate_to_datetime` reads) into an aware UTC datetime;
    :class:`AccessDenied` otherwise.  SigV4 allows ``Date`` instead of ``x-amz-date``: the
    string to sign then carries :func:`format_amz_date` of it."""
    try:
        when = parsedate_to_datetime(value)
        # In the try too: a date near year 1 or 9999 can leave datetime's range in UTC.
        return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
        raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header") from None


# -- parsing the client's signature ---------------------------------------------------------

_is_access_key = re.compile(r"[\x21-\x7e]{1,256}").fullmatch
_SCOPE_WORD = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_is_scope_word = re.compile(_SCOPE_WORD).fullmatch
_is_scope_date = re.compile(r"[0-9]{8}").fullmatch
_HEADER_NAME = r"[a-z0-9!#$%&'*+.^_`|~-]{1,256}"
_is_header_name_list = re.compile(rf"{_HEADER_NAME}+(?:;{_HEADER_NAME}+)*+").fullmatch
_is_signature = re.compile(r"[0-9a-f]{64}").fullmatch


class _SignatureParts:
    """What the two forms of a client's signature (header, presigned query) derive alike
    from their fields ``date``, ``region``, ``service``, ``terminator`` and ``signed_headers``."""

    __slots__ = ()

    @property
    def scope(self) -> str:
        """The credential scope without the access key (``date/region/service/aws4_request``)."""
        return f"{self.date}/{self.region}/{self.service}/{self.terminator}"

    @property
    def signed_headers_str(self) -> str:
        """The signed header names as they go into the canonical request."""
        return ";".join(self.signed_headers)


# The parsed forms are named tuples: immutable like a frozen dataclass, but built in one
# C call instead of one object.__setattr__ per field (a tenth of the cost).
class _ParsedAuthFields(NamedTuple):
    access_key: str
    date: str  # YYYYMMDD, from the credential scope
    region: str
    service: str
    terminator: str  # always "aws4_request"
    signed_headers: tuple[str, ...]  # lower-case, in the order given
    signature: str  # 64 lower-case hex digits


class ParsedAuth(_ParsedAuthFields, _SignatureParts):
    """The parts of a SigV4 ``Authorization`` header."""

    __slots__ = ()


# A credential that _checked_credential accepts, in one match: the access key runs to the
# fourth '/' from the end (the other parts have none, so the lazy match, which tries the
# short access keys first instead of backtracking from the end, finds the same split),
# years 0001-9999, days up to 28 (later days depend on the month and year: slow path).
_match_common_credential = re.compile(
    rf"([\x21-\x7e]{{1,256}}?)/((?!0000)[0-9]{{4}}(?:0[1-9]|1[0-2])(?:0[1-9]|1[0-9]|2[0-8]))"
    rf"/({_SCOPE_WORD})/({_SCOPE_WORD})/{TERMINATOR}").fullmatch


def _parse_credential(value: str, error) -> tuple[str, str, str, str, str]:
    """``(access key, date, region, service, "aws4_request")`` of a ``Credential``; ``error``
    (a message -> exception function) raised with the reason if it is malformed."""
    match = _match_common_credential(value)
    if match is not None:
        return (*match.groups(), TERMINATOR)
    return _checked_credential(value, error)


def _checked_credential(value: str, error) -> tuple[str, str, str, str, str]:
    # Every check in turn, for the precise error message (and the rare valid dates 29-31).
    parts = value.rsplit("/", 4)
    if len(parts) != 5:
        raise error("the Credential is malformed; expecting "
                    "\"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\".")
    access_key, date, region, service, terminator = parts
    if not _is_access_key(access_key):
        raise error("the Credential has an invalid access key id.")
    if not _is_scope_date(date):
        raise error("the Credential has an invalid date; expecting YYYYMMDD.")
    try:
        datetime(int(date[0:4]), int(date[4:6]), int(date[6:8]))
    except ValueError:
        raise error("the Credential has an invalid date; expecting YYYYMMDD.") from None
    if not _is_scope_word(region):
        raise error("the Credential has an invalid region.")
    if not _is_scope_word(service):
        raise error("the Credential has an invalid service.")
    if terminator != TERMINATOR:
        raise error("the Credential has an invalid terminal; expecting \"aws4_request\".")
    return access_key, date, region, service, terminator


_HOST_ONLY = ("host",)


def _parse_signed_headers(value: str, error) -> tuple[str, ...]:
    if value == "host":  # what presigned URLs sign, usually
        return _HOST_ONLY
    if not _is_header_name_list(value):
        raise error("SignedHeaders must be lower-case header names separated by ';'.")
    names = tuple(value.split(";"))
    if len(set(names)) != len(names):
        raise error("SignedHeaders lists a header twice.")
    if "host" not in names:
        raise error("SignedHeaders must include host.")
    return names


def _auth_error(message: str) -> InvalidArgument:
    return InvalidArgument(f"The authorization header is malformed; {message}", code=_MALFORMED_AUTH)


def parse_authorization_header(value: str) -> ParsedAuth:
    """Parse ``AWS4-HMAC-SHA256 Credential=AKID/YYYYMMDD/region/service/aws4_request,
    SignedHeaders=a;b;host, Signature=<64 hex>`` strictly.

    Spaces around the parts are tolerated, nothing else: each part exactly once, no other
    parts.  Raises :class:`InvalidArgument` (code ``AuthorizationHeaderMalformed``, or plain
    ``InvalidArgument`` for another algorithm) -- never anything but an ``S3Error``.
    """
    if not isinstance(value, str) or len(value) > _MAX_AUTH_LENGTH:
        raise _auth_error("it is not a SigV4 Authorization header.")
    algorithm, _, rest = value.strip(" \t").partition(" ")
    if algorithm != ALGORITHM:
        raise InvalidArgument("Unsupported Authorization Type", ArgumentName="Authorization")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, eq, field = part.strip(" \t").partition("=")
        if not eq or name not in ("Credential", "SignedHeaders", "Signature"):
            raise _auth_error("expecting Credential=..., SignedHeaders=..., Signature=....")
        if name in fields:
            raise _auth_error(f"{name} is given twice.")
        fields[name] = field
    if len(fields) != 3:
        raise _auth_error("expecting Credential=..., SignedHeaders=..., Signature=....")
    access_key, date, region, service, terminator = _parse_credential(fields["Credential"], _auth_error)
    signed = _parse_signed_headers(fields["SignedHeaders"], _auth_error)
    sig = fields["Signature"]
    if not _is_signature(sig):
        raise _auth_error("the Signature must be 64 lower-case hexadecimal digits.")
    return ParsedAuth(access_key, date, region, service, terminator, signed, sig)


class _ParsedPresignFields(NamedTuple):
    access_key: str
    date: str  # YYYYMMDD, from the credential scope
    region: str
    service: str
    terminator: str
    amz_date: str  # X-Amz-Date, YYYYMMDDTHHMMSSZ
    amz_seconds: int  # X-Amz-Date as POSIX seconds
    expires: int  # X-Amz-Expires, seconds, 1..604800
    signed_headers: tuple[str, ...]
    signature: str
    security_token: str | None


class ParsedPresign(_ParsedPresignFields, _SignatureParts):
    """The SigV4 parameters of a presigned URL."""

    __slots__ = ()

    @property
    def timestamp(self) -> datetime:
        """X-Amz-Date parsed (aware, UTC); built on demand, the authenticator uses ``amz_seconds``."""
        return datetime.fromtimestamp(self.amz_seconds, timezone.utc)


def _query_error(message: str) -> InvalidArgument:
    return InvalidArgument(message, code=_MALFORMED_QUERY)


_REQUIRED_PRESIGN = frozenset({"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date",
                               "X-Amz-SignedHeaders", "X-Amz-Expires"})


def parse_presigned_query(pairs: Iterable[tuple[str, str]]) -> ParsedPresign:
    """Parse the ``X-Amz-*`` parameters of a presigned URL from decoded query pairs (as
    :func:`parse_query` returns them).  Strict: each parameter at most once, all required
    ones present, algorithm ``AWS4-HMAC-SHA256``, ``X-Amz-Date`` matching the scope date,
    ``X-Amz-Expires`` an integer in 1..604800.  Raises :class:`InvalidArgument` (code
    ``AuthorizationQueryParametersError``) -- never anything but an ``S3Error``.
    """
    found: dict[str, str] = {}
    for name, value in pairs:
        if name in PRESIGN_QUERY_PARAMS:
            if name in found:
                raise _query_error(f"{name} is given twice.")
            found[name] = value
    if not found.keys() >= _REQUIRED_PRESIGN:
        raise _query_error("Query-string authentication version 4 requires the X-Amz-Algorithm, "
                           "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
                           "and X-Amz-Expires parameters.")
    if found["X-Amz-Algorithm"] != ALGORITHM:
        raise _query_error("X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"")
    access_key, date, region, service, terminator = _parse_credential(found["X-Amz-Credential"], _query_error)
    amz_date = found["X-Amz-Date"]
    try:
        amz_seconds = amz_date_seconds(amz_date)
    except AccessDenied:
        raise _query_error("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"") from None
    if amz_date[:8] != date:
        raise _query_error("Invalid credential date. Date is not the same as X-Amz-Date.")
    expires = found["X-Amz-Expires"]
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 10):
        raise _query_error("X-Amz-Expires should be a number")
    seconds = int(expires)
    if seconds < 1:
        raise _query_error("X-Amz-Expires must be at least 1 second")
    if seconds > MAX_PRESIGN_EXPIRES:
        raise _query_error("X-Amz-Expires must be less than a week (in seconds) that is 604800")
    signed = _parse_signed_headers(found["X-Amz-SignedHeaders"], _query_error)
    sig = found["X-Amz-Signature"]
    if not _is_signature(sig):
        raise _query_error("X-Amz-Signature must be 64 lower-case hexadecimal digits.")
    return ParsedPresign(access_key, date, region, service, terminator, amz_date, amz_seconds, seconds,
                         signed, sig, found.get("X-Amz-Security-Token"))


# -- signing --------------------------------------------------------------------------------

class Signer:
    """SigV4 signer for S3 requests with a bounded per-instance cache of signing keys.

    Not tied to credentials: every call names its keys, so one signer serves all backends.
    Meant for one event loop (no locks; the caches are plain dicts, safe under the GIL).
    """

    __slots__ = ("_keys", "_max_keys", "_last_second", "_last_amz_date", "_hmac_states")

    def __init__(self, max_keys: int = 1024) -> None:
        self._keys: dict[tuple[str, str, str, str], bytes] = {}
        self._max_keys = max_keys
        self._last_second = -1
        self._last_amz_date = ""
        self._hmac_states: dict[bytes, tuple] = {}

    def signature(self, signing_key: bytes, string_to_sign: str) -> str:
        """Like the module's :func:`signature`, with this signer's cached HMAC states."""
        return _hmac_hex(signing_key, string_to_sign.encode("utf-8", "surrogatepass"), self._hmac_states)

    # streaming helpers, also available as module functions
    chunk_signature = staticmethod(chunk_signature)
    trailer_signature = staticmethod(trailer_signature)

    def signing_key(self, secret: str, date: str, region: str, service: str) -> bytes:
        """The signing key for ``secret`` on ``date`` (YYYYMMDD) in ``region`` for ``service``,
        derived once and cached (bounded, oldest evicted first)."""
        cache_key = (secret, date, region, service)
        key = self._keys.get(cache_key)
        if key is None:
            key = derive_signing_key(secret, date, region, service)
            if len(self._keys) >= self._max_keys:
                del self._keys[next(iter(self._keys))]
            self._keys[cache_key] = key
        return key

    def _amz_date(self, now: datetime | None) -> str:
        if now is not None:
            return format_amz_date(now)
        second = int(time.time())
        if second != self._last_second:
            self._last_amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
            self._last_second = second
        return self._last_amz_date

    def sign(self, method: str, canonical_uri: str, query: str, headers: Mapping[str, str],
             payload_hash: str, *, access_key: str, secret_key: str, session_token: str | None = None,
             region: str, service: str = "s3", now: datetime | None = None,
             query_is_canonical: bool = False) -> dict[str, str]:
        """Sign a request with an ``Authorization`` header; return the headers to add.

        ``canonical_uri`` is the path exactly as it will be sent, already URI-encoded
        (:func:`uri_encode` with ``keep_slash``, or :func:`canonical_uri`).  ``query`` is the
        raw query string as it will be sent, canonicalised here; pass
        ``query_is_canonical=True`` if it already is (e.g. the output of
        :func:`canonical_query_string`, which is also the best thing to send).  ``headers``
        maps *lower-case* names to values and must contain ``host``; all of them are signed,
        plus the ones added.  ``payload_hash`` is the hex SHA-256 of the body or a sentinel
        such as :data:`UNSIGNED_PAYLOAD`.

        Returns ``x-amz-date``, ``x-amz-content-sha256`` (= ``payload_hash``),
        ``x-amz-security-token`` (with a session token) and ``authorization``; they replace
        any header of the same name in ``headers`` (an ``authorization`` there is ignored).
        """
        if "host" not in headers:
            raise ValueError("headers must include 'host'")
        amz_date = self._amz_date(now)
        date = amz_date[:8]
        added = {"x-amz-date": amz_date, "x-amz-content-sha256": payload_hash}
        if session_token:
            added["x-amz-security-token"] = session_token
        signed = {**headers, **added}
        signed.pop("authorization", None)
        names = sorted(signed)
        signed_names = ";".join(names)
        block = "".join([f"{n}:{' '.join(signed[n].split())}\n" for n in names])
        if not query_is_canonical:
            query = canonical_query_string(query)
        request = f"{method}\n{canonical_uri}\n{query}\n{block}\n{signed_names}\n{payload_hash}"
        scope = f"{date}/{region}/{service}/{TERMINATOR}"
        digest = hashlib.sha256(request.encode("utf-8", "surrogatepass")).hexdigest()
        sig = _hmac_hex(self.signing_key(secret_key, date, region, service),
                        f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}".encode("utf-8", "surrogatepass"),
                        self._hmac_states)
        added["authorization"] = (f"{ALGORITHM} Credential={access_key}/{scope}, "
                                  f"SignedHeaders={signed_names}, Signature={sig}")
        return added

    def presign_url_query(self, method: str, canonical_uri: str, host: str, raw_query: str, *,
                          access_key: str, secret_key: str, session_token: str | None = None,
                          region: str, service: str = "s3", expires_in: int,
                          now: datetime | None = None,
                          extra_signed_headers: Mapping[str, str] | None = None) -> str:
        """The query string of a presigned URL (without ``?``).

        The parameters of ``raw_query`` come first, re-encoded canonically in their order
        (any ``X-Amz-*`` signature parameters in it are dropped), then ``X-Amz-Algorithm``,
        ``X-Amz-Credential``, ``X-Amz-Date``, ``X-Amz-Expires``, ``X-Amz-SignedHeaders``,
        ``X-Amz-Security-Token`` (with a session token) and last ``X-Amz-Signature``.  The
        payload is ``UNSIGNED-PAYLOAD``; ``host`` and ``extra_signed_headers`` (names are
        lower-cased) are the signed headers the user of the URL must send.
        """
        if not 1 <= expires_in <= MAX_PRESIGN_EXPIRES:
            raise ValueError(f"expires_in must be in 1..{MAX_PRESIGN_EXPIRES}")
        amz_date = self._amz_date(now)
        date = amz_date[:8]
        scope = f"{date}/{region}/{service}/{TERMINATOR}"
        headers = {"host": host}
        if extra_signed_headers:
            headers.update((name.lower(), value) for name, value in extra_signed_headers.items())
        names = sorted(headers)
        signed_names = ";".join(names)
        block = "".join([f"{n}:{_trim(headers[n])}\n" for n in names])
        pairs = []
        for piece in raw_query.split("&") if raw_query else ():
            if piece:
                name, _, value = piece.partition("=")
                if name in PRESIGN_QUERY_PARAMS or ("%" in name and unquote(name) in PRESIGN_QUERY_PARAMS):
                    continue
                pairs.append((_canonical_component(name), _canonical_component(value)))
        auth = [("X-Amz-Algorithm", ALGORITHM), ("X-Amz-Credential", f"{access_key}/{scope}"),
                ("X-Amz-Date", amz_date), ("X-Amz-Expires", str(int(expires_in))),
                ("X-Amz-SignedHeaders", signed_names)]
        if session_token:
            auth.append(("X-Amz-Security-Token", session_token))
        pairs.extend((name, uri_encode(value)) for name, value in auth)
        query = "&".join([f"{n}={v}" for n, v in sorted(pairs)])
        request = f"{method}\n{canonical_uri}\n{query}\n{block}\n{signed_names}\n{UNSIGNED_PAYLOAD}"
        sig = signature(self.signing_key(secret_key, date, region, service),
                        string_to_sign(amz_date, scope, request))
        return "&".join([f"{n}={v}" for n, v in pairs]) + f"&X-Amz-Signature={sig}"
