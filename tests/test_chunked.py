"""The aws-chunked decoder: real botocore bodies, signed bodies, failures, robustness, speed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import random
import time
import zlib
from collections.abc import AsyncIterator, Iterable

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum, Sha256Checksum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inproxy.errors import (
    BadDigest,
    EntityTooLarge,
    IncompleteBody,
    InvalidArgument,
    InvalidDigest,
    InvalidRequest,
    S3Error,
    SignatureDoesNotMatch,
)
from inproxy.s3 import chunked, reframe
from inproxy.s3.chunked import AwsChunkedDecoder, canonical_trailers

MiB = 1024 * 1024


# --------------------------------------------------------------------------- helpers

async def _source(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def random_pieces(body: bytes, rng: random.Random, max_piece: int = 70_000) -> list[bytes]:
    """``body`` cut at random points (pieces of 1..max_piece bytes, small ones frequent)."""
    pieces, pos = [], 0
    while pos < len(body):
        size = rng.choice((1, 2, 3, rng.randint(1, 20), rng.randint(1, max_piece)))
        pieces.append(body[pos:pos + size])
        pos += size
    return pieces


def every_byte(body: bytes) -> list[bytes]:
    return [body[i:i + 1] for i in range(len(body))]


async def collect(decoder: AwsChunkedDecoder, pieces: Iterable[bytes]) -> bytes:
    return b"".join([part async for part in decoder.decode(_source(pieces))])


async def collect_until_error(decoder: AwsChunkedDecoder, pieces: Iterable[bytes]
                              ) -> tuple[bytes, BaseException | None]:
    """What was yielded before the decoder failed, and the error."""
    got: list[bytes] = []
    try:
        async for part in decoder.decode(_source(pieces)):
            got.append(part)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return b"".join(got), exc
    return b"".join(got), None


def botocore_body(data: bytes, checksum: str | None = "crc32", chunk_size: int | None = None) -> bytes:
    """The aws-chunked body botocore itself sends (``STREAMING-UNSIGNED-PAYLOAD-TRAILER``)."""
    classes = {"crc32": Crc32Checksum, "sha256": Sha256Checksum}
    wrapper = AwsChunkedWrapper(io.BytesIO(data), checksum_cls=classes[checksum] if checksum else None,
                                checksum_name=f"x-amz-checksum-{checksum}", chunk_size=chunk_size)
    # Read it as the HTTP layer does, in blocks, to exercise the wrapper's own framing.
    out = bytearray()
    while block := wrapper.read(8192):
        out += block
    return bytes(out)


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def crc32_b64(data: bytes) -> str:
    return b64(zlib.crc32(data).to_bytes(4, "big"))


def unsigned_body(chunks: list[bytes], trailers: str = "", *, blank_before_trailers: bool = False,
                  final_crlf: bool = True) -> bytes:
    """Hand-built unsigned aws-chunked body."""
    out = bytearray()
    for chunk in chunks:
        out += b"%x\r\n%s\r\n" % (len(chunk), chunk)
    out += b"0\r\n"
    if blank_before_trailers:
        out += b"\r\n"
    out += trailers.encode()
    if final_crlf:
        out += b"\r\n"
    return bytes(out)


def make_data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


# --------------------------------------------------------------------------- SigV4 chunk signing

def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class SigV4Chain:
    """SigV4 streaming signatures, chained from a seed: signs (for building bodies) and
    verifies (as the decoder's chunk_verifier / trailer_verifier), recording every call."""

    def __init__(self, secret: str, amz_date: str, region: str, seed: str) -> None:
        day = amz_date[:8]
        key = _hmac(("AWS4" + secret).encode(), day)
        for part in (region, "s3", "aws4_request"):
            key = _hmac(key, part)
        self.key = key
        self.amz_date = amz_date
        self.scope = f"{day}/{region}/s3/aws4_request"
        self.previous = seed
        self.calls: list[tuple[str, str]] = []

    def _sign(self, kind: str, digest: str) -> str:
        if kind == "chunk":
            sts = "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", self.amz_date, self.scope, self.previous,
                             EMPTY_SHA256, digest))
        else:
            sts = "\n".join(("AWS4-HMAC-SHA256-TRAILER", self.amz_date, self.scope, self.previous, digest))
        return hmac.new(self.key, sts.encode(), hashlib.sha256).hexdigest()

    def sign_chunk(self, data: bytes) -> str:
        self.previous = self._sign("chunk", hashlib.sha256(data).hexdigest())
        return self.previous

    def sign_trailer(self, trailers: dict[str, str]) -> str:
        self.previous = self._sign("trailer", hashlib.sha256(canonical_trailers(trailers)).hexdigest())
        return self.previous

    def verify_chunk(self, chunk_sha256: str, signature: str) -> None:
        self.calls.append(("chunk", chunk_sha256))
        expected = self._sign("chunk", chunk_sha256)
        if not hmac.compare_digest(expected, signature):
            raise SignatureDoesNotMatch()
        self.previous = expected

    def verify_trailer(self, canonical: bytes, signature: str) -> None:
        self.calls.append(("trailer", canonical.decode()))
        expected = self._sign("trailer", hashlib.sha256(canonical).hexdigest())
        if not hmac.compare_digest(expected, signature):
            raise SignatureDoesNotMatch()
        self.previous = expected


