"""The client's request body: read, verify, decode.

One path for every body the proxy takes from a client, whether it streams to the
backend or is read whole first (DeleteObjects, which is authorized key by key):
``aws-chunked`` decoded with its chunk signatures checked, or a plain body checked
against its ``x-amz-content-sha256``, and ``100 Continue`` sent at most once.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, AsyncIterator

from aiohttp.web_protocol import RequestPayloadError

from . import errors
from .s3 import reframe, sigv4
from .s3.chunked import AwsChunkedDecoder
from .s3.headers import decimal_count

if TYPE_CHECKING:
    from .context import RequestContext
    from .front import FrontRequest

__all__ = ["STATE_CHUNK_DECODER", "STATE_CONTINUE_SENT", "chunk_decoder", "client_body", "client_payload_hash",
           "decoded_length", "forward_checksum", "is_aws_chunked", "once", "read_all", "send_continue",
           "sha256_checked", "verified_body"]

log = logging.getLogger("inproxy")

#: ``ctx.state`` key: ``True`` once ``100 Continue`` has been written to the client.
STATE_CONTINUE_SENT = "continue_sent"
#: ``ctx.state`` key: the :class:`AwsChunkedDecoder` of the client's body, once one was made.
STATE_CHUNK_DECODER = "chunk_decoder"
_STREAMING_PREFIX = "STREAMING-"


async def send_continue(ctx: "RequestContext") -> None:
    """Write ``100 Continue`` when the client waits for it, once per request.  Only for a
    request already authenticated and authorized: it lets the client send its body."""
    request = ctx.request
    if request.headers.get("expect", "").lower() == "100-continue" and not ctx.state.get(STATE_CONTINUE_SENT):
        await request.send_continue()
        ctx.state[STATE_CONTINUE_SENT] = True


def client_payload_hash(request: "FrontRequest") -> str:
    """The client's ``x-amz-content-sha256`` ("" without one): a sentinel, or a SHA-256 in
    lower-case hex (upper-case hex is lowered).  Anything else is refused, as S3 does: it
    would otherwise pass as "no hash" and the body go on unchecked."""
    value = request.headers.get("x-amz-content-sha256", "")
    if not value or value in sigv4.PAYLOAD_SENTINELS or sigv4.is_sha256_hex(value):
        return value
    lowered = value.lower()
    if sigv4.is_sha256_hex(lowered):
        return lowered
    raise errors.InvalidArgument(
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, "
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD, STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER "
        "or a valid sha256 value.")


def is_aws_chunked(request: "FrontRequest", client_hash: str) -> bool:
    """Whether the body is ``aws-chunked``: a streaming payload hash or the content encoding says so."""
    if client_hash.startswith(_STREAMING_PREFIX):
        return True
    if "content-encoding" not in request.headers:  # the common case: one lookup
        return False
    encodings = request.headers.getall("content-encoding", [])
    return any(c.strip().lower() == "aws-chunked" for e in encodings for c in e.split(","))


def decoded_length(request: "FrontRequest") -> int:
    """``x-amz-decoded-content-length`` of an aws-chunked body (required)."""
    decoded = request.headers.get("x-amz-decoded-content-length")
    if decoded is None:
        raise errors.MissingContentLength("aws-chunked bodies need x-amz-decoded-content-length.")
    length = decimal_count(decoded)
    if length is None:
        raise errors.InvalidArgument("x-amz-decoded-content-length must be a non-negative integer.")
    return length


def verified_body(ctx: "RequestContext", chunked: bool, client_hash: str, *,
                  verify_hash: bool) -> tuple[AsyncIterator[bytes] | None, int | None]:
    """The client's body as it may go on, and its length (None: no body, or unknown).

    The iterator raises, before its last piece, when the body does not verify: a chunk
    signature or trailer checksum, or (with ``verify_hash``) the SHA-256 the client signed.
    """
    request = ctx.request
    declared = request.content_length
    if chunked:
        length = decoded_length(request)
        decoder = chunk_decoder(ctx, length, client_hash)
        ctx.state[STATE_CHUNK_DECODER] = decoder  # its verified checksum may go on: forward_checksum
        return decoder.decode(client_body(request, declared)), length
    if declared is None:
        if request.body_exists:
            raise errors.MissingContentLength()
        return None, None
    literal = client_hash if sigv4.is_sha256_hex(client_hash) else None
    if declared == 0:
        if literal is not None and literal != sigv4.EMPTY_SHA256:
            raise errors.XAmzContentSHA256Mismatch()
        return None, 0
    body = client_body(request, declared)
    if literal is not None and verify_hash:
        body = sha256_checked(body, literal)
    return body, declared


def chunk_decoder(ctx: "RequestContext", decoded_length: int, client_hash: str) -> AwsChunkedDecoder:
    """The decoder of this request's aws-chunked body, checking what the authenticator can verify."""
    trailer = ctx.request.headers.get("x-amz-trailer", "")
    names = [n.strip().lower() for n in trailer.split(",") if n.strip()]
    verifier = ctx.state.get("chunk_verifier")
    if client_hash.startswith(sigv4.STREAMING_PAYLOAD) and verifier is None:
        # Signed chunks from an identity that did not sign with SigV4 (no verifier was set up).
        log.debug("request %s: chunk signatures present but not verified by this authenticator",
                  ctx.request_id)
    # Only the -TRAILER variant ends with a signed trailer; expecting one otherwise would
    # fail every plain signed-chunk upload (Java SDK v1, minio-go over HTTP).
    signed_trailer = client_hash == sigv4.STREAMING_PAYLOAD_TRAILER
    return AwsChunkedDecoder(
        decoded_length=decoded_length, trailer_names=names,
        chunk_verifier=getattr(verifier, "verify_chunk", None),
        trailer_verifier=getattr(verifier, "verify_trailer", None) if signed_trailer else None,
    )


