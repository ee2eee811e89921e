"""Re-framing a decoded ``aws-chunked`` body for the backend, with its trailing checksum.

The proxy decodes the client's aws-chunked body (:class:`~inproxy.s3.chunked.AwsChunkedDecoder`
checks the chunk signatures and the trailing checksum).  Sent on as a plain body the checksum
would be lost: the backend would store none, and AWS refuses the parts of a multipart upload
created with a ``ChecksumAlgorithm`` that come without one.  So the decoded data goes on as
``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` in chunks of the proxy's own size, and the trailer
carries the checksum the decoder has just verified.

The framing depends only on the decoded length and on the checksum algorithm (its value has
a fixed length), so the upstream ``Content-Length`` is known before the body starts: S3
refuses ``Transfer-Encoding: chunked`` for PutObject.  One chunk at most is held.

No ``Content-Encoding: aws-chunked`` is sent: backends recognise the framing by
``x-amz-content-sha256`` (AWS documents only that header and ``x-amz-trailer`` as required
for trailers), and some (SeaweedFS 4.48) store the coding as the object's own, answering
``Content-Encoding: aws-chunked`` on every GET.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping

from .chunked import DIGEST_SIZES, AwsChunkedDecoder

__all__ = ["CHUNK_SIZE", "framed_length", "reframe", "reframed_headers"]

CHUNK_SIZE = 64 * 1024
"""Decoded bytes per upstream chunk (the last one shorter)."""
_CRLF = b"\r\n"


def _base64_length(size: int) -> int:
    return 4 * ((size + 2) // 3)


def _chunk_length(size: int) -> int:
    return len(b"%x" % size) + 2 + size + 2


def framed_length(decoded_length: int, trailer: str, chunk_size: int = CHUNK_SIZE) -> int:
    """The length of what :func:`reframe` sends for ``decoded_length`` bytes of data."""
    full, rest = divmod(decoded_length, chunk_size)
    data = full * _chunk_length(chunk_size) + (_chunk_length(rest) if rest else 0)
    # "0\r\n", "<name>:<value>\r\n", "\r\n"
    return data + 3 + len(trailer) + 1 + _base64_length(DIGEST_SIZES[trailer]) + 2 + 2


def reframed_headers(headers: MutableMapping[str, str], trailer: str, decoded_length: int,
                     sdk_algorithm: str | None) -> None:
    """Announce the framing :func:`reframe` sends (``Content-Length`` is the caller's, from
    :func:`framed_length`).  The client's ``x-amz-sdk-checksum-algorithm`` goes on: moto, for
    one, stores the trailer's checksum only with it."""
    headers["x-amz-decoded-content-length"] = str(decoded_length)
    headers["x-amz-trailer"] = trailer
    if sdk_algorithm:
        headers["x-amz-sdk-checksum-algorithm"] = sdk_algorithm


def _chunk(data: bytes | bytearray | memoryview) -> bytes:
    return b"".join((b"%x\r\n" % len(data), data, _CRLF))


async def reframe(body: AsyncIterator[bytes], decoder: AwsChunkedDecoder, trailer: str,
                  chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    """``body`` (the data ``decoder`` yields, perhaps through other generators) in chunks of
    ``chunk_size``, then the final chunk and the ``trailer`` line.  The trailer is read from
    the decoder only once ``body`` has ended, so a body that fails (a checksum mismatch)
    never sends it: the backend then gets less than its ``Content-Length``."""
    held = bytearray()
    async for piece in body:
        view, pos = memoryview(piece), 0
        if held:  # complete the chunk begun by earlier pieces
            pos = min(chunk_size - len(held), len(view))
            held += view[:pos]
            if len(held) < chunk_size:
                continue
            yield _chunk(held)
            held.clear()
        while len(view) - pos >= chunk_size:  # whole chunks straight from the piece
            yield _chunk(view[pos:pos + chunk_size])
            pos += chunk_size
        held += view[pos:]
    if held:
        yield _chunk(held)
    value = decoder.verified_checksum(trailer)
    yield b"0\r\n%s:%s\r\n\r\n" % (trailer.encode("ascii"), value.encode("ascii"))