def signed_body(chain: SigV4Chain, chunks: list[bytes], trailers: dict[str, str] | None = None) -> bytes:
    out = bytearray()
    for chunk in [*chunks, b""]:
        out += b"%x;chunk-signature=%s\r\n" % (len(chunk), chain.sign_chunk(chunk).encode())
        if chunk:
            out += chunk + b"\r\n"
    if trailers is None:
        return bytes(out + b"\r\n")
    for name, value in trailers.items():
        out += f"{name}:{value}\r\n".encode()
    out += f"x-amz-trailer-signature:{chain.sign_trailer(trailers)}\r\n\r\n".encode()
    return bytes(out)


def verifying_chain(seed: str) -> SigV4Chain:
    return SigV4Chain("test-secret", "20260101T000000Z", "eu-west-1", seed)


def split_data(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


# AWS's published example (sigv4-streaming / sigv4-streaming-trailers): 65,536 and 1,024 bytes of 'a'.
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_DATE = "20130524T000000Z"


def aws_example(trailer: bool) -> tuple[bytes, SigV4Chain]:
    if trailer:
        seed = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
        sigs = ["b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
                "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
                "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"]
        tail = (b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
                b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n"
                b"\r\n")
    else:
        seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
        sigs = ["ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
                "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
                "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"]
        tail = b"\r\n"
    body = (b"10000;chunk-signature=" + sigs[0].encode() + b"\r\n" + b"a" * 65536 + b"\r\n"
            + b"400;chunk-signature=" + sigs[1].encode() + b"\r\n" + b"a" * 1024 + b"\r\n"
            + b"0;chunk-signature=" + sigs[2].encode() + b"\r\n" + tail)
    return body, SigV4Chain(AWS_SECRET, AWS_DATE, "us-east-1", seed)


# --------------------------------------------------------------------------- unsigned, from botocore

BOTO_SIZES = [0, 1, 2, 100, 8191, 8192, 8193, 16384, 65535, 65536, 65537, MiB - 1, MiB, MiB + 1, 3 * MiB + 17]


@pytest.mark.parametrize("checksum", ["crc32", "sha256"])
@pytest.mark.parametrize("size", BOTO_SIZES)
async def test_botocore_bodies_decode(size: int, checksum: str) -> None:
    data = make_data(size, seed=size)
    rng = random.Random(size * 31 + len(checksum))
    for chunk_size in (None, 8192):  # botocore's default 1 MiB, and small chunks
        body = botocore_body(data, checksum, chunk_size)
        for _ in range(3):
            decoder = AwsChunkedDecoder(decoded_length=size, trailer_names=[f"x-amz-checksum-{checksum}"])
            assert await collect(decoder, random_pieces(body, rng)) == data
            assert decoder.decoded_bytes == size
            assert set(decoder.trailers) == {f"x-amz-checksum-{checksum}"}
        if len(body) <= 70_000:
            decoder = AwsChunkedDecoder(decoded_length=size, trailer_names=[f"x-amz-checksum-{checksum}"])
            assert await collect(decoder, every_byte(body)) == data
        decoder = AwsChunkedDecoder(decoded_length=size, trailer_names=[f"x-amz-checksum-{checksum}"])
        assert await collect(decoder, [body]) == data


async def test_botocore_body_without_checksum() -> None:
    data = make_data(200_000)
    body = botocore_body(data, None, 65536)
    assert body.endswith(b"\r\n0\r\n\r\n")
    for pieces in ([body], random_pieces(body, random.Random(3))):
        assert await collect(AwsChunkedDecoder(decoded_length=len(data)), pieces) == data


async def test_decoded_length_is_optional() -> None:
    data = make_data(50_000)
    body = botocore_body(data, "crc32", 4096)
    decoder = AwsChunkedDecoder(decoded_length=None, trailer_names=["x-amz-checksum-crc32"])
    assert await collect(decoder, random_pieces(body, random.Random(4))) == data
    assert decoder.decoded_bytes == len(data)


async def test_trailer_names_are_normalised() -> None:
    data = b"hello world"
    body = unsigned_body([data], f"X-Amz-Checksum-CRC32 : {crc32_b64(data)}\r\n")
    decoder = AwsChunkedDecoder(decoded_length=len(data), trailer_names=[" X-Amz-Checksum-Crc32 "])
    assert await collect(decoder, [body]) == data
    assert decoder.trailers == {"x-amz-checksum-crc32": crc32_b64(data)}
    # A comma-separated header value works too.
    sha = b64(hashlib.sha256(data).digest())
    body = unsigned_body([data], f"x-amz-checksum-crc32:{crc32_b64(data)}\r\nx-amz-checksum-sha256:{sha}\r\n")
    decoder = AwsChunkedDecoder(decoded_length=len(data), trailer_names=["x-amz-checksum-crc32, x-amz-checksum-sha256"])
    assert await collect(decoder, every_byte(body)) == data


# --------------------------------------------------------------------------- tolerated variants

async def test_tolerated_framing_variants() -> None:
    data = make_data(3000)
    trailer = f"x-amz-checksum-crc32:{crc32_b64(data)}\r\n"
    names = ["x-amz-checksum-crc32"]
    variants = [
        unsigned_body([data], trailer),                                  # botocore / most SDKs
        unsigned_body([data], trailer, blank_before_trailers=True),      # "0\r\n\r\n" then trailers
        unsigned_body([data], trailer, final_crlf=False),                # no closing empty line
        unsigned_body([data[:1000], data[1000:]], trailer),
    ]
    for body in variants:
        for pieces in ([body], every_byte(body)):
            decoder = AwsChunkedDecoder(decoded_length=len(data), trailer_names=names)
            assert await collect(decoder, pieces) == data
            assert decoder.trailers == {"x-amz-checksum-crc32": crc32_b64(data)}
    # Without trailers: "0\r\n\r\n", or just "0\r\n".
    for body in (unsigned_body([data]), unsigned_body([data], final_crlf=False)):
        assert await collect(AwsChunkedDecoder(decoded_length=len(data)), every_byte(body)) == data
    # Unknown chunk extensions are ignored; upper-case hex and leading zeros are fine.
    body = b"00B;foo=bar\r\nhello world\r\n0;x=1\r\n\r\n"
    assert await collect(AwsChunkedDecoder(decoded_length=11), [body]) == b"hello world"


async def test_non_bytes_pieces_are_accepted() -> None:
    data = make_data(10_000)
    body = botocore_body(data, "crc32", 1000)
    pieces: list = []
    for i, piece in enumerate(random_pieces(body, random.Random(9), 500)):
        pieces.append(bytearray(piece) if i % 3 == 0 else memoryview(piece) if i % 3 == 1 else piece)
    decoder = AwsChunkedDecoder(decoded_length=len(data), trailer_names=["x-amz-checksum-crc32"])
    assert await collect(decoder, pieces) == data


async def test_decode_is_single_use() -> None:
    decoder = AwsChunkedDecoder(decoded_length=0)
    assert await collect(decoder, [b"0\r\n\r\n"]) == b""
    with pytest.raises(RuntimeError):
        await collect(decoder, [b"0\r\n\r\n"])


# --------------------------------------------------------------------------- all checksum algorithms

def _crc_reference(data: bytes, poly: int, width: int) -> int:
    """Bit-by-bit reflected CRC, the definition the table code must match."""
    mask = (1 << width) - 1
    crc = mask
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
    return crc ^ mask


def test_pure_python_crcs_match_their_definition() -> None:
    crc32c = chunked._pure_crc("crc32c")
    crc64 = chunked._pure_crc("crc64nvme")
    assert crc32c.update(b"123456789") == 0xE3069283
    assert crc64.update(b"123456789") == 0xAE8B14860A799888
    rng = random.Random(5)
    for size in (0, 1, 7, 63, 64, 65, 1000, 4099):
        data = rng.randbytes(size)
        assert crc32c.update(data) == _crc_reference(data, 0x82F63B78, 32)
        assert crc64.update(data) == _crc_reference(data, 0x9A6C9329AC4BC9B5, 64)
        # Incremental, split anywhere.
        cut = rng.randint(0, size)
        assert crc32c.update(data[cut:], crc32c.update(data[:cut])) == crc32c.update(data)
        assert crc64.update(data[cut:], crc64.update(data[:cut])) == crc64.update(data)


def test_awscrt_and_pure_python_agree() -> None:
    crt = pytest.importorskip("awscrt.checksums")
    data = make_data(100_003)
    assert crt.crc32c(data) == chunked._pure_crc("crc32c").update(data)
    assert crt.crc64nvme(data) == chunked._pure_crc("crc64nvme").update(data)


ALL_CHECKSUMS = {
    "x-amz-checksum-crc32": lambda d: zlib.crc32(d).to_bytes(4, "big"),
    "x-amz-checksum-crc32c": lambda d: chunked._pure_crc("crc32c").update(d).to_bytes(4, "big"),
    "x-amz-checksum-crc64nvme": lambda d: chunked._pure_crc("crc64nvme").update(d).to_bytes(8, "big"),
    "x-amz-checksum-sha1": lambda d: hashlib.sha1(d).digest(),
    "x-amz-checksum-sha256": lambda d: hashlib.sha256(d).digest(),
}


@pytest.mark.parametrize("name", sorted(ALL_CHECKSUMS))
async def test_every_checksum_algorithm(name: str) -> None:
    data = make_data(150_001)
    good = b64(ALL_CHECKSUMS[name](data))
    body = unsigned_body(split_data(data, 65536), f"{name}:{good}\r\n")
    decoder = AwsChunkedDecoder(decoded_length=len(data), trailer_names=[name])
    assert await collect(decoder, random_pieces(body, random.Random(6))) == data
    assert decoder.trailers == {name: good}
    bad = b64(ALL_CHECKSUMS[name](data + b"x"))
    body = unsigned_body(split_data(data, 65536), f"{name}:{bad}\r\n")
    got, err = await collect_until_error(AwsChunkedDecoder(decoded_length=len(data), trailer_names=[name]),
                                         random_pieces(body, random.Random(7)))
    assert isinstance(err, BadDigest)
    assert len(got) < len(data) and data.startswith(got)


async def test_aws_example_crc32c_value() -> None:
    data = b"a" * 66560
    body = unsigned_body([data[:65536], data[65536:]], "x-amz-checksum-crc32c:sOO8/Q==\r\n")
    decoder = AwsChunkedDecoder(decoded_length=len(data), trailer_names=["x-amz-checksum-crc32c"])
    assert await collect(decoder, [body]) == data


def test_unsupported_checksum_is_refused_at_construction() -> None:
    for name in ("x-amz-checksum-xxhash64", "x-amz-checksum-md5", "x-amz-checksum-sha512"):
        with pytest.raises(InvalidRequest, match="unsupported checksum"):
            AwsChunkedDecoder(decoded_length=1, trailer_names=[name])
    with pytest.raises(InvalidArgument):
        AwsChunkedDecoder(decoded_length=-1)


# --------------------------------------------------------------------------- hold back / streaming

@pytest.mark.parametrize("checksum", ["crc32", "sha256"])
async def test_bad_checksum_never_releases_the_last_piece(checksum: str) -> None:
    data = make_data(2 * MiB + 5)
    body = botocore_body(data, checksum)
    # Corrupt the trailer value (keep it valid base64 of the right length).
    head, _, value = body[:-4].rpartition(b":")
    wrong = bytearray(base64.b64decode(value))
    wrong[0] ^= 0xFF
    bad_body = head + b":" + base64.b64encode(bytes(wrong)) + b"\r\n\r\n"
    for pieces in ([bad_body], random_pieces(bad_body, random.Random(8), 200_000)):
        got, err = await collect_until_error(
            AwsChunkedDecoder(decoded_length=len(data), trailer_names=[f"x-amz-checksum-{checksum}"]), pieces)
        assert isinstance(err, BadDigest)
        assert len(got) < len(data) and data.startswith(got)
    # Corrupting a data byte is caught the same way.
    flipped = bytearray(body)
    flipped[body.index(b"\r\n") + 2 + 1000] ^= 1
    got, err = await collect_until_error(
        AwsChunkedDecoder(decoded_length=len(data), trailer_names=[f"x-amz-checksum-{checksum}"]),
        random_pieces(bytes(flipped), random.Random(9), 200_000))
    assert isinstance(err, BadDigest)
    assert len(got) < len(data)


async def test_unsigned_data_streams_before_the_chunk_is_complete() -> None:
    data = make_data(MiB)
    body = botocore_body(data, "crc32")  # a single 1 MiB chunk
    pieces = split_data(body, 64 * 1024)
    produced = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal produced
        for piece in pieces:
            produced += 1
            yield piece

    decoder = AwsChunkedDecoder(decoded_length=len(data), trailer_names=["x-amz-checksum-crc32"])
    received_at: list[tuple[int, int]] = []
    got = bytearray()
    async for part in decoder.decode(source()):
        got += part
        received_at.append((produced, len(got)))
    assert bytes(got) == data
    # Data came out while the 1 MiB chunk was still arriving: one piece behind the input.
    first_produced, first_len = received_at[0]
    assert first_produced == 2 and 0 < first_len < 64 * 1024
    assert len(received_at) >= len(pieces) - 2
    # Everything but the held-back last piece was out before the source was exhausted.
    assert received_at[-2][1] < len(data) and received_at[-1][1] == len(data)


async def test_empty_body() -> None:
    for body in (b"0\r\n\r\n", botocore_body(b"", "crc32")):
        names = ["x-amz-checksum-crc32"] if b"checksum" in body else []
        decoder = AwsChunkedDecoder(decoded_length=0, trailer_names=names)
        assert await collect(decoder, every_byte(body)) == b""


# --------------------------------------------------------------------------- signed

async def test_aws_documented_signed_example() -> None:
    body, chain = aws_example(trailer=False)
    for pieces in ([body], random_pieces(body, random.Random(10), 5000), every_byte(body)):
        body, chain = aws_example(trailer=False)
        decoder = AwsChunkedDecoder(decoded_length=66560, chunk_verifier=chain.verify_chunk)
        assert await collect(decoder, pieces) == b"a" * 66560
        assert [kind for kind, _ in chain.calls] == ["chunk"] * 3
        assert chain.calls[0][1] == hashlib.sha256(b"a" * 65536).hexdigest()
        assert chain.calls[-1][1] == EMPTY_SHA256


async def test_aws_documented_signed_trailer_example() -> None:
    for seed in (11, 12):
        body, chain = aws_example(trailer=True)
        decoder = AwsChunkedDecoder(decoded_length=66560, trailer_names=["x-amz-checksum-crc32c"],
                                    chunk_verifier=chain.verify_chunk, trailer_verifier=chain.verify_trailer)
        assert await collect(decoder, random_pieces(body, random.Random(seed), 3000)) == b"a" * 66560
        assert chain.calls[-1] == ("trailer", "x-amz-checksum-crc32c:sOO8/Q==\n")
        assert decoder.trailers == {"x-amz-checksum-crc32c": "sOO8/Q=="}
        assert decoder.trailer_signature is not None


@pytest.mark.parametrize("size", [0, 1, 8191, 8192, 8193, 65536 * 3 + 1, 1 * MiB + 3])
async def test_signed_roundtrip(size: int) -> None:
    data = make_data(size, seed=size)
    rng = random.Random(size)
    for chunk_size, with_trailer in ((8192, False), (65536, True)):
        trailers = {"x-amz-checksum-crc32": crc32_b64(data)} if with_trailer else None
        body = signed_body(verifying_chain("seed"), split_data(data, chunk_size), trailers)
        for pieces in ([body], random_pieces(body, rng)):
            chain = verifying_chain("seed")
            decoder = AwsChunkedDecoder(
                decoded_length=size, trailer_names=list(trailers or ()), chunk_verifier=chain.verify_chunk,
                trailer_verifier=chain.verify_trailer if with_trailer else None)
            assert await collect(decoder, pieces) == data
            expected = [("chunk", hashlib.sha256(c).hexdigest()) for c in split_data(data, chunk_size)]
            expected.append(("chunk", EMPTY_SHA256))
            if with_trailer:
                expected.append(("trailer", f"x-amz-checksum-crc32:{crc32_b64(data)}\n"))
            assert chain.calls == expected


async def test_signed_trailer_after_blank_line_and_unsigned_ignore_signatures() -> None:
    data = make_data(20_000)
    trailers = {"x-amz-checksum-sha256": b64(hashlib.sha256(data).digest())}
    body = signed_body(verifying_chain("s"), split_data(data, 8192), trailers)
    final = body.index(b"\r\n0;chunk-signature=") + 2
    line_end = body.index(b"\r\n", final) + 2
    variant = body[:line_end] + b"\r\n" + body[line_end:]
    chain = verifying_chain("s")
    decoder = AwsChunkedDecoder(decoded_length=len(data), trailer_names=list(trailers),
                                chunk_verifier=chain.verify_chunk, trailer_verifier=chain.verify_trailer)
    assert await collect(decoder, every_byte(variant)) == data
    # Without verifiers (e.g. signatures checked elsewhere) the signatures are just skipped.
    decoder = AwsChunkedDecoder(decoded_length=len(data), trailer_names=list(trailers))
    assert await collect(decoder, [body]) == data


async def test_signed_chunks_are_verified_before_release() -> None:
    data = make_data(5 * 65536 + 100)
    chunks = split_data(data, 65536)
    body = signed_body(verifying_chain("seed"), chunks)
    chain = verifying_chain("seed")
    yielded = 0
    at_verification: list[int] = []

    def verifier(digest: str, signature: str) -> None:
        at_verification.append(yielded)
        chain.verify_chunk(digest, signature)

    decoder = AwsChunkedDecoder(decoded_length=len(data), chunk_verifier=verifier)
    async for part in decoder.decode(_source(random_pieces(body, random.Random(13), 10_000))):
        yielded += len(part)
    assert yielded == len(data)
    # When chunk i is verified, nothing beyond chunks 0..i-1 has been yielded.
    for i, seen in enumerate(at_verification):
        assert seen <= 65536 * i


async def test_tampered_signed_chunk_is_never_released() -> None:
    data = make_data(4 * 65536)
    chunks = split_data(data, 65536)
    body = bytearray(signed_body(verifying_chain("seed"), chunks))
    # Flip a byte inside the third chunk.
    third = body.index(b"chunk-signature=", body.index(b"chunk-signature=", body.index(b"chunk-signature=") + 1) + 1)
    body[body.index(b"\r\n", third) + 100] ^= 1
    got, err = await collect_until_error(
        AwsChunkedDecoder(decoded_length=len(data), chunk_verifier=verifying_chain("seed").verify_chunk),
        random_pieces(bytes(body), random.Random(14), 20_000))
    assert isinstance(err, SignatureDoesNotMatch)
    assert len(got) < 2 * 65536 and data.startswith(got)
    # A wrong final-chunk signature fails too, and still holds back the last piece.
    body = bytearray(signed_body(verifying_chain("seed"), chunks))
    last = body.rindex(b"chunk-signature=") + len(b"chunk-signature=")
    body[last] = ord("0") if body[last] != ord("0") else ord("1")
    got, err = await collect_until_error(
        AwsChunkedDecoder(decoded_length=len(data), chunk_verifier=verifying_chain("seed").verify_chunk), [bytes(body)])
    assert isinstance(err, SignatureDoesNotMatch)
    assert len(got) < len(data)


async def test_bad_trailer_signature() -> None:
    data = make_data(10_000)
    trailers = {"x-amz-checksum-crc32": crc32_b64(data)}
    body = signed_body(verifying_chain("seed"), [data], trailers)
    bad = body.replace(b"x-amz-trailer-signature:", b"x-amz-trailer-signature:0")
    bad = bad[:-67] + bad[-66:]  # keep the signature 64 characters long
    for candidate, error in ((bad, SignatureDoesNotMatch), (body.replace(b"x-amz-trailer-signature:", b"x-amz-other:"),
                                                             InvalidRequest)):
        chain = verifying_chain("seed")
        got, err = await collect_until_error(
            AwsChunkedDecoder(decoded_length=len(data), trailer_names=list(trailers),
                              chunk_verifier=chain.verify_chunk, trailer_verifier=chain.verify_trailer),
            [candidate])
        assert isinstance(err, error), err
        assert len(got) < len(data)
    # The trailer signature covers the checksum: a changed value is refused.
    changed = body.replace(crc32_b64(data).encode(), crc32_b64(data + b"!").encode())
    chain = verifying_chain("seed")
    _, err = await collect_until_error(
        AwsChunkedDecoder(decoded_length=len(data), trailer_names=list(trailers),
                          chunk_verifier=chain.verify_chunk, trailer_verifier=chain.verify_trailer), [changed])
    assert isinstance(err, SignatureDoesNotMatch)


async def test_signed_chunk_too_large() -> None:
    data = make_data(100_000)
    body = signed_body(verifying_chain("seed"), [data])
    chain = verifying_chain("seed")
    got, err = await collect_until_error(
        AwsChunkedDecoder(decoded_length=len(data), chunk_verifier=chain.verify_chunk, max_chunk_size=65536), [body])
    assert isinstance(err, EntityTooLarge) and got == b"" and chain.calls == []
    # Declared sizes are refused from the header line alone, before any data arrives.
    _, err = await collect_until_error(
        AwsChunkedDecoder(decoded_length=None, chunk_verifier=chain.verify_chunk),
        [b"ffffffff;chunk-signature=" + b"0" * 64 + b"\r\n"])
    assert isinstance(err, EntityTooLarge)
    # Unsigned chunks are never buffered, so they have no such limit.
    body = unsigned_body([data])
    assert await collect(AwsChunkedDecoder(decoded_length=len(data), max_chunk_size=1000), [body]) == data


async def test_missing_chunk_signature() -> None:
    _, err = await collect_until_error(
        AwsChunkedDecoder(decoded_length=5, chunk_verifier=verifying_chain("s").verify_chunk),
        [b"5\r\nhello\r\n0\r\n\r\n"])
    assert isinstance(err, InvalidRequest)


# --------------------------------------------------------------------------- truncation and lengths

async def test_every_truncation_is_incomplete() -> None:
    data = make_data(300)
    trailer = f"x-amz-checksum-crc32:{crc32_b64(data)}\r\n"
    body = unsigned_body([data[:100], data[100:]], trailer)
    tolerated = {len(body) - 2}  # only the closing empty line missing
    for cut in range(len(body)):
        got, err = await collect_until_error(
            AwsChunkedDecoder(decoded_length=len(data), trailer_names=["x-amz-checksum-crc32"]),
            random_pieces(body[:cut], random.Random(cut), 40))
        if cut in tolerated:
            assert err is None and got == data
        else:
            assert isinstance(err, IncompleteBody), (cut, err)
            assert len(got) < len(data)
    # Signed, with trailers: cutting anywhere fails (the closing line is tolerated).
    trailers = {"x-amz-checksum-crc32": crc32_b64(data)}
    body = signed_body(verifying_chain("seed"), [data[:100], data[100:]], trailers)
    for cut in range(0, len(body) - 2):
        chain = verifying_chain("seed")
        got, err = await collect_until_error(
            AwsChunkedDecoder(decoded_length=len(data), trailer_names=list(trailers),
                              chunk_verifier=chain.verify_chunk, trailer_verifier=chain.verify_trailer),
            [body[:cut]])
        assert isinstance(err, IncompleteBody), (cut, err)
        assert len(got) < len(data)


async def test_decoded_length_mismatch() -> None:
    data = make_data(100_000)
    body = botocore_body(data, "crc32", 16384)
    for declared in (len(data) - 1, len(data) + 1, 0, 16384):
        got, err = await collect_until_error(
            AwsChunkedDecoder(decoded_length=declared, trailer_names=["x-amz-checksum-crc32"]),
            random_pieces(body, random.Random(declared), 5000))
        assert isinstance(err, IncompleteBody), declared
        assert len(got) < min(declared, len(data)) or declared == 0


# --------------------------------------------------------------------------- malformed framing

MALFORMED = [
    (b"zz\r\nhi\r\n0\r\n\r\n", InvalidRequest),                        # bad hex
    (b"-2\r\nhi\r\n0\r\n\r\n", InvalidRequest),
    (b"0x2\r\nhi\r\n0\r\n\r\n", InvalidRequest),
    (b"2 \r\nhi\r\n0\r\n\r\n", InvalidRequest),
    (b"2\nhi\r\n0\r\n\r\n", InvalidRequest),                           # bare LF
    (b"2\r\nhiX\n0\r\n\r\n", InvalidRequest),                          # data not followed by CRLF
    (b"2\r\nhi\rX0\r\n\r\n", InvalidRequest),
    (b"2\r\nhi\r\n0\r\n\r\nextra", InvalidRequest),                    # data after the end
    (b"2\r\nhi\r\n0\r\n\r\n\r\n", InvalidRequest),
    (b"2\r\nhi\r\n" + b"1" * 5000 + b"\r\n", InvalidRequest),         # line too long
    (b"2\r\nhi\r\n0\r\nx-amz-meta-a:b\r\n\r\n", InvalidRequest),       # undeclared trailer
    (b"2\r\nhi\r\n0\r\nno colon\r\n\r\n", InvalidRequest),
    (b"2\r\nhi\r\n0\r\nbad name:x\r\n\r\n", InvalidRequest),
    (b"2\r\nhi\r\n0\r\n" + b"a:b\r\n" * 100 + b"\r\n", InvalidRequest),
    (b"2\r\nhi\r\n", IncompleteBody),
    (b"2\r\nhi", IncompleteBody),
    (b"2\r\nh", IncompleteBody),
    (b"", IncompleteBody),
    (b"2\r", IncompleteBody),
    (b"2\r\nhi\r\n0", IncompleteBody),
    (b"2\r\nhi\r\n0\r\n\r", IncompleteBody),
]


@pytest.mark.parametrize(("body", "error"), MALFORMED)
async def test_malformed_framing(body: bytes, error: type[S3Error]) -> None:
    for pieces in ([body], every_byte(body)):
        got, err = await collect_until_error(AwsChunkedDecoder(decoded_length=None), pieces)
        assert isinstance(err, error), (body, err)
        assert err.message  # says what went wrong


async def test_trailer_errors() -> None:
    data = b"hi"
    names = ["x-amz-checksum-crc32"]
    good = crc32_b64(data)
    cases = [
        # Declared but never sent: "0\r\n\r\n" then the end looks like a truncated body.
        (unsigned_body([data]), IncompleteBody),
        (unsigned_body([data], final_crlf=False), IncompleteBody),
        (unsigned_body([data], f"x-amz-checksum-crc32:{good}\r\nx-amz-checksum-crc32:{good}\r\n"), InvalidRequest),
        (unsigned_body([data], "x-amz-checksum-crc32:not*base64\r\n"), InvalidDigest),
        (unsigned_body([data], "x-amz-checksum-crc32:AAAAAAAA\r\n"), InvalidDigest),  # wrong length
        (unsigned_body([data], "x-amz-checksum-crc32:AAAAAA==\r\n"), BadDigest),
    ]
    for body, error in cases:
        got, err = await collect_until_error(AwsChunkedDecoder(decoded_length=2, trailer_names=names), [body])
        assert isinstance(err, error), (body, err)
        assert got == b""
    # A trailer section that is complete but lacks a declared trailer.
    body = unsigned_body([data], f"x-amz-checksum-crc32:{good}\r\n")
    _, err = await collect_until_error(
        AwsChunkedDecoder(decoded_length=2, trailer_names=[*names, "x-amz-checksum-sha1"]), [body])
    assert isinstance(err, InvalidRequest) and "x-amz-checksum-sha1" in err.message
    # A missing trailer signature when one is required.
    _, err = await collect_until_error(
        AwsChunkedDecoder(decoded_length=2, trailer_names=names, trailer_verifier=lambda *_: None),
        [unsigned_body([data], f"x-amz-checksum-crc32:{good}\r\n")])
    assert isinstance(err, InvalidRequest)


# --------------------------------------------------------------------------- robustness

def _run(coro):  # hypothesis drives sync tests; run each example on a fresh loop
    return asyncio.run(coro)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=10),
       declared=st.one_of(st.none(), st.integers(0, 400)),
       names=st.lists(st.sampled_from(["x-amz-checksum-crc32", "x-amz-checksum-sha256", "x-amz-meta-x",
                                       "x-amz-checksum-crc64nvme"]), max_size=2),
       signed=st.booleans())
