"""What must never happen, each shown over real sockets and checked at the backend.

The backend is SeaweedFS (it verifies SigV4) behind a recording TCP relay: every
request line the proxy sends upstream is seen, so "nothing reached the backend"
is proven by the relay, and the backend's state is inspected directly with its
own keys (boto3 straight to SeaweedFS) where a refused request would have left a
trace.

1. No request reaches the backend without passing authentication and
   authorization: with ``Expect: 100-continue``, any query text, odd methods,
   paths that normalise into another bucket, virtual-host/path addressing mixed.
2. No cached decision or credential serves another identity, bucket, key or
   operation; scoped decisions stay inside their scope.
3. No secret (client or backend secret, session token, signature) in a log record
   or an error body.
4. No presigned URL works after its expiry or with any signed part changed.
5. DeleteObjects with one denied key deletes nothing; CopyObject from a denied
   source copies nothing.
6. PrefixPolicy: listing only within allowed prefixes; team-a cannot read team-b.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import socket
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest

boto3 = pytest.importorskip("boto3")
requests = pytest.importorskip("requests")

from botocore.exceptions import ClientError  # noqa: E402

from inproxy import Backend, Decision, Identity, ProxyServer, SecretsCache  # noqa: E402
from inproxy.policy import PrefixPolicy  # noqa: E402
from inproxy.presign import presign_url  # noqa: E402
from inproxy.s3.sigv4 import Signer  # noqa: E402

from util import s3_client  # noqa: E402

ALICE = Identity("alice", "sigv4")
BOB = Identity("bob", "sigv4")
ALICE_KEY, BOB_KEY = "AKALICE" + secrets.token_hex(4).upper(), "AKBOB" + secrets.token_hex(4).upper()
ALICE_SECRET, BOB_SECRET = "alice-" + secrets.token_urlsafe(24), "bob-" + secrets.token_urlsafe(24)
KEYS = {ALICE_KEY: (ALICE_SECRET, ALICE), BOB_KEY: (BOB_SECRET, BOB)}
REGION = "us-east-1"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


# -- raw HTTP, signed by hand ---------------------------------------------------------------------

_signer = Signer()


def signed(method: str, host: str, raw_path: str, raw_query: str = "", body: bytes = b"", *,
           key: str = ALICE_KEY, secret: str = ALICE_SECRET, headers: dict | None = None,
           payload_hash: str | None = None, token: str | None = None) -> dict[str, str]:
    """Headers for a SigV4 request signed exactly over ``raw_path`` and ``raw_query`` as sent."""
    out = {"host": host, **{k.lower(): v for k, v in (headers or {}).items()}}
    out.update(_signer.sign(method, raw_path, raw_query, out, payload_hash or hashlib.sha256(body).hexdigest(),
                            access_key=key, secret_key=secret, session_token=token, region=REGION))
    return out


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, raw: bytes) -> None:
        self.status, self.headers, self.body, self.raw = status, headers, body, raw

    @property
    def code(self) -> str | None:
        found = re.search(rb"<Code>(.*?)</Code>", self.body)
        return found.group(1).decode() if found else None

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.body[:300]!r})"


def _read_head(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str]]:
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a response head: {bytes(buffer)!r}")
        buffer.extend(data)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


def _read_body(sock: socket.socket, buffer: bytearray, headers: dict[str, str], method: str) -> bytes:
    if method.upper() == "HEAD":
        return b""
    length = int(headers.get("content-length", "0"))
    while len(buffer) < length:
        data = sock.recv(65536)
        if not data:
            break
        buffer.extend(data)
    body, buffer[:] = bytes(buffer[:length]), buffer[length:]
    return body


def raw_request(port: int, method: str, target: str, headers: dict[str, str], body: bytes = b"",
                *, timeout: float = 20) -> Response:
    """One request on its own connection, the request line exactly as given."""
    lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    if body or method.upper() in ("PUT", "POST"):
        lines.append(f"content-length: {len(body)}")
    lines.append("connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        buffer = bytearray()
        status, response_headers = _read_head(sock, buffer)
        payload = _read_body(sock, buffer, response_headers, method)
    return Response(status, response_headers, payload, head)


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def names(direct):
    """Three fresh buckets: .a .b .c."""
    run = uuid.uuid4().hex[:8]

    class Names:
        a, b, c = f"mn-{run}-a", f"mn-{run}-b", f"mn-{run}-c"

    for bucket in (Names.a, Names.b, Names.c):
        direct.create_bucket(Bucket=bucket)
    return Names


class Recorder:
    """An authorizer function that records every question and answers with ``rule``."""

    def __init__(self, rule) -> None:
        self.rule = rule
        self.asked: list = []
        self._lock = threading.Lock()

    def __call__(self, access):
        with self._lock:
            self.asked.append(access)
        return self.rule(access)

    def seen(self) -> list[tuple]:
        with self._lock:
            return [(a.identity.name, a.operation, a.bucket, a.key, a.prefix) for a in self.asked]

    def count(self) -> int:
        with self._lock:
            return len(self.asked)


@contextmanager
def running(seaweed, relay, **kwargs):
    kwargs.setdefault("backends", relay.backend(seaweed))
    kwargs.setdefault("keys", KEYS)
    with ProxyServer.run_in_thread(**kwargs) as proxy:
        yield proxy


def client(proxy, key=ALICE_KEY, secret=ALICE_SECRET, token=None):
    return s3_client(proxy.endpoint_url, key, secret, session_token=token, region=REGION)


def host_of(proxy) -> str:
    return urlsplit(proxy.endpoint_url).netloc


def exists(direct, bucket: str, key: str) -> bool:
    try:
        direct.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return False
        raise


def error_code(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


def put_direct(direct, bucket: str, key: str, body: bytes = b"data") -> None:
    direct.put_object(Bucket=bucket, Key=key, Body=body)


def allow_all(access) -> bool:
    return True


# =================================================================================================
# 1. nothing reaches the backend without authentication and authorization
# =================================================================================================

UNAUTHENTICATED = {
    # name: (expected status, expected code)
    "no authorization": (403, "AccessDenied"),
    "wrong secret": (403, "SignatureDoesNotMatch"),
    "unknown key": (403, "InvalidAccessKeyId"),
    "tampered signature": (403, "SignatureDoesNotMatch"),
    "two hours old": (403, "RequestTimeTooSkewed"),
    "bearer junk": (403, "AccessDenied"),
    "forged session token": (400, "InvalidToken"),
}


def _unauthenticated(name: str, host: str, path: str, body: bytes) -> dict[str, str]:
    """Headers of a PUT that must not get in, for each case of UNAUTHENTICATED."""
    body_hash = hashlib.sha256(body).hexdigest()
    if name == "no authorization":
        return {"host": host, "x-amz-content-sha256": body_hash}
    if name == "wrong secret":
        return signed("PUT", host, path, body=body, secret="not-" + ALICE_SECRET)
    if name == "unknown key":
        return signed("PUT", host, path, body=body, key="AKNOBODY")
    if name == "tampered signature":
        headers = signed("PUT", host, path, body=body)
        last = headers["authorization"][-1]
        headers["authorization"] = headers["authorization"][:-1] + ("0" if last != "0" else "1")
        return headers
    if name == "two hours old":
        headers = {"host": host}
        headers.update(_signer.sign("PUT", path, "", headers, body_hash, access_key=ALICE_KEY,
                                    secret_key=ALICE_SECRET, region=REGION,
                                    now=datetime.now(timezone.utc) - timedelta(hours=2)))
        return headers
    if name == "bearer junk":
        return {"host": host, "authorization": "Bearer x"}
    if name == "forged session token":
        return signed("PUT", host, path, body=body, token="inpx1.forged.token")
    raise AssertionError(name)


def test_requests_without_valid_authentication_never_reach_the_backend(seaweed, relay, direct, names):
    authorizer = Recorder(allow_all)
    body = b"must not arrive"
    with running(seaweed, relay, authorizer=authorizer) as proxy:
        for number, (name, expected) in enumerate(UNAUTHENTICATED.items()):
            path = f"/{names.a}/unauth/{number}"
            headers = _unauthenticated(name, host_of(proxy), path, body)
            with relay.watch() as upstream:
                response = raw_request(proxy.port, "PUT", path, headers, body)
            assert (response.status, response.code) == expected, name
            assert upstream == [], name
            assert not exists(direct, names.a, f"unauth/{number}"), name
    assert authorizer.count() == 0  # never even asked


@pytest.mark.parametrize("size", [15, 3 * 1024 * 1024])
def test_a_body_that_is_not_the_signed_one_is_never_stored(seaweed, relay, direct, names, size):
    """The signature covers the body's hash: another body of the same length is refused and
    the backend (which may have seen the start of it) never gets all of it."""
    body, signed_body = b"x" * size, b"y" * size
    key = f"unauth/other-body-{size}"
    path = f"/{names.a}/{key}"
    with running(seaweed, relay, authorizer=allow_all) as proxy:
        response = raw_request(proxy.port, "PUT", path, signed("PUT", host_of(proxy), path, body=signed_body), body)
    assert (response.status, response.code) == (400, "XAmzContentSHA256Mismatch")
    assert not exists(direct, names.a, key)


def test_authenticated_but_denied_never_reaches_the_backend(seaweed, relay, direct, names):
    authorizer = Recorder(lambda access: False)
    with running(seaweed, relay, authorizer=authorizer) as proxy:
        c = client(proxy)
        with relay.watch() as upstream:
            for call in (lambda: c.put_object(Bucket=names.a, Key="denied", Body=b"x"),
                         lambda: c.get_object(Bucket=names.a, Key="denied"),
                         lambda: c.list_objects_v2(Bucket=names.a),
                         lambda: c.delete_object(Bucket=names.a, Key="denied"),
                         lambda: c.create_multipart_upload(Bucket=names.a, Key="denied")):
                with pytest.raises(ClientError) as info:
                    call()
                assert error_code(info.value) == "AccessDenied"
        assert upstream == []
        assert not exists(direct, names.a, "denied")
        assert [op for _, op, *_ in authorizer.seen()] == [
            "PutObject", "GetObject", "ListObjectsV2", "DeleteObject", "CreateMultipartUpload"]


def _expect_exchange(port: int, headers: dict[str, str], body: bytes) -> tuple[list[int], bytes]:
    """Send the head with Expect: 100-continue, and the body only if 100 Continue comes.
    Returns every status received, in order, and the final body."""
    lines = ["PUT {path} HTTP/1.1".format(path=headers.pop(":path"))]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"content-length: {len(body)}", "expect: 100-continue", "connection: close"]
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        buffer = bytearray()
        statuses = []
        status, response_headers = _read_head(sock, buffer)
        statuses.append(status)
        if status == 100:
            sock.sendall(body)
            status, response_headers = _read_head(sock, buffer)
            statuses.append(status)
        return statuses, _read_body(sock, buffer, response_headers, "PUT")


@pytest.mark.parametrize("case", ["unsigned", "wrong secret", "denied", "allowed"])
def test_expect_100_continue_is_answered_only_after_authorization(seaweed, relay, direct, names, case):
    body = b"expect-continue body"
    key = f"expect/{case.replace(' ', '-')}"
    path = f"/{names.a}/{key}"
    authorizer = Recorder(lambda access: case == "allowed")
    with running(seaweed, relay, authorizer=authorizer) as proxy:
        host = host_of(proxy)
        if case == "unsigned":
            headers = {"host": host}
        elif case == "wrong secret":
            headers = signed("PUT", host, path, body=body, secret="wrong")
        else:
            headers = signed("PUT", host, path, body=body)
        with relay.watch() as upstream:
            statuses, answer = _expect_exchange(proxy.port, {":path": path, **headers}, body)
    if case == "allowed":
        assert statuses == [100, 200]
        assert direct.get_object(Bucket=names.a, Key=key)["Body"].read() == body
        assert upstream == [("PUT", path)]
        return
    assert statuses == [403]  # no 100 Continue before the refusal
    assert re.search(rb"<Code>(AccessDenied|SignatureDoesNotMatch)</Code>", answer)
    assert upstream == []
    assert not exists(direct, names.a, key)


@pytest.mark.parametrize("query, operation", [
    ("x=uploadId=1", "PutObject"),
    ("x=uploadId%3D1&partNumber=1", "PutObject"),
    ("note=partNumber%3D1%26uploadId%3D2", "PutObject"),
    ("uploadIdx=1&partNumber=1", "PutObject"),
    ("partNumber=1&uploadId=1", "UploadPart"),
])
def test_query_text_never_changes_the_operation(seaweed, relay, direct, names, query, operation):
    """The operation comes from exact parameter names; the authorizer sees what the backend does."""
    body = b"query body"
    key = "query/" + hashlib.sha256(query.encode()).hexdigest()[:12]
    path = f"/{names.a}/{key}"
    authorizer = Recorder(lambda access: access.operation not in ("PutObject", "UploadPart"))
    with running(seaweed, relay, authorizer=authorizer) as proxy:
        host = host_of(proxy)
        with relay.watch() as upstream:
            unsigned = raw_request(proxy.port, "PUT", f"{path}?{query}", {"host": host}, body)
            denied = raw_request(proxy.port, "PUT", f"{path}?{query}",
                                 signed("PUT", host, path, query, body), body)
        assert (unsigned.status, unsigned.code) == (403, "AccessDenied")
        assert (denied.status, denied.code) == (403, "AccessDenied")
        assert upstream == []
        assert [op for _, op, *_ in authorizer.seen()] == [operation]
    assert not exists(direct, names.a, key)


def test_a_put_with_uploadid_text_is_a_put_at_the_backend_too(seaweed, relay, direct, names):
    """The positive side: allowed as PutObject, the backend stores an object (not a part)."""
    body = b"stored as an object"
    path = f"/{names.a}/query/stored"
    authorizer = Recorder(lambda access: access.operation == "PutObject")
    with running(seaweed, relay, authorizer=authorizer) as proxy:
        response = raw_request(proxy.port, "PUT", f"{path}?x=uploadId=1",
                               signed("PUT", host_of(proxy), path, "x=uploadId=1", body), body)
    assert response.status == 200, response
    assert direct.get_object(Bucket=names.a, Key="query/stored")["Body"].read() == body


@pytest.mark.parametrize("method", ["PATCH", "OPTIONS", "PROPFIND", "TRACE", "get", "Put", "MKCOL"])
def test_odd_methods_are_refused(seaweed, relay, direct, names, method):
    path = f"/{names.a}/odd-{method}"
    authorizer = Recorder(allow_all)
    with running(seaweed, relay, authorizer=authorizer) as proxy:
        headers = signed(method, host_of(proxy), path)
        with relay.watch() as upstream:
            response = raw_request(proxy.port, method, path, headers)
    if method in ("get", "Put"):
        # aiohttp's HTTP parser refuses methods that are not upper case before the proxy sees them.
        assert response.status == 400 and response.code in ("InvalidRequest", None), response
    else:
        assert (response.status, response.code) == (405, "MethodNotAllowed"), response
    assert upstream == []
    assert authorizer.count() == 0
    assert not exists(direct, names.a, f"odd-{method}")


@pytest.mark.parametrize("template, code", [
    ("/{a}/../{b}/k", "InvalidURI"),
    ("/{a}/%2e%2e/{b}/k", "InvalidURI"),
    ("/{a}/%2E%2E/{b}/k", "InvalidURI"),
    ("/{a}/.%2e/{b}/k", "InvalidURI"),
    ("/{a}/x/../../{b}/k", "InvalidURI"),
    ("//{b}/k", "InvalidBucketName"),
    ("/{a}/./k", "InvalidURI"),
    ("/{a}/%2e/k", "InvalidURI"),
    ("/{a}/.%2Fk", "InvalidURI"),
    ("/{a}%2F..%2F{b}/k", "InvalidBucketName"),
])
def test_paths_that_normalise_into_another_bucket_are_refused(seaweed, relay, direct, names, template, code):
    """Only bucket a is allowed: nothing may reach bucket b (or a, with a dot-segment key)."""
    path = template.format(a=names.a, b=names.b)
    body = b"normalised"
    authorizer = Recorder(lambda access: access.bucket == names.a)
    with running(seaweed, relay, authorizer=authorizer) as proxy:
        with relay.watch() as upstream:
            response = raw_request(proxy.port, "PUT", path, signed("PUT", host_of(proxy), path, body=body), body)
    assert (response.status, response.code) == (400, code), response
    assert upstream == []
    assert all(bucket != names.b for _, _, bucket, *_ in authorizer.seen())
    assert not exists(direct, names.b, "k")
    assert "Contents" not in direct.list_objects_v2(Bucket=names.b)


@pytest.mark.parametrize("allowed_bucket", ["a", "b"])
def test_virtual_host_wins_over_the_path(seaweed, relay, direct, names, allowed_bucket):
    """Host a.localhost with path /b/k is bucket a, key b/k: for the authorizer and upstream."""
    allowed = getattr(names, allowed_bucket)
    authorizer = Recorder(lambda access: access.bucket == allowed)
    key = f"{names.b}/vhost-{allowed_bucket}"
    path = f"/{key}"
    body = b"virtual host"
    with running(seaweed, relay, authorizer=authorizer, base_domains=["localhost"]) as proxy:
        host = f"{names.a}.localhost:{proxy.port}"
        with relay.watch() as upstream:
            response = raw_request(proxy.port, "PUT", path, signed("PUT", host, path, body=body), body)
    assert authorizer.seen() == [("alice", "PutObject", names.a, key, None)]
    assert not any(target.startswith(f"/{names.b}/") for _, target in relay.lines())
    assert not exists(direct, names.b, f"vhost-{allowed_bucket}")
    if allowed_bucket == "a":
        assert response.status == 200, response
        assert upstream == [("PUT", f"/{names.a}/{key}")]
        assert direct.get_object(Bucket=names.a, Key=key)["Body"].read() == body
    else:
        assert (response.status, response.code) == (403, "AccessDenied")
        assert upstream == []
        assert not exists(direct, names.a, key)


# =================================================================================================
# 2. no cached decision or credential serves another identity, bucket, key or operation
# =================================================================================================

def test_cached_decision_is_not_served_for_another_key(seaweed, relay, direct, names):
    put_direct(direct, names.a, "public/x")
    put_direct(direct, names.a, "private/y")
    authorizer = Recorder(lambda access: (access.key or "").startswith("public/"))
    with running(seaweed, relay, authorizer=authorizer, cache_decisions=60) as proxy:
        c = client(proxy)
        c.get_object(Bucket=names.a, Key="public/x")
        c.get_object(Bucket=names.a, Key="public/x")
        assert authorizer.count() == 1  # the cache works...
        with relay.watch() as upstream, pytest.raises(ClientError) as info:
            c.get_object(Bucket=names.a, Key="private/y")
        assert error_code(info.value) == "AccessDenied"
        assert upstream == []
        assert authorizer.seen()[-1] == ("alice", "GetObject", names.a, "private/y", None)  # ...asked anew


def test_cached_decision_is_not_served_for_another_identity(seaweed, relay, direct, names):
    put_direct(direct, names.a, "public/x")
    authorizer = Recorder(lambda access: access.identity.name == "alice")
    with running(seaweed, relay, authorizer=authorizer, cache_decisions=60) as proxy:
        client(proxy).get_object(Bucket=names.a, Key="public/x")
        with relay.watch() as upstream, pytest.raises(ClientError) as info:
            client(proxy, BOB_KEY, BOB_SECRET).get_object(Bucket=names.a, Key="public/x")
        assert error_code(info.value) == "AccessDenied"
        assert upstream == []
        assert [who for who, *_ in authorizer.seen()] == ["alice", "bob"]


def test_cached_decision_is_not_served_for_another_operation(seaweed, relay, direct, names):
    put_direct(direct, names.a, "keep/me")
    authorizer = Recorder(lambda access: access.operation == "GetObject")
    with running(seaweed, relay, authorizer=authorizer, cache_decisions=60) as proxy:
        c = client(proxy)
        c.get_object(Bucket=names.a, Key="keep/me")
        with relay.watch() as upstream:
            for call in (lambda: c.delete_object(Bucket=names.a, Key="keep/me"),
                         lambda: c.put_object(Bucket=names.a, Key="keep/me", Body=b"overwritten"),
                         lambda: c.head_object(Bucket=names.a, Key="keep/me")):
                with pytest.raises(ClientError) as info:
                    call()
                assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert upstream == []
        assert [op for _, op, *_ in authorizer.seen()] == ["GetObject", "DeleteObject", "PutObject", "HeadObject"]
    assert direct.get_object(Bucket=names.a, Key="keep/me")["Body"].read() == b"data"


def test_cached_decision_is_not_served_for_another_bucket(seaweed, relay, direct, names):
    put_direct(direct, names.a, "same/key")
    put_direct(direct, names.b, "same/key")
    authorizer = Recorder(lambda access: access.bucket == names.a)
    with running(seaweed, relay, authorizer=authorizer, cache_decisions=60) as proxy:
        c = client(proxy)
        c.get_object(Bucket=names.a, Key="same/key")
        with relay.watch() as upstream, pytest.raises(ClientError) as info:
            c.get_object(Bucket=names.b, Key="same/key")
        assert error_code(info.value) == "AccessDenied"
        assert upstream == []


def test_cached_decision_is_not_served_for_other_claims(seaweed, relay, direct, names):
    """Same name, other claims (a group removed): the decision is asked again."""
    put_direct(direct, names.a, "claims/x")

    def authenticate(ctx):
        group = ctx.request.headers.get("x-test-group")
        return Identity("carol", "test", claims={"group": group}) if group else None

    authorizer = Recorder(lambda access: access.identity.claims.get("group") == "admins")
    with running(seaweed, relay, authorizer=authorizer, authenticator=authenticate, keys=None,
                 cache_decisions=60) as proxy:
        path = f"/{names.a}/claims/x"
        ok = raw_request(proxy.port, "GET", path, {"host": host_of(proxy), "x-test-group": "admins"})
        with relay.watch() as upstream:
            denied = raw_request(proxy.port, "GET", path, {"host": host_of(proxy), "x-test-group": "users"})
    assert ok.status == 200 and ok.body == b"data"
    assert (denied.status, denied.code) == (403, "AccessDenied")
    assert upstream == []
    assert authorizer.count() == 2


def test_decisions_are_not_shared_between_proxies_sharing_a_cache(seaweed, relay, direct, names):
    put_direct(direct, names.a, "shared/x")
    cache = SecretsCache()
    with running(seaweed, relay, authorizer=allow_all, cache=cache, cache_decisions=60) as open_proxy, \
            running(seaweed, relay, authorizer=lambda access: False, cache=cache, cache_decisions=60) as closed:
        client(open_proxy).get_object(Bucket=names.a, Key="shared/x")
        with relay.watch() as upstream, pytest.raises(ClientError) as info:
            client(closed).get_object(Bucket=names.a, Key="shared/x")
        assert error_code(info.value) == "AccessDenied"
        assert upstream == []


def test_a_failing_authorizer_denies_and_the_denial_is_not_cached(seaweed, relay, direct, names):
    put_direct(direct, names.a, "flaky/x")
    calls = []

    def flaky(access):
        calls.append(access)
        if len(calls) == 1:
            raise RuntimeError("policy service down")
        return True

    with running(seaweed, relay, authorizer=flaky, cache_decisions=60) as proxy:
        c = client(proxy)
        with pytest.raises(ClientError) as info:
            c.get_object(Bucket=names.a, Key="flaky/x")
        assert error_code(info.value) == "AccessDenied"
        assert c.get_object(Bucket=names.a, Key="flaky/x")["Body"].read() == b"data"
    assert len(calls) == 2


def test_scoped_decisions_never_leak_outside_their_scope(seaweed, relay, direct, names):
    for key in ("a/1", "a/2", "secret/3", "ab/1", "a", "b/1"):
        put_direct(direct, names.a, key)

    def decide(access):
        if access.identity.name != "alice" or access.operation != "GetObject" or access.bucket != names.a:
            return False
        key = access.key or ""
        if key.startswith("secret/"):
            return Decision(False, ttl=60, scope_prefix="secret/")
        if key.startswith("a/"):
            return Decision(True, ttl=60, scope_prefix="a/")
        return False

    authorizer = Recorder(decide)
    with running(seaweed, relay, authorizer=authorizer) as proxy:  # cache_decisions=0: only the scopes
        alice, bob = client(proxy), client(proxy, BOB_KEY, BOB_SECRET)
        assert alice.get_object(Bucket=names.a, Key="a/1")["Body"].read() == b"data"
        assert authorizer.count() == 1
        assert alice.get_object(Bucket=names.a, Key="a/2")["Body"].read() == b"data"
        assert authorizer.count() == 1  # served by the scope
        with relay.watch() as upstream:
            for c, op, key in [(alice, "get", "secret/3"), (alice, "get", "ab/1"), (alice, "get", "a"),
                               (alice, "get", "b/1"), (bob, "get", "a/2"), (alice, "head", "a/2"),
                               (alice, "delete", "a/2"), (alice, "get", "secret/3")]:
                call = {"get": c.get_object, "head": c.head_object, "delete": c.delete_object}[op]
                with pytest.raises(ClientError) as info:
                    call(Bucket=names.a, Key=key)
                assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, (op, key)
            with pytest.raises(ClientError):
                alice.list_objects_v2(Bucket=names.a, Prefix="a/")
            with pytest.raises(ClientError):
                alice.get_object(Bucket=names.b, Key="a/1")
        assert upstream == []
    asked = [(who, op, bucket, key) for who, op, bucket, key, _ in authorizer.seen()]
    assert asked == [
        ("alice", "GetObject", names.a, "a/1"),
        ("alice", "GetObject", names.a, "secret/3"),
        ("alice", "GetObject", names.a, "ab/1"),
        ("alice", "GetObject", names.a, "a"),
        ("alice", "GetObject", names.a, "b/1"),
        ("bob", "GetObject", names.a, "a/2"),
        ("alice", "HeadObject", names.a, "a/2"),
        ("alice", "DeleteObject", names.a, "a/2"),
        # the second secret/3 was answered by the scoped deny
        ("alice", "ListObjectsV2", names.a, None),
        ("alice", "GetObject", names.b, "a/1"),
    ]
    assert exists(direct, names.a, "a/2")


def test_a_scope_that_does_not_contain_the_request_is_ignored(seaweed, relay, direct, names):
    put_direct(direct, names.a, "b/1")
    put_direct(direct, names.a, "a/9")
    answers = iter([Decision(True, ttl=60, scope_prefix="a/"), False])
    authorizer = Recorder(lambda access: next(answers))
    with running(seaweed, relay, authorizer=authorizer) as proxy:
        c = client(proxy)
        assert c.get_object(Bucket=names.a, Key="b/1")["Body"].read() == b"data"  # this one, as answered
        with pytest.raises(ClientError) as info:  # but the "a/" scope was not taken for granted
            c.get_object(Bucket=names.a, Key="a/9")
        assert error_code(info.value) == "AccessDenied"
    assert authorizer.count() == 2


def test_backend_credentials_are_cached_per_identity_and_bucket(seaweed, relay, direct, names):
    """A credential provider function is asked once per (identity, bucket); bob's (useless)
    credentials are never used for alice nor alice's for bob."""
    put_direct(direct, names.a, "creds/x")
    put_direct(direct, names.b, "creds/x")
    calls: Counter = Counter()
    lock = threading.Lock()

    def provider(identity, bucket):
        with lock:
            calls[(identity.name, bucket)] += 1
        secret = seaweed.secret_key if identity.name == "alice" else "bobs-wrong-backend-secret"
        return {"access_key": seaweed.access_key, "secret_key": secret}

    backend = Backend(endpoint=relay.url, region=seaweed.region)  # no credentials of its own
    with running(seaweed, relay, backends=backend, authorizer=allow_all, credential_provider=provider) as proxy:
        alice, bob = client(proxy), client(proxy, BOB_KEY, BOB_SECRET)
        for _ in range(3):
            assert alice.get_object(Bucket=names.a, Key="creds/x")["Body"].read() == b"data"
        assert alice.get_object(Bucket=names.b, Key="creds/x")["Body"].read() == b"data"
        for bucket in (names.a, names.b, names.a):
            with pytest.raises(ClientError) as info:
                bob.get_object(Bucket=bucket, Key="creds/x")
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403  # the backend refused bob
        assert alice.get_object(Bucket=names.a, Key="creds/x")["Body"].read() == b"data"
    assert calls == {("alice", names.a): 1, ("alice", names.b): 1, ("bob", names.a): 1, ("bob", names.b): 1}