def forward_checksum(ctx: "RequestContext", headers: dict[str, str]) -> bool:
    """Re-frame ``ctx.body``, the decoded aws-chunked body, so that its one trailing checksum
    goes on to the backend once verified (:mod:`inproxy.s3.reframe`): sets ``ctx.body``,
    ``ctx.body_length`` and the framing ``headers``.  Whether it did: not when the backend
    does not take checksums, nor when the client sent none (or several)."""
    decoder: AwsChunkedDecoder | None = ctx.state.get(STATE_CHUNK_DECODER)
    if decoder is None or ctx.body is None or ctx.body_length is None or not ctx.backend.forwards_checksums:
        return False
    names = decoder.checksum_names
    if len(names) != 1:
        return False
    trailer = names[0]
    algorithm = ctx.request.headers.get("x-amz-sdk-checksum-algorithm")
    reframe.reframed_headers(headers, trailer, ctx.body_length, algorithm)
    ctx.body = reframe.reframe(ctx.body, decoder, trailer)
    ctx.body_length = reframe.framed_length(ctx.body_length, trailer)
    return True


async def client_body(request: "FrontRequest", declared: int | None) -> AsyncIterator[bytes]:
    """The client's raw body; ending before Content-Length is an error, not a short upload."""
    received = 0
    try:
        async for chunk in request.content.iter_any():
            received += len(chunk)
            yield chunk
    except (ConnectionError, RequestPayloadError) as exc:  # the client went away mid-body
        raise errors.IncompleteBody() from exc
    if declared is not None and received != declared:
        raise errors.IncompleteBody()


async def sha256_checked(body: AsyncIterator[bytes], expected: str) -> AsyncIterator[bytes]:
    """Pass the body through while hashing it; the last piece is held back until the hash
    matches, so a mismatch means the backend never gets the whole Content-Length."""
    digest = hashlib.sha256()
    held = None
    async for chunk in body:
        digest.update(chunk)
        if held is not None:
            yield held
        held = chunk
    if digest.hexdigest() != expected:
        raise errors.XAmzContentSHA256Mismatch()
    if held is not None:
        yield held


async def read_all(body: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body, held in memory: EntityTooLarge (reading no further) past ``limit`` bytes."""
    pieces, size = [], 0
    async for piece in body:
        size += len(piece)
        if size > limit:
            raise errors.EntityTooLarge()
        pieces.append(piece)
    return b"".join(pieces)


async def once(data: bytes) -> AsyncIterator[bytes]:
    """``data`` as a body of one piece (none when empty)."""
    if data:
        yield data