def test_random_bytes_only_raise_s3_errors(body, cuts, declared, names, signed) -> None:
    pieces = [body[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(body)])]
    decoder = AwsChunkedDecoder(decoded_length=declared, trailer_names=names, max_line=64,
                                chunk_verifier=(lambda d, s: None) if signed else None,
                                trailer_verifier=(lambda c, s: None) if signed else None)
    _, err = _run(collect_until_error(decoder, pieces))
    assert err is None or isinstance(err, S3Error), repr(err)


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=600), max_size=6),
       cuts=st.lists(st.integers(0, 4000), max_size=30), blank=st.booleans(), final_crlf=st.booleans())
def test_valid_bodies_decode_whatever_the_split(chunks, cuts, blank, final_crlf) -> None:
    data = b"".join(chunks)
    body = unsigned_body(chunks, f"x-amz-checksum-crc32:{crc32_b64(data)}\r\n",
                         blank_before_trailers=blank, final_crlf=final_crlf)
    cuts = sorted(c for c in cuts if c <= len(body))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]
    decoder = AwsChunkedDecoder(decoded_length=len(data), trailer_names=["x-amz-checksum-crc32"])
    assert _run(collect(decoder, pieces)) == data


_VALID = unsigned_body([b"hello ", b"world"], f"x-amz-checksum-crc32:{crc32_b64(b'hello world')}\r\n")


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, len(_VALID) - 1), action=st.sampled_from(["flip", "delete", "insert", "dup"]),
       byte=st.integers(0, 255), cut=st.integers(1, 20))
