"""A client's trailing checksum reaches the backend, end to end over real sockets.

boto3 (>= 1.36) sends PutObject and UploadPart over HTTPS as ``aws-chunked`` with a trailing
checksum.  The proxy decodes and verifies it, then re-frames the body for the backend with
the checksum in a trailer of its own (``inproxy/s3/reframe.py``).  What the backend stored is
checked on the backend itself (HeadObject with ``ChecksumMode=ENABLED``); what went on the wire
to it, through the recording relay in front of SeaweedFS.

Facts these tests rest on (probed with SeaweedFS 4.48 and moto 5.2): both accept
``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` with or without ``Content-Encoding: aws-chunked``;
SeaweedFS verifies the SigV4 signature and the trailer, and stores the checksum; moto stores it
only with ``x-amz-sdk-checksum-algorithm`` and echoes it in its UploadPart answer.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import random
import ssl
import threading
import uuid
import zlib

import pytest
import requests
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from inproxy import AllowAll, Backend, ProxyHooks, ProxyServer

from util import backend_for, s3_client, signed_headers, tls_server_context

MiB = 1024 * 1024
AK, SK = "AKCHECKSUMS", "checksums-test-secret"
TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
PARTS_OF_5_MIB = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2)


# ---------------------------------------------------------------------------------------------
# helpers


def _crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def _crc32c(data: bytes) -> str:
    from awscrt import checksums  # boto3 itself needs awscrt for CRC32C

    return base64.b64encode(checksums.crc32c(data).to_bytes(4, "big")).decode()


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


EXPECTED = {"CRC32": _crc32, "CRC32C": _crc32c, "SHA256": _sha256_b64}


def _data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _direct(info):
    return s3_client(info.endpoint_url, info.access_key, info.secret_key, region=info.region)


def _stored(info, bucket: str, key: str) -> tuple[dict, str]:
    """(HeadObject with checksums, SHA-256 of the bytes), asked of the backend directly."""
    client = _direct(info)
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    return head, hashlib.sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def _upstream_head(data: bytes, bucket: str, key: str) -> bytes:
    """The head of the (last) request for ``key`` that reached the backend."""
    start = data.rindex(f" /{bucket}/{key}".encode())
    return data[data.rfind(b"\n", 0, start) + 1:data.index(b"\r\n\r\n", start)].lower()


class ClientHeaders(ProxyHooks):
    """Remembers the client's headers per operation: proof boto3 really sent a trailer."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()

    async def request_filter(self, ctx):
        with self._lock:
            self.seen.append((ctx.s3.operation, {k.lower(): v for k, v in ctx.request.headers.items()}))

    def last(self, operation: str) -> dict[str, str]:
        with self._lock:
            return [h for op, h in self.seen if op == operation][-1]


class PassThroughBody(ProxyHooks):
    """A body hook that changes nothing, but might have: the proxy cannot know."""

    async def request_body_filter(self, ctx, chunk):
        return chunk


def _assert_trailer_sent(headers: dict[str, str], trailer: str) -> None:
    assert headers["x-amz-content-sha256"] == TRAILER, headers
    assert headers["x-amz-trailer"] == trailer, headers


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[ssl.SSLContext, str]:
    """(server context, CA file) for 127.0.0.1."""
    return tls_server_context(tmp_path_factory.mktemp("tls"))


@contextlib.contextmanager
def https_proxy(backend: Backend, tls, hooks: ProxyHooks | None = None):
    """(proxy, boto3 client for it over HTTPS, so that boto3 sends trailing checksums)."""
    context, ca_file = tls
    with ProxyServer.run_in_thread(backends={"*": backend}, keys={AK: SK}, authorizer=AllowAll(), ssl=context,
                                   hooks=hooks or ProxyHooks()) as proxy:
        yield proxy, s3_client(proxy.endpoint_url, AK, SK, verify=ca_file)


@pytest.fixture(params=["seaweed", "moto"])
def info(request):
    return request.getfixturevalue(request.param)


def _bucket(client) -> str:
    name = f"ck-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


# ---------------------------------------------------------------------------------------------
# the checksum reaches the backend


@pytest.mark.parametrize("key, algorithm, size", [
    ("crc32", None, 300_001),       # boto3's default: CRC32
    ("empty", None, 0),
    ("one-chunk", None, 65_536),    # exactly one upstream chunk
    ("sha256", "SHA256", 200_000),
    ("crc32c", "CRC32C", 70_000),
])
def test_put_object_checksum_is_stored(info, tls, key: str, algorithm: str | None, size: int):
    seen = ClientHeaders()
    with https_proxy(backend_for(info), tls, seen) as (_, s3):
        bucket = _bucket(s3)
        data = _data(size, size)
        extra = {"ChecksumAlgorithm": algorithm} if algorithm else {}
        s3.put_object(Bucket=bucket, Key=key, Body=data, **extra)
    algorithm = algorithm or "CRC32"
    _assert_trailer_sent(seen.last("PutObject"), f"x-amz-checksum-{algorithm.lower()}")
    head, digest = _stored(info, bucket, key)
    assert head.get(f"Checksum{algorithm}") == EXPECTED[algorithm](data), head
    assert digest == hashlib.sha256(data).hexdigest()
    assert "aws-chunked" not in head.get("ContentEncoding", "")


