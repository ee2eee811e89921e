"""Streaming decoder for S3 ``Content-Encoding: aws-chunked`` request bodies.

The proxy receives an aws-chunked body from the client and forwards a plain body
upstream with ``Content-Length = x-amz-decoded-content-length``.
:class:`AwsChunkedDecoder` turns the encoded stream into the decoded one as it
arrives, with bounded memory, and checks everything the encoding carries:

``STREAMING-UNSIGNED-PAYLOAD-TRAILER``
    ``<hex-size>\\r\\n<data>\\r\\n`` ... ``0\\r\\n`` then trailer lines
    (``x-amz-checksum-crc32:<base64>\\r\\n``) and an empty line.
    Construct with ``chunk_verifier=None`` and ``trailer_names`` from ``x-amz-trailer``.
``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``
    ``<hex-size>;chunk-signature=<sig>\\r\\n<data>\\r\\n`` ...
    ``0;chunk-signature=<sig>\\r\\n\\r\\n``.  Construct with a ``chunk_verifier``.
``STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER``
    As above, the final chunk followed by trailer lines, then
    ``x-amz-trailer-signature:<sig>\\r\\n\\r\\n``.  Construct with a
    ``chunk_verifier``, a ``trailer_verifier`` and ``trailer_names``.

Tolerated variations seen from real clients: an empty line between the final
``0`` chunk and the trailer lines, a stream that ends right after the last
trailer line (or after ``0\\r\\n``) without the closing empty line, and unknown
``;name=value`` chunk extensions (ignored).

Protecting the upstream: the decoder always holds back the last piece of
decoded data until the end of the encoded stream has been reached and every
check (signatures, trailing checksums, decoded length, framing) has passed.  When
a check fails, the upstream has therefore received fewer bytes than the
``Content-Length`` it was promised, and discards the upload.  (A body whose
decoded length is 0 has nothing to hold back: a caller that must not send even
an empty body before the checks pass should drain the decoder first.)

Checksums: CRC32 uses :func:`zlib.crc32`, SHA-1/SHA-256 :mod:`hashlib`,
CRC32C and CRC64NVME ``awscrt.checksums`` when it is importable.  Without
``awscrt`` those two fall back to a table-driven pure-Python implementation that
is correct but slow (a few tens of MB/s at best, and it runs on the event loop
thread); :data:`ACCELERATED_CRC` tells which one is in use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import sys
import zlib
from collections.abc import AsyncIterator, Callable, Sequence

from inproxy.errors import (
    BadDigest,
    EntityTooLarge,
    IncompleteBody,
    InvalidArgument,
    InvalidDigest,
    InvalidRequest,
)

__all__ = [
    "ACCELERATED_CRC",
    "CHECKSUM_TRAILERS",
    "DIGEST_SIZES",
    "STREAMING_SIGNED_PAYLOAD",
    "STREAMING_SIGNED_PAYLOAD_TRAILER",
    "STREAMING_UNSIGNED_PAYLOAD_TRAILER",
    "AwsChunkedDecoder",
    "ChunkVerifier",
    "TrailerVerifier",
    "canonical_trailers",
]

STREAMING_UNSIGNED_PAYLOAD_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_SIGNED_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_PAYLOAD_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"

TRAILER_SIGNATURE = "x-amz-trailer-signature"

ChunkVerifier = Callable[[str, str], None]
"""``chunk_verifier(chunk_sha256_hex, chunk_signature)``: raises (normally
``SignatureDoesNotMatch``) when the signature is wrong.  It is called once per
chunk, in order, the final 0-byte chunk included (its hash is the SHA-256 of the
empty string), so it can keep the chained "previous signature" itself: the
string to sign is ``AWS4-HMAC-SHA256-PAYLOAD\\n<date>\\n<scope>\\n<previous
signature>\\n<sha256 of "">\\n<chunk_sha256_hex>``."""

TrailerVerifier = Callable[[bytes, str], None]
"""``trailer_verifier(canonical_trailer_bytes, trailer_signature)``: raises when
the signature is wrong.  ``canonical_trailer_bytes`` is what SigV4 hashes for
the ``AWS4-HMAC-SHA256-TRAILER`` string to sign: every trailer but
``x-amz-trailer-signature``, sorted by name, as ``name:value\\n`` (see
:func:`canonical_trailers`)."""

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# --------------------------------------------------------------------------- checksums


def _reflected_table(poly: int) -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


class _PurePythonCrc:
    """A reflected CRC (init and final xor all ones), table-driven, slicing by words.

    Slow compared to C (every word is a Python loop iteration) but exact; used only
    when ``awscrt`` is missing.
    """

    def __init__(self, poly: int, width: int) -> None:
        self.mask = (1 << width) - 1
        self.word = width // 8  # bytes consumed per loop iteration
        base = _reflected_table(poly)
        tables = [base]
        for _ in range(1, self.word):
            prev = tables[-1]
            tables.append([(v >> 8) ^ base[v & 0xFF] for v in prev])
        self.tables = tables
        self.fmt = "I" if self.word == 4 else "Q"
        self.native_le = sys.byteorder == "little"

    def update(self, data: bytes | memoryview, crc: int = 0) -> int:
        """``crc`` (the CRC of the data so far, 0 to start) extended by ``data``.

        Same calling convention as :func:`zlib.crc32` and ``awscrt.checksums``.
        """
        crc ^= self.mask
        base = self.tables[0]
        view = memoryview(data)
        start = 0
        if self.native_le and len(view) >= 64:
            start = len(view) - len(view) % self.word
            if self.word == 4:
                crc = self._words4(crc, view[:start].cast("I"))
            else:
                crc = self._words8(crc, view[:start].cast("Q"))
        for byte in view[start:]:
            crc = base[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        return crc ^ self.mask

    def _words4(self, crc: int, words: memoryview) -> int:
        t0, t1, t2, t3 = self.tables
        for x in words:
            x ^= crc
            crc = t3[x & 0xFF] ^ t2[(x >> 8) & 0xFF] ^ t1[(x >> 16) & 0xFF] ^ t0[x >> 24]
        return crc

    def _words8(self, crc: int, words: memoryview) -> int:
        t0, t1, t2, t3, t4, t5, t6, t7 = self.tables
        for x in words:
            x ^= crc
            crc = (t7[x & 0xFF] ^ t6[(x >> 8) & 0xFF] ^ t5[(x >> 16) & 0xFF]
                   ^ t4[(x >> 24) & 0xFF] ^ t3[(x >> 32) & 0xFF] ^ t2[(x >> 40) & 0xFF]
                   ^ t1[(x >> 48) & 0xFF] ^ t0[x >> 56])
        return crc


_pure_crcs: dict[str, _PurePythonCrc] = {}


def _pure_crc(name: str) -> _PurePythonCrc:
    impl = _pure_crcs.get(name)
    if impl is None:
        if name == "crc32c":
            impl = _PurePythonCrc(0x82F63B78, 32)
        else:
            impl = _PurePythonCrc(0x9A6C9329AC4BC9B5, 64)
        _pure_crcs[name] = impl
    return impl


def _crt_function(name: str) -> Callable[[bytes, int], int] | None:
    try:
        from awscrt import checksums  # type: ignore[import-not-found,import-untyped]
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None
    return getattr(checksums, name, None)


_crt_crc32c = _crt_function("crc32c")
_crt_crc64nvme = _crt_function("crc64nvme")

ACCELERATED_CRC: dict[str, bool] = {
    "crc32c": _crt_crc32c is not None,
    "crc64nvme": _crt_crc64nvme is not None,
}
"""Whether CRC32C / CRC64NVME are computed by ``awscrt`` (True) or in pure Python."""


class _Checksum:
    """Incremental checksum with ``update(data)`` and ``digest() -> bytes``."""

    __slots__ = ("update", "digest")

    def __init__(self, update: Callable[[bytes], None], digest: Callable[[], bytes]) -> None:
        self.update = update
        self.digest = digest


def _hashlib_checksum(algorithm: str) -> _Checksum:
    h = hashlib.new(algorithm)
    return _Checksum(h.update, h.digest)


def _int_checksum(func: Callable[[bytes, int], int], size: int) -> _Checksum:
    state = [0]

    def update(data: bytes) -> None:
        state[0] = func(data, state[0])

    def digest() -> bytes:
        return state[0].to_bytes(size, "big")

    return _Checksum(update, digest)


def _crc32() -> _Checksum:
    return _int_checksum(zlib.crc32, 4)


def _crc32c() -> _Checksum:
    if _crt_crc32c is not None:
        return _int_checksum(_crt_crc32c, 4)
    return _int_checksum(_pure_crc("crc32c").update, 4)


def _crc64nvme() -> _Checksum:
    if _crt_crc64nvme is not None:
        return _int_checksum(_crt_crc64nvme, 8)
    return _int_checksum(_pure_crc("crc64nvme").update, 8)


CHECKSUM_TRAILERS: dict[str, Callable[[], _Checksum]] = {
    "x-amz-checksum-crc32": _crc32,
    "x-amz-checksum-crc32c": _crc32c,
    "x-amz-checksum-crc64nvme": _crc64nvme,
    "x-amz-checksum-sha1": lambda: _hashlib_checksum("sha1"),
    "x-amz-checksum-sha256": lambda: _hashlib_checksum("sha256"),
}
"""Trailer names whose value is checked against the decoded data."""

DIGEST_SIZES = {"x-amz-checksum-crc32": 4, "x-amz-checksum-crc32c": 4, "x-amz-checksum-crc64nvme": 8,
                "x-amz-checksum-sha1": 20, "x-amz-checksum-sha256": 32}
"""Size in bytes of each checksum trailer's digest (its value is the base64 of that many bytes)."""