def test_mutated_bodies_fail_cleanly(position, action, byte, cut) -> None:
    body = bytearray(_VALID)
    if action == "flip":
        body[position] ^= byte or 1
    elif action == "delete":
        del body[position]
    elif action == "insert":
        body.insert(position, byte)
    else:
        body[position:position] = body[position:position + cut]
    decoder = AwsChunkedDecoder(decoded_length=11, trailer_names=["x-amz-checksum-crc32"])
    got, err = _run(collect_until_error(decoder, random_pieces(bytes(body), random.Random(position), 7)))
    assert err is None or isinstance(err, S3Error), repr(err)
    if err is None:  # only harmless changes (e.g. hex case) may pass, and never alter the data
        assert got == b"hello world"
    else:
        assert len(got) < 11


# --------------------------------------------------------------------------- re-framing for the backend

async def _reframed(data: bytes, checksum: str, pieces: list[bytes], chunk_size: int = reframe.CHUNK_SIZE
                    ) -> tuple[list[bytes], BaseException | None]:
    """What :func:`reframe.reframe` yields for a botocore body cut into ``pieces``, and its error."""
    trailer = f"x-amz-checksum-{checksum}"
    decoder = AwsChunkedDecoder(decoded_length=len(data), trailer_names=[trailer])
    out: list[bytes] = []
    try:
        async for part in reframe.reframe(decoder.decode(_source(pieces)), decoder, trailer, chunk_size):
            out.append(part)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return out, exc
    return out, None


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536, 65_537, 3 * 65_536, 300_001])
@pytest.mark.parametrize("checksum", ["crc32", "sha256"])
async def test_reframe_roundtrip(size: int, checksum: str) -> None:
    data = make_data(size, seed=size)
    body = botocore_body(data, checksum)
    trailer = f"x-amz-checksum-{checksum}"
    for pieces in ([body], random_pieces(body, random.Random(size), 200_000)):
        out, err = await _reframed(data, checksum, pieces)
        assert err is None
        framed = b"".join(out)
        # exactly the Content-Length announced before the body started
        assert len(framed) == reframe.framed_length(size, trailer)
        # the backend's view: fixed 64 KiB chunks then the verified checksum, which decodes
        decoder = AwsChunkedDecoder(decoded_length=size, trailer_names=[trailer])
        assert await collect(decoder, [framed]) == data
        expected = crc32_b64(data) if checksum == "crc32" else b64(hashlib.sha256(data).digest())
        assert decoder.trailers == {trailer: expected}
        # never more than one chunk at a time, whatever the pieces the client sent
        assert max(len(part) for part in out) <= reframe.CHUNK_SIZE + 10
        assert framed.startswith(b"10000\r\n" if size >= 65_536 else b"%x\r\n" % size)