# =================================================================================================
# 3. no secret in a log record or an error body
# =================================================================================================

def _client_signatures(headers_or_urls) -> set[str]:
    found = set()
    for item in headers_or_urls:
        found.update(re.findall(r"Signature=([0-9a-f]{64})", item))
    return found


def test_no_secret_in_logs_or_error_bodies(seaweed, relay, direct, names, caplog):
    caplog.set_level(logging.DEBUG, logger="inproxy")
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    put_direct(direct, names.a, "logs/readable")
    bodies: list[bytes] = []
    sent: list[str] = []
    authorizer = Recorder(lambda access: (access.key or "").startswith("logs/") or access.key is None)
    with running(seaweed, relay, authorizer=authorizer, cache_decisions=5) as proxy:
        host = host_of(proxy)
        issued = proxy.issue_credentials("dave", ttl=300)
        # Successes: boto3 with a static key and with issued (session) credentials, presigned URLs.
        alice = client(proxy)
        alice.put_object(Bucket=names.a, Key="logs/new", Body=b"fresh")
        alice.get_object(Bucket=names.a, Key="logs/readable")["Body"].read()
        alice.list_objects_v2(Bucket=names.a, Prefix="logs/")
        dave = client(proxy, issued.access_key, issued.secret_key, issued.session_token)
        dave.get_object(Bucket=names.a, Key="logs/readable")["Body"].read()
        good_url = presign_url(proxy, "erin", "GetObject", names.a, "logs/readable", expires_in=60)
        static_url = presign_url(proxy, _static(ALICE_KEY, ALICE_SECRET), "GetObject", names.a,
                                 "logs/readable", expires_in=60)
        sent += [good_url, static_url]
        assert requests.get(good_url).status_code == 200
        # Failures, each answered with an error body that is kept.
        failures = []
        path = f"/{names.a}/logs/readable"
        for secret, token, key in [("wrong", None, ALICE_KEY), (ALICE_SECRET, None, "AKUNKNOWN"),
                                   ("wrong", issued.session_token, issued.access_key),
                                   (issued.secret_key, issued.session_token + "x", issued.access_key)]:
            headers = signed("GET", host, path, key=key, secret=secret, token=token)
            sent.append(headers["authorization"])
            failures.append(raw_request(proxy.port, "GET", path, headers))
        denied_path = f"/{names.a}/private/x"
        headers = signed("GET", host, denied_path)
        sent.append(headers["authorization"])
        failures.append(raw_request(proxy.port, "GET", denied_path, headers))
        tampered = static_url.replace("/logs/readable?", "/logs/other?")
        failures.append(_get(tampered))
        expired = _presigned_in_the_past(proxy, names.a, "logs/readable", ALICE_KEY, ALICE_SECRET)
        sent.append(expired)
        failures.append(_get(expired))
        failures.append(_get(good_url.replace("X-Amz-Expires=60", "X-Amz-Expires=61")))
        failures.append(raw_request(proxy.port, "GET", path, {"host": host}))
        bodies += [f.body for f in failures]
        assert sorted({f.code for f in failures}) == [
            "AccessDenied", "InvalidAccessKeyId", "InvalidToken", "SignatureDoesNotMatch"]
        # The authorizer raising is logged (type only).
        authorizer.rule = lambda access: (_ for _ in ()).throw(RuntimeError(f"boom {ALICE_SECRET}"))
        failures.append(raw_request(proxy.port, "GET", f"/{names.a}/logs/x", signed("GET", host, f"/{names.a}/logs/x")))
        bodies.append(failures[-1].body)
    secret_values = {ALICE_SECRET, BOB_SECRET, seaweed.secret_key, issued.secret_key, issued.session_token}
    signatures = _client_signatures(sent) | _client_signatures([relay.data().decode("latin-1")])
    assert signatures, "the scan must know some signatures"
    records = [record.getMessage() for record in caplog.records]
    records += [caplog.text]
    for needle in secret_values | signatures:
        for text in records:
            assert needle not in text
        for body in bodies:
            assert needle.encode() not in body
    assert any("authorizer failed (RuntimeError)" in message for message in records)