def test_multipart_part_checksums_reach_seaweedfs(relay, seaweed, tls):
    """upload_fileobj: every part goes on with its checksum in a trailer (seen on the wire)."""
    data = _data(2 * 5 * MiB + 4321, 11)  # 3 parts
    parts = [data[i:i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    seen = ClientHeaders()
    with https_proxy(relay.backend(seaweed), tls, seen) as (_, s3):
        bucket = _bucket(s3)
        s3.upload_fileobj(io.BytesIO(data), bucket, "mp.bin", Config=PARTS_OF_5_MIB)
    _assert_trailer_sent(seen.last("UploadPart"), "x-amz-checksum-crc32")
    wire = relay.data()
    for part in parts:
        assert f"\r\nx-amz-checksum-crc32:{_crc32(part)}\r\n\r\n".encode() in wire
    head, digest = _stored(seaweed, bucket, "mp.bin")
    assert head["ETag"].strip('"').endswith("-3")
    assert head.get("ChecksumCRC32", "").startswith(_composite_crc32(parts)), head
    assert digest == hashlib.sha256(data).hexdigest()


def _composite_crc32(parts: list[bytes]) -> str:
    """AWS's checksum of checksums of a multipart upload (without its ``-<parts>`` suffix)."""
    return _crc32(b"".join(zlib.crc32(part).to_bytes(4, "big") for part in parts))


def test_multipart_part_checksums_reach_moto(moto, tls):
    """moto echoes in its UploadPart answer the checksum it got (and stores none without it)."""
    pieces = [_data(5 * MiB, 12), b"last part"]
    with https_proxy(backend_for(moto), tls) as (_, s3):
        bucket = _bucket(s3)
        upload = s3.create_multipart_upload(Bucket=bucket, Key="mp", ChecksumAlgorithm="CRC32")["UploadId"]
        parts = []
        for number, piece in enumerate(pieces, 1):
            answer = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=number, Body=piece,
                                    ChecksumAlgorithm="CRC32")
            assert answer.get("ChecksumCRC32") == _crc32(piece), answer
            parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumCRC32": _crc32(piece)})
        s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={"Parts": parts})
    head, digest = _stored(moto, bucket, "mp")
    assert head.get("ChecksumCRC32", "").startswith(_composite_crc32(pieces)), head
    assert digest == hashlib.sha256(b"".join(pieces)).hexdigest()


# ---------------------------------------------------------------------------------------------
# hand-built trailer requests: a wrong checksum never reaches the backend


def _trailer_body(data: bytes, trailer_line: str, chunk_size: int = 50_000) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + chunk_size]), data[i:i + chunk_size])
                    for i in range(0, len(data), chunk_size))
    return body + b"0\r\n" + trailer_line.encode() + b"\r\n\r\n"


def _put_with_trailer(proxy, bucket: str, key: str, data: bytes, crc: str, *, content_length: bool = True):
    url = f"{proxy.endpoint_url}/{bucket}/{key}"
    headers = signed_headers("PUT", url, {"Content-Encoding": "aws-chunked", "X-Amz-Trailer": "x-amz-checksum-crc32",
                                          "X-Amz-Decoded-Content-Length": str(len(data))},
                             payload_hash=TRAILER, key=AK, secret=SK)
    body = _trailer_body(data, f"x-amz-checksum-crc32:{crc}")
    # Without Content-Length: the body in pieces, Transfer-Encoding: chunked (SDKs streaming an unknown length)
    sent = body if content_length else iter([body[:70_000], body[70_000:]])
    return requests.put(url, headers=headers, data=sent, timeout=60)


def test_wrong_trailer_checksum_is_refused(relay, seaweed):
    data = _data(150_000, 13)
    backend = _direct(seaweed)
    with ProxyServer.run_in_thread(backends={"*": relay.backend(seaweed)}, keys={AK: SK},
                                   authorizer=AllowAll()) as proxy:
        bucket = _bucket(backend)
        for key, length in (("good", True), ("te-good", False)):  # the controls
            answer = _put_with_trailer(proxy, bucket, key, data, _crc32(data), content_length=length)
            assert answer.status_code == 200, answer.text
            assert _stored(seaweed, bucket, key)[0].get("ChecksumCRC32") == _crc32(data)
        wrong = _crc32(b"something else")
        for key, length in (("bad", True), ("te-bad", False)):
            answer = _put_with_trailer(proxy, bucket, key, data, wrong, content_length=length)
            assert answer.status_code == 400, answer.text
            assert "<Code>BadDigest</Code>" in answer.text
            with pytest.raises(ClientError):
                backend.head_object(Bucket=bucket, Key=key)
    assert f"x-amz-checksum-crc32:{_crc32(data)}".encode() in relay.data()
    assert wrong.encode() not in relay.data()  # neither the client's value nor a trailer with it
    assert not backend.list_multipart_uploads(Bucket=bucket).get("Uploads")