@pytest.mark.parametrize("name", sorted(chunked.CHECKSUM_TRAILERS))
def test_framed_length_of_every_algorithm(name: str) -> None:
    value = b64(bytes(chunked.DIGEST_SIZES[name]))
    assert reframe.framed_length(0, name) == len(f"0\r\n{name}:{value}\r\n\r\n")
    assert reframe.framed_length(5, name, chunk_size=2) == len(f"2\r\nab\r\n" * 2 + "1\r\na\r\n"
                                                               f"0\r\n{name}:{value}\r\n\r\n")


async def test_reframe_sends_no_trailer_when_the_checksum_is_wrong() -> None:
    data = make_data(200_000, seed=3)
    body = botocore_body(data, "crc32")
    head, _, _ = body[:-4].rpartition(b":")
    bad = head + b":" + crc32_b64(b"other").encode() + b"\r\n\r\n"
    out, err = await _reframed(data, "crc32", random_pieces(bad, random.Random(4)))
    assert isinstance(err, BadDigest)
    framed = b"".join(out)
    # the backend gets less than its Content-Length, and no checksum at all
    assert len(framed) < reframe.framed_length(len(data), "x-amz-checksum-crc32")
    assert b"x-amz-checksum" not in framed and not framed.endswith(b"0\r\n")