def test_presigned_signature_mismatch_body_does_not_echo_the_session_token(seaweed, relay, names):
    with running(seaweed, relay, authorizer=allow_all) as proxy:
        url = presign_url(proxy, "alice", "GetObject", names.a, "logs/readable", expires_in=60)
        token = re.search(r"X-Amz-Security-Token=([^&]+)", url).group(1)
        response = _get(url.replace("/logs/readable?", "/logs/other?"))
    assert response.code == "SignatureDoesNotMatch"
    assert token.encode() not in response.body


def _static(key: str, secret: str):
    from inproxy import Credentials

    return Credentials(key, secret)


def _get(url: str, method: str = "GET") -> Response:
    answer = requests.request(method, url, timeout=20)
    return Response(answer.status_code, dict(answer.headers), answer.content, b"")


def _presigned_in_the_past(proxy, bucket: str, key: str, access_key: str, secret: str,
                           *, age: float = 7200, expires: int = 3600) -> str:
    host = host_of(proxy)
    path = f"/{bucket}/{key}"
    query = _signer.presign_url_query("GET", path, host, "", access_key=access_key, secret_key=secret,
                                      region=REGION, expires_in=expires,
                                      now=datetime.now(timezone.utc) - timedelta(seconds=age))
    return f"{proxy.endpoint_url}{path}?{query}"