def _signed_trailer_put(url: str, data: bytes, crc: str, chunk_size: int = 64 * 1024) -> requests.Response:
    """``STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER`` (the Java SDK v2 over HTTP): every chunk
    and the trailer signed, chained from the request's signature."""
    headers = signed_headers("PUT", url, {"Content-Encoding": "aws-chunked", "X-Amz-Trailer": "x-amz-checksum-crc32",
                                          "X-Amz-Decoded-Content-Length": str(len(data))},
                             payload_hash="STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER", key=AK, secret=SK)
    amz_date, previous = headers["X-Amz-Date"], headers["Authorization"].rsplit("Signature=", 1)[1]
    scope = f"{amz_date[:8]}/us-east-1/s3/aws4_request"
    key = ("AWS4" + SK).encode()
    for part in (amz_date[:8], "us-east-1", "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()

    def sign(kind: str, *hashes: str) -> str:
        return hmac.new(key, "\n".join((kind, amz_date, scope, previous, *hashes)).encode(), hashlib.sha256).hexdigest()

    body = b""
    empty = hashlib.sha256(b"").hexdigest()
    for chunk in [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)] + [b""]:
        previous = sign("AWS4-HMAC-SHA256-PAYLOAD", empty, hashlib.sha256(chunk).hexdigest())
        body += b"%x;chunk-signature=%s\r\n" % (len(chunk), previous.encode()) + (chunk + b"\r\n" if chunk else b"")
    trailer = f"x-amz-checksum-crc32:{crc}"
    signature = sign("AWS4-HMAC-SHA256-TRAILER", hashlib.sha256(f"{trailer}\n".encode()).hexdigest())
    body += f"{trailer}\r\nx-amz-trailer-signature:{signature}\r\n\r\n".encode()
    return requests.put(url, headers=headers, data=body, timeout=60)


def test_signed_trailer_goes_on_unsigned(relay, seaweed):
    """The proxy checks the client's chunk and trailer signatures, then frames for itself."""
    data = _data(200_000, 16)
    with ProxyServer.run_in_thread(backends={"*": relay.backend(seaweed)}, keys={AK: SK},
                                   authorizer=AllowAll()) as proxy:
        bucket = _bucket(_direct(seaweed))
        answer = _signed_trailer_put(f"{proxy.endpoint_url}/{bucket}/signed", data, _crc32(data))
        assert answer.status_code == 200, answer.text
    head = _upstream_head(relay.data(), bucket, "signed")
    assert b"x-amz-content-sha256: streaming-unsigned-payload-trailer" in head
    stored, digest = _stored(seaweed, bucket, "signed")
    assert stored.get("ChecksumCRC32") == _crc32(data)
    assert digest == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# where the body still goes on plain


def test_forward_checksums_off_sends_the_plain_body(relay, seaweed, tls):
    data = _data(300_001, 14)
    with https_proxy(relay.backend(seaweed, forward_checksums=False), tls) as (_, s3):
        bucket = _bucket(s3)
        s3.put_object(Bucket=bucket, Key="plain", Body=data)
    head = _upstream_head(relay.data(), bucket, "plain")
    assert f"content-length: {len(data)}".encode() in head
    assert b"x-amz-content-sha256: unsigned-payload" in head
    assert b"x-amz-trailer" not in head and b"aws-chunked" not in head
    stored, digest = _stored(seaweed, bucket, "plain")
    assert "ChecksumCRC32" not in stored
    assert digest == hashlib.sha256(data).hexdigest()


def test_body_hook_keeps_the_checksum_back(seaweed, tls):
    """A hook may change the bytes: the client's checksum would then be wrong, so it stays."""
    data = _data(100_000, 15)
    with https_proxy(backend_for(seaweed), tls, PassThroughBody()) as (_, s3):
        bucket = _bucket(s3)
        s3.put_object(Bucket=bucket, Key="hooked", Body=data)
    stored, digest = _stored(seaweed, bucket, "hooked")
    assert "ChecksumCRC32" not in stored
    assert digest == hashlib.sha256(data).hexdigest()


def test_forward_checksums_defaults_by_flavor():
    assert Backend("http://127.0.0.1:1").forwards_checksums
    assert not Backend("https://storage.googleapis.com", flavor="gcs").forwards_checksums
    assert not Backend("http://127.0.0.1:1", flavor="ibm").forwards_checksums
    assert not Backend("http://127.0.0.1:1", forward_checksums=False).forwards_checksums
    assert Backend("https://storage.googleapis.com", flavor="gcs", forward_checksums=True).forwards_checksums