def canonical_trailers(trailers: dict[str, str]) -> bytes:
    """The SigV4 canonical form of trailing headers: ``name:value\\n`` sorted by name.

    ``x-amz-trailer-signature`` is left out (it is what is being signed for).
    """
    return b"".join(f"{name}:{value}\n".encode("ascii")
                    for name, value in sorted(trailers.items()) if name != TRAILER_SIGNATURE)


# --------------------------------------------------------------------------- framing

# ``<hex size>[;ext...]\r\n``; extensions are checked separately.
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(;[\x20-\x7e]*)?\r\n")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[\x20-\x7e]*")

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)

_MAX_TRAILER_LINES = 64
_BIG_PART = 32 * 1024    # signed mode: keep pieces at least this big as they are
_SMALL_FLUSH = 64 * 1024  # signed mode: coalesce smaller pieces up to this size


class AwsChunkedDecoder:
    """Decode one ``aws-chunked`` request body, streaming, verifying as it goes.

    :param decoded_length: ``x-amz-decoded-content-length``; when given, the
        decoded data must be exactly this long (else ``IncompleteBody``).
    :param trailer_names: the ``x-amz-trailer`` header's names (a comma-separated
        string inside an item is split too; case-insensitive).  Every declared name
        must arrive as a trailer; those in :data:`CHECKSUM_TRAILERS` are computed
        over the decoded data and compared (``BadDigest``).  A trailer that was not
        declared is refused (``InvalidRequest``).  Declaring an
        ``x-amz-checksum-*`` algorithm not in :data:`CHECKSUM_TRAILERS` raises
        ``InvalidRequest("unsupported checksum ...")`` here, at construction.
    :param chunk_verifier: ``None`` for unsigned chunks (signatures present in
        chunk extensions are then ignored).  Otherwise every chunk must carry
        ``;chunk-signature=`` and ``chunk_verifier(sha256_hex_of_chunk_data,
        signature)`` is called once the chunk has been fully received, before any
        of its bytes are yielded -- see :data:`ChunkVerifier`.
    :param trailer_verifier: ``None`` when the trailers are not signed.
        Otherwise ``x-amz-trailer-signature`` must be present and
        ``trailer_verifier(canonical_trailer_bytes, signature)`` is called -- see
        :data:`TrailerVerifier`.
    :param max_chunk_size: largest chunk accepted in signed mode, where one chunk
        is buffered for verification (``EntityTooLarge`` beyond).  Unsigned chunks
        are never buffered and have no limit but ``decoded_length``.
    :param max_line: longest chunk-size line or trailer line, CRLF included
        (``InvalidRequest`` beyond).

    Verifier exceptions propagate unchanged.  Everything else raised by
    :meth:`decode` because of the body's content is an :class:`~inproxy.errors.S3Error`;
    exceptions from the source itself (e.g. a client disconnect) propagate as they are.

    After :meth:`decode` has finished, :attr:`trailers` maps each trailer name
    (lower case) to its value, :attr:`trailer_signature` holds the trailer
    signature if one was sent, and :attr:`decoded_bytes` the decoded length.
    """

    trailers: dict[str, str]
    trailer_signature: str | None
    decoded_bytes: int

    def __init__(self, *, decoded_length: int | None, trailer_names: Sequence[str] = (),
                 chunk_verifier: ChunkVerifier | None = None,
                 trailer_verifier: TrailerVerifier | None = None,
                 max_chunk_size: int = 16 * 1024 * 1024, max_line: int = 4096) -> None:
        if decoded_length is not None and decoded_length < 0:
            raise InvalidArgument("x-amz-decoded-content-length must not be negative")
        if isinstance(trailer_names, (str, bytes)):
            trailer_names = [trailer_names]  # type: ignore[list-item]
        names: list[str] = []
        for item in trailer_names:
            if isinstance(item, bytes):
                item = item.decode("latin-1")
            for name in item.split(","):
                name = name.strip().lower()
                if name and name not in names:
                    names.append(name)
        checksums: list[tuple[str, _Checksum]] = []
        for name in names:
            if name == TRAILER_SIGNATURE:
                continue
            factory = CHECKSUM_TRAILERS.get(name)
            if factory is not None:
                checksums.append((name, factory()))
            elif name.startswith("x-amz-checksum-"):
                raise InvalidRequest(f"unsupported checksum algorithm in x-amz-trailer: {name[:64]}")
        self._declared = [n for n in names if n != TRAILER_SIGNATURE]
        self._declared_set = frozenset(self._declared)
        self._checksums = checksums
        self._checksum_updates = [c.update for _, c in checksums]
        self._decoded_length = decoded_length
        self._chunk_verifier = chunk_verifier
        self._trailer_verifier = trailer_verifier
        self._max_chunk_size = max_chunk_size
        self._max_line = max_line
        self._expect_trailers = bool(self._declared) or trailer_verifier is not None

        self.trailers = {}
        self.trailer_signature = None
        self.decoded_bytes = 0

        self._state = _SIZE
        self._line = bytearray()
        self._remaining = 0          # data bytes left in the current chunk
        self._crlf_seen = 0          # bytes of the CRLF after chunk data already seen
        self._chunk_signature = ""
        self._chunk_hash = hashlib.sha256()
        self._chunk_parts: list[bytes] = []
        self._chunk_small = bytearray()
        self._trailer_lines = 0
        self._blank_skipped = False
        self._started = False

    # ------------------------------------------------------------------ public

    async def decode(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Decode ``source`` (encoded pieces, split anywhere) into decoded data.

        An async generator.  Unsigned chunk data is yielded as soon as it arrives;
        signed chunks once verified.  The last piece is held back until ``source``
        is exhausted and every check has passed.  Can be used once.
        """
        if self._started:
            raise RuntimeError("AwsChunkedDecoder.decode() can only be used once")
        self._started = True
        pending: bytes | None = None
        out: list[bytes] = []
        feed = self._feed
        async for piece in source:
            if not piece:
                continue
            if type(piece) is not bytes:
                piece = bytes(piece)  # never keep a reference to a reusable buffer
            feed(piece, out)
            if out:
                if pending is not None:
                    yield pending
                last = len(out) - 1
                for i in range(last):
                    yield out[i]
                pending = out[last]
                out.clear()
        self._finish()
        if pending is not None:
            yield pending

    @property
    def checksum_names(self) -> list[str]:
        """The declared trailers whose checksum this decoder computes and compares."""
        return [name for name, _ in self._checksums]

    def verified_checksum(self, name: str) -> str:
        """The value of checksum trailer ``name`` once :meth:`decode` has finished: the
        checksum computed over the decoded data, which matched the one sent, in canonical base64."""
        if self._state != _DONE:
            raise RuntimeError("the checksum is verified only once the whole body is decoded")
        checksum = dict(self._checksums)[name]
        return base64.b64encode(checksum.digest()).decode("ascii")

    # ------------------------------------------------------------------ parsing

    def _feed(self, piece: bytes, out: list[bytes]) -> None:
        """Parse one piece, appending decoded data that may be released to ``out``."""
        pos = 0
        end = len(piece)
        while pos < end:
            state = self._state
            if state == _DATA:
                take = self._remaining
                if take > end - pos:
                    take = end - pos
                part = piece if take == end else piece[pos:pos + take]
                pos += take
                self._remaining -= take
                for update in self._checksum_updates:
                    update(part)
                if self._chunk_verifier is None:
                    out.append(part)
                else:
                    self._chunk_hash.update(part)
                    self._keep(part)
                if self._remaining == 0:
                    self._state = _DATA_END
                    if self._chunk_verifier is not None:
                        self._release_chunk(out)
            elif state == _DATA_END:
                # Expect the CRLF that closes the chunk data (maybe split).
                if self._crlf_seen == 0:
                    if piece[pos] != 0x0D:
                        raise InvalidRequest("aws-chunked: chunk data not followed by CRLF")
                    pos += 1
                    self._crlf_seen = 1
                    if pos == end:
                        break
                if piece[pos] != 0x0A:
                    raise InvalidRequest("aws-chunked: chunk data not followed by CRLF")
                pos += 1
                self._crlf_seen = 0
                self._state = _SIZE
            elif state == _DONE:
                raise InvalidRequest("aws-chunked: data after the end of the body")
            else:
                line, pos = self._read_line(piece, pos, end)
                if line is None:
                    break
                if state == _SIZE:
                    self._size_line(line)
                else:
                    self._trailer_line(line)

    def _read_line(self, piece: bytes, pos: int, end: int) -> tuple[bytes | None, int]:
        """Return (complete line with its CRLF, new position) or (None, end)."""
        nl = piece.find(b"\n", pos, min(end, pos + self._max_line + 1 - len(self._line)))
        if nl < 0:
            self._line += piece[pos:end]
            if len(self._line) >= self._max_line:
                raise InvalidRequest("aws-chunked: line too long")
            return None, end
        if self._line:
            self._line += piece[pos:nl + 1]
            line = bytes(self._line)
            self._line.clear()
        else:
            line = piece[pos:nl + 1]
        if len(line) < 2 or line[-2] != 0x0D:
            raise InvalidRequest("aws-chunked: line not terminated by CRLF")
        return line, nl + 1

    def _size_line(self, line: bytes) -> None:
        match = _SIZE_LINE.fullmatch(line)
        if match is None:
            raise InvalidRequest("aws-chunked: malformed chunk size line")
        size = int(match.group(1), 16)
        signature = None
        extensions = match.group(2)
        if extensions:
            for ext in extensions[1:].split(b";"):
                name, _, value = ext.partition(b"=")
                if name.strip().lower() == b"chunk-signature":
                    value = value.strip()
                    if signature is not None or not value or not _TOKEN.fullmatch(value):
                        raise InvalidRequest("aws-chunked: malformed chunk-signature")
                    signature = value.decode("ascii")
        verifier = self._chunk_verifier
        if verifier is not None:
            if signature is None:
                raise InvalidRequest("aws-chunked: chunk without chunk-signature")
            if size > self._max_chunk_size:
                raise EntityTooLarge(f"aws-chunked: chunk larger than {self._max_chunk_size} bytes")
        total = self.decoded_bytes + size
        expected = self._decoded_length
        if expected is not None and total > expected:
            raise IncompleteBody("aws-chunked: body longer than x-amz-decoded-content-length")
        self.decoded_bytes = total
        if size == 0:
            if verifier is not None:
                verifier(_EMPTY_SHA256, signature)  # type: ignore[arg-type]
            if expected is not None and total != expected:
                raise IncompleteBody("aws-chunked: body shorter than x-amz-decoded-content-length")
            self._state = _TRAILER
            return
        self._remaining = size
        self._state = _DATA
        if verifier is not None:
            self._chunk_signature = signature  # type: ignore[assignment]
            self._chunk_hash = hashlib.sha256()

    def _trailer_line(self, line: bytes) -> None:
        if len(line) == 2:  # the empty line
            if self._trailer_lines == 0 and self._expect_trailers and not self._blank_skipped:
                # Tolerate "0\r\n\r\n" followed by the trailers.
                self._blank_skipped = True
                return
            self._finish_trailers(at_eof=False)
            self._state = _DONE
            return
        self._trailer_lines += 1
        if self._trailer_lines > _MAX_TRAILER_LINES:
            raise InvalidRequest("aws-chunked: too many trailer lines")
        raw_name, colon, raw_value = line[:-2].partition(b":")
        name_b = raw_name.strip(b" \t")
        value_b = raw_value.strip(b" \t")
        if not colon or not _TOKEN.fullmatch(name_b) or not _VALUE.fullmatch(value_b):
            raise InvalidRequest("aws-chunked: malformed trailer line")
        name = name_b.decode("ascii").lower()
        value = value_b.decode("ascii")
        if name == TRAILER_SIGNATURE:
            if self.trailer_signature is not None:
                raise InvalidRequest("aws-chunked: repeated x-amz-trailer-signature")
            self.trailer_signature = value
            return
        if name in self.trailers:
            raise InvalidRequest("aws-chunked: repeated trailer")
        if name not in self._declared_set:
            raise InvalidRequest("aws-chunked: trailer not declared in x-amz-trailer")
        self.trailers[name] = value

    def _finish_trailers(self, *, at_eof: bool) -> None:
        """Check the complete trailer section: presence, signature, checksums."""
        # At the end of the stream a missing trailer means a truncated body.
        missing = IncompleteBody if at_eof else InvalidRequest
        for name in self._declared:
            if name not in self.trailers:
                raise missing(f"aws-chunked: missing trailer {name[:64]}")
        verifier = self._trailer_verifier
        if verifier is not None:
            if self.trailer_signature is None:
                raise missing("aws-chunked: missing x-amz-trailer-signature")
            verifier(canonical_trailers(self.trailers), self.trailer_signature)
        for name, checksum in self._checksums:
            value = self.trailers[name]
            try:
                sent = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidDigest(f"aws-chunked: {name} is not valid base64") from None
            if len(sent) != DIGEST_SIZES[name]:
                raise InvalidDigest(f"aws-chunked: {name} has the wrong length")
            if sent != checksum.digest():
                raise BadDigest(f"The {name[len('x-amz-checksum-'):].upper()} you specified did not "
                                "match the calculated checksum.")

    def _finish(self) -> None:
        """The source is exhausted: the body must be complete."""
        state = self._state
        if state == _DONE:
            return
        if state == _TRAILER and not self._line:
            # Tolerate a stream that stops after the last trailer line (or "0\r\n").
            self._finish_trailers(at_eof=True)
            self._state = _DONE
            return
        raise IncompleteBody("aws-chunked: the body ended before it was complete")

    # ------------------------------------------------------------------ signed chunks

    def _keep(self, part: bytes) -> None:
        """Buffer part of a signed chunk (coalescing small pieces)."""
        if len(part) >= _BIG_PART:
            if self._chunk_small:
                self._chunk_parts.append(bytes(self._chunk_small))
                self._chunk_small.clear()
            self._chunk_parts.append(part)
        else:
            self._chunk_small += part
            if len(self._chunk_small) >= _SMALL_FLUSH:
                self._chunk_parts.append(bytes(self._chunk_small))
                self._chunk_small.clear()

    def _release_chunk(self, out: list[bytes]) -> None:
        """Verify the buffered signed chunk and release its data."""
        assert self._chunk_verifier is not None
        self._chunk_verifier(self._chunk_hash.hexdigest(), self._chunk_signature)
        if self._chunk_small:
            self._chunk_parts.append(bytes(self._chunk_small))
            self._chunk_small.clear()
        out.extend(self._chunk_parts)
        self._chunk_parts.clear()