# =================================================================================================
# 4. presigned URLs: never after expiry, never with a signed part changed
# =================================================================================================

def test_presigned_url_after_its_expiry_is_refused(seaweed, relay, direct, names):
    put_direct(direct, names.a, "presign/x")
    with running(seaweed, relay, authorizer=allow_all) as proxy:
        url = presign_url(proxy, "alice", "GetObject", names.a, "presign/x", expires_in=1)
        time.sleep(2.5)
        old = _presigned_in_the_past(proxy, names.a, "presign/x", ALICE_KEY, ALICE_SECRET)
        with relay.watch() as upstream:
            late, past = _get(url), _get(old)
    assert (late.status, late.code) == (403, "AccessDenied")
    assert (past.status, past.code) == (403, "AccessDenied")
    assert upstream == []


def _earlier(amz_date: str) -> str:
    """The X-Amz-Date one second earlier (the same day, so the credential scope still matches)."""
    when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    moved = when - timedelta(seconds=1) if when.time() != datetime.min.time() else when + timedelta(seconds=1)
    return moved.strftime("%Y%m%dT%H%M%SZ")


def _tamperings(url: str, names) -> list[tuple[str, str, str]]:
    """(what, method, url) variations of a presigned GET that the signature does not cover."""
    expires = re.search(r"X-Amz-Expires=(\d+)", url).group(1)
    signature = re.search(r"X-Amz-Signature=([0-9a-f]+)", url).group(1)
    date = re.search(r"X-Amz-Date=(\w+)", url).group(1)
    return [
        ("other key", "GET", url.replace("/presign/x?", "/presign/y?")),
        ("other bucket", "GET", url.replace(f"/{names.a}/", f"/{names.b}/")),
        ("parameter added", "GET", url + "&response-content-type=text%2Fhtml"),
        ("parameter inserted", "GET", url.replace("?", "?versionId=1&", 1)),
        ("expiry extended", "GET", url.replace(f"X-Amz-Expires={expires}", "X-Amz-Expires=604800")),
        ("date moved", "GET", url.replace(f"X-Amz-Date={date}", f"X-Amz-Date={_earlier(date)}")),
        ("signature changed", "GET", url.replace(signature, signature[::-1])),
        ("method DELETE", "DELETE", url),
        ("method PUT", "PUT", url),
        ("method HEAD", "HEAD", url),
        ("signed headers widened", "GET", url.replace("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=host%3Brange")),
    ]