def test_verified_checksum_only_once_decoded() -> None:
    decoder = AwsChunkedDecoder(decoded_length=1, trailer_names=["x-amz-checksum-crc32", "x-amz-meta-a"])
    assert decoder.checksum_names == ["x-amz-checksum-crc32"]
    with pytest.raises(RuntimeError):
        decoder.verified_checksum("x-amz-checksum-crc32")


# --------------------------------------------------------------------------- throughput

def _framed(data: bytes, chunk: int, trailer: str) -> bytes:
    parts = []
    view = memoryview(data)
    for i in range(0, len(data), chunk):
        piece = view[i:i + chunk]
        parts += [b"%x\r\n" % len(piece), piece, b"\r\n"]
    parts += [b"0\r\n", trailer.encode(), b"\r\n"]
    return b"".join(parts)


async def _throughput(body: bytes, piece: int, **kwargs) -> float:
    pieces = split_data(body, piece)
    decoder = AwsChunkedDecoder(**kwargs)
    total = 0
    start = time.perf_counter()
    async for part in decoder.decode(_source(pieces)):
        total += len(part)
    elapsed = time.perf_counter() - start
    assert total == kwargs["decoded_length"]
    return total / elapsed / 1e6


async def test_throughput(capsys: pytest.CaptureFixture[str]) -> None:
    size = 64 * MiB
    data = bytes(range(256)) * (size // 256)
    results = []
    for label, chunk, trailer, names in (
        ("unsigned, 1 MiB chunks, crc32 trailer", MiB, f"x-amz-checksum-crc32:{crc32_b64(data)}\r\n",
         ["x-amz-checksum-crc32"]),
        ("unsigned, 64 KiB chunks, crc32 trailer", 65536, f"x-amz-checksum-crc32:{crc32_b64(data)}\r\n",
         ["x-amz-checksum-crc32"]),
        ("unsigned, 1 MiB chunks, no trailer", MiB, "", []),
        ("unsigned, 64 KiB chunks, no trailer", 65536, "", []),
        ("unsigned, 1 MiB chunks, sha256 trailer", MiB,
         f"x-amz-checksum-sha256:{b64(hashlib.sha256(data).digest())}\r\n", ["x-amz-checksum-sha256"]),
    ):
        body = _framed(data, chunk, trailer)
        rate = await _throughput(body, 64 * 1024, decoded_length=size, trailer_names=names)
        results.append(f"{label}: {rate:,.0f} MB/s")
    chain = verifying_chain("seed")
    body = signed_body(chain, split_data(data, MiB))
    chain = verifying_chain("seed")
    rate = await _throughput(body, 64 * 1024, decoded_length=size, chunk_verifier=chain.verify_chunk)
    results.append(f"signed (verify sha256 per chunk), 1 MiB chunks: {rate:,.0f} MB/s")
    # CRC32C without awscrt runs in pure Python: measure it on a smaller body.
    small = data[:4 * MiB]
    checksum = chunked.CHECKSUM_TRAILERS["x-amz-checksum-crc32c"]()
    checksum.update(small)
    body = _framed(small, MiB, f"x-amz-checksum-crc32c:{b64(checksum.digest())}\r\n")
    rate = await _throughput(body, 64 * 1024, decoded_length=len(small), trailer_names=["x-amz-checksum-crc32c"])
    impl = "awscrt" if chunked.ACCELERATED_CRC["crc32c"] else "pure Python"
    results.append(f"unsigned, crc32c trailer ({impl}, 4 MiB body): {rate:,.1f} MB/s")
    with capsys.disabled():
        print("\naws-chunked decode, 64 MiB body in 64 KiB pieces:")
        for line in results:
            print("  " + line)