@pytest.mark.parametrize("signer", ["issued", "static"])
def test_presigned_url_with_anything_changed_is_refused(seaweed, relay, direct, names, signer):
    put_direct(direct, names.a, "presign/x", b"original")
    put_direct(direct, names.a, "presign/y", b"other")
    put_direct(direct, names.b, "presign/x", b"b's")
    with running(seaweed, relay, authorizer=allow_all) as proxy:
        who = "alice" if signer == "issued" else _static(ALICE_KEY, ALICE_SECRET)
        url = presign_url(proxy, who, "GetObject", names.a, "presign/x", expires_in=600)
        assert _get(url).body == b"original"  # the untouched URL works
        for what, method, changed in _tamperings(url, names):
            with relay.watch() as upstream:
                answer = _get(changed, method)
            assert answer.status == 403, what
            if method != "HEAD":
                assert answer.code == "SignatureDoesNotMatch", what
            assert upstream == [], what
    assert direct.get_object(Bucket=names.a, Key="presign/x")["Body"].read() == b"original"


def test_presigned_put_url_cannot_write_elsewhere(seaweed, relay, direct, names):
    with running(seaweed, relay, authorizer=allow_all) as proxy:
        url = presign_url(proxy, "alice", "PutObject", names.a, "presign/upload", expires_in=600)
        with relay.watch() as upstream:
            other = requests.put(url.replace("/presign/upload?", "/presign/elsewhere?"), data=b"x", timeout=20)
        assert other.status_code == 403 and b"SignatureDoesNotMatch" in other.content
        assert upstream == []
        assert requests.put(url, data=b"uploaded", timeout=20).status_code == 200
    assert direct.get_object(Bucket=names.a, Key="presign/upload")["Body"].read() == b"uploaded"
    assert not exists(direct, names.a, "presign/elsewhere")


# =================================================================================================
# 5. multi-object operations: one denied object refuses the whole request
# =================================================================================================

def test_delete_objects_with_one_denied_key_deletes_nothing(seaweed, relay, direct, names):
    keys = ["multi/ok-1", "multi/ok-2", "multi/protected/3", "multi/ok-4"]
    for key in keys:
        put_direct(direct, names.a, key)
    authorizer = Recorder(lambda access: "protected" not in (access.key or ""))
    with running(seaweed, relay, authorizer=authorizer) as proxy:
        with relay.watch() as upstream, pytest.raises(ClientError) as info:
            client(proxy).delete_objects(Bucket=names.a, Delete={"Objects": [{"Key": k} for k in keys]})
    assert error_code(info.value) == "AccessDenied"
    assert upstream == []
    assert all(exists(direct, names.a, key) for key in keys)
    checked = [(op, key) for _, op, _, key, _ in authorizer.seen()]
    assert checked[0] == ("DeleteObjects", None)
    assert ("DeleteObject", "multi/protected/3") in checked


def test_copy_from_a_denied_source_copies_nothing(seaweed, relay, direct, names):
    put_direct(direct, names.a, "secret/src", b"secret bytes")
    authorizer = Recorder(lambda access: not (access.key or "").startswith("secret/"))
    with running(seaweed, relay, authorizer=authorizer) as proxy:
        c = client(proxy)
        with relay.watch() as upstream:
            with pytest.raises(ClientError) as info:
                c.copy_object(Bucket=names.a, Key="copied/dst", CopySource={"Bucket": names.a, "Key": "secret/src"})
            assert error_code(info.value) == "AccessDenied"
            with pytest.raises(ClientError) as info:  # the other bucket, same key name
                c.copy_object(Bucket=names.b, Key="copied/dst", CopySource={"Bucket": names.a, "Key": "secret/src"})
            assert error_code(info.value) == "AccessDenied"
        assert upstream == []
        upload = c.create_multipart_upload(Bucket=names.a, Key="copied/part")
        with relay.watch() as upstream, pytest.raises(ClientError) as info:
            c.upload_part_copy(Bucket=names.a, Key="copied/part", UploadId=upload["UploadId"], PartNumber=1,
                               CopySource={"Bucket": names.a, "Key": "secret/src"})
        assert error_code(info.value) == "AccessDenied"
        assert upstream == []
        c.abort_multipart_upload(Bucket=names.a, Key="copied/part", UploadId=upload["UploadId"])
    assert not exists(direct, names.a, "copied/dst")
    assert not exists(direct, names.b, "copied/dst")
    assert ("alice", "GetObject", names.a, "secret/src", None) in authorizer.seen()


# =================================================================================================
# 6. PrefixPolicy end to end
# =================================================================================================

def test_prefix_policy_keeps_teams_apart(seaweed, relay, direct, names):
    for key in ("team-a/1", "team-a/sub/2", "team-b/1", "team-ab/1", "top"):
        put_direct(direct, names.c, key)
    policy = PrefixPolicy([
        {"identity": "alice", "bucket": names.c, "prefix": "team-a/", "actions": ["read", "PutObject", "DeleteObject"]},
        {"identity": "bob", "bucket": names.c, "prefix": "team-b/", "actions": "*"},
    ])
    with running(seaweed, relay, authorizer=policy) as proxy:
        alice, bob = client(proxy), client(proxy, BOB_KEY, BOB_SECRET)
        listed = alice.list_objects_v2(Bucket=names.c, Prefix="team-a/")
        assert [o["Key"] for o in listed["Contents"]] == ["team-a/1", "team-a/sub/2"]
        assert alice.list_objects(Bucket=names.c, Prefix="team-a/sub/")["Contents"][0]["Key"] == "team-a/sub/2"
        assert alice.get_object(Bucket=names.c, Key="team-a/1")["Body"].read() == b"data"
        alice.head_bucket(Bucket=names.c)
        with relay.watch() as upstream:
            refused = [
                lambda: alice.list_objects_v2(Bucket=names.c),
                lambda: alice.list_objects_v2(Bucket=names.c, Prefix="team-"),
                lambda: alice.list_objects_v2(Bucket=names.c, Prefix="team-a"),  # would show team-ab/
                lambda: alice.list_objects_v2(Bucket=names.c, Prefix="team-b/"),
                lambda: alice.list_object_versions(Bucket=names.c, Prefix=""),
                lambda: alice.list_multipart_uploads(Bucket=names.c),
                lambda: alice.get_object(Bucket=names.c, Key="team-b/1"),
                lambda: alice.get_object(Bucket=names.c, Key="team-ab/1"),
                lambda: alice.get_object(Bucket=names.c, Key="top"),
                lambda: alice.put_object(Bucket=names.c, Key="team-b/evil", Body=b"x"),
                lambda: alice.delete_object(Bucket=names.c, Key="team-b/1"),
                lambda: alice.copy_object(Bucket=names.c, Key="team-a/stolen",
                                          CopySource={"Bucket": names.c, "Key": "team-b/1"}),
                lambda: alice.delete_objects(Bucket=names.c, Delete={"Objects": [{"Key": "team-a/1"},
                                                                                 {"Key": "team-b/1"}]}),
                lambda: bob.get_object(Bucket=names.c, Key="team-a/1"),
                lambda: bob.list_objects_v2(Bucket=names.c, Prefix="team-a/"),
                lambda: alice.get_object(Bucket=names.a, Key="team-a/1"),
                lambda: alice.delete_bucket(Bucket=names.c),
            ]
            for number, call in enumerate(refused):
                with pytest.raises(ClientError) as info:
                    call()
                assert error_code(info.value) == "AccessDenied", number
        assert upstream == []
        assert "team-b/1" in [o["Key"] for o in bob.list_objects_v2(Bucket=names.c, Prefix="team-b/")["Contents"]]
    for key in ("team-a/1", "team-b/1"):
        assert exists(direct, names.c, key)
    assert not exists(direct, names.c, "team-b/evil")
    assert not exists(direct, names.c, "team-a/stolen")
