"""The proxy's SigV4 verification against requests signed by botocore, over real sockets.

hypothesis draws keys, query strings, headers and payload modes; botocore signs; the
proxy must accept every one of them, and refuse each after any one signed part changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import threading
from datetime import datetime, timezone
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from aiohttp import web
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from inproxy import AllowAll, Backend, ProxyServer, errors
from inproxy.auth.sigv4 import SigV4Authenticator, StaticKeys
from inproxy.context import RequestContext
from inproxy.s3.request import parse_s3_request
from inproxy.s3.sigv4 import Signer

AK, SK = "AKIDVERIFYTEST", "secret/with+special=chars"
_KEY_CHARS = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))


class _OkBackend:
    """A backend that answers 200 to anything, in its own thread."""

    def __enter__(self):
        import asyncio

        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start():
            self.runner = web.ServerRunner(web.Server(lambda r: _ok(r)), access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

        def run():
            self.loop.run_until_complete(start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait()
        return self

    def __exit__(self, *exc):
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


async def _ok(request: web.BaseRequest) -> web.Response:
    await request.read()
    return web.Response(body=b"ok")


@pytest.fixture(scope="module")
def proxy():
    with _OkBackend() as backend:
        target = Backend(endpoint=backend.url, credentials={"access_key": "B", "secret_key": "B"})
        with ProxyServer.run_in_thread(backends={"*": target}, keys={AK: SK}, authorizer=AllowAll()) as server:
            yield server


def _signed(proxy, method: str, key: str, query: list[tuple[str, str]], headers: dict[str, str],
            body: bytes, unsigned: bool) -> AWSRequest:
    path = "/verify-bucket/" + quote(key, safe="/~")
    qs = "&".join(f"{quote(n, safe='-_.~')}={quote(v, safe='-_.~')}" for n, v in query)
    url = f"{proxy.endpoint_url}{path}" + (f"?{qs}" if qs else "")
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    if unsigned:
        request.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
        request.context["payload_signing_enabled"] = False
    S3SigV4Auth(BotoCredentials(AK, SK), "s3", "us-east-1").add_auth(request)
    return request


def _send(proxy, request: AWSRequest, *, path_override: str | None = None) -> tuple[int, bytes]:
    """Send exactly the signed bytes (http.client does not re-quote the path)."""
    target = path_override or request.url.split(proxy.endpoint_url, 1)[1]
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        headers = {k: v for k, v in request.headers.items()}
        body = request.body or b""
        conn.request(request.method, target, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _set_header(request: AWSRequest, name: str, value: str) -> None:
    del request.headers[name]  # botocore's headers append on assignment
    request.headers[name] = value


shapes = st.fixed_dictionaries({
    "method": st.sampled_from(["GET", "PUT", "HEAD", "DELETE"]),
    "key": st.text(_KEY_CHARS, min_size=1, max_size=40).filter(
        lambda k: not any(seg in (".", "..") for seg in k.split("/"))),
    "query": st.lists(st.tuples(st.sampled_from(["tagging", "x-id", "partNumber", "prefix", "a b", "ü"]),
                                st.text(_KEY_CHARS, max_size=10)), max_size=3),
    "meta": st.dictionaries(st.sampled_from(["x-amz-meta-a", "x-amz-meta-b", "content-type"]),
                            st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=12),
                            max_size=2),
    "body": st.binary(max_size=64),
    "unsigned": st.booleans(),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes)
def test_botocore_signed_requests_are_accepted(proxy, shape):
    body = shape["body"] if shape["method"] == "PUT" else b""
    request = _signed(proxy, shape["method"], shape["key"], shape["query"], shape["meta"], body, shape["unsigned"])
    status, payload = _send(proxy, request)
    assert status == 200, payload


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes, change=st.sampled_from(["path", "query", "header", "body", "method"]))
def test_any_signed_change_is_refused(proxy, shape, change):
    body = shape["body"] if shape["method"] == "PUT" else b""
    request = _signed(proxy, shape["method"], shape["key"], shape["query"], shape["meta"], body, shape["unsigned"])
    path = request.url.split(proxy.endpoint_url, 1)[1]
    if change == "path":
        path = path.replace("/verify-bucket/", "/verify-bucket/x", 1)
    elif change == "query":
        path += ("&" if "?" in path else "?") + "extra=1"
    elif change == "header":
        _set_header(request, "x-amz-meta-injected", "1")
        signed = request.headers["Authorization"].replace("SignedHeaders=", "SignedHeaders=x-amz-meta-injected;", 1)
        _set_header(request, "Authorization", signed)
    elif change == "body":
        if shape["unsigned"] or shape["method"] != "PUT":
            return  # nothing signed to change
        request.data = (request.body or b"") + b"!"
        _set_header(request, "Content-Length", str(len(request.data)))
    elif change == "method":
        request.method = "DELETE" if shape["method"] != "DELETE" else "GET"
    status, payload = _send(proxy, request, path_override=path)
    assert status in (400, 403), (change, status, payload)
    expected = {b"SignatureDoesNotMatch", b"XAmzContentSHA256Mismatch", b"AuthorizationHeaderMalformed"}
    assert any(code in payload for code in expected) or shape["method"] == "HEAD" or request.method == "HEAD", payload


def test_sha256_of_the_fixture_secret_never_appears(proxy):
    # a sanity check on the fixture: the proxy answers a request signed with another secret with 403
    request = AWSRequest(method="GET", url=f"{proxy.endpoint_url}/verify-bucket/k")
    S3SigV4Auth(BotoCredentials(AK, "not-" + SK), "s3", "us-east-1").add_auth(request)
    status, payload = _send(proxy, request)
    assert status == 403 and b"SignatureDoesNotMatch" in payload
    assert SK.encode() not in payload and hashlib.sha256(SK.encode()).hexdigest().encode() not in payload


# -- the authenticator on its own: presigned URLs, key stores, the path fallback ----------------

PRESIGN_TIME = datetime(2026, 11, 27, 12, 0, 0, tzinfo=timezone.utc)


def _presigned_ctx(path: str, *, signed_path: str | None = None, expires: int = 300, secret: str = SK,
                   headers: dict[str, str] | None = None) -> RequestContext:
    """A request for ``path`` presigned by inproxy's Signer (botocore-identical, see test_sigv4)
    for ``signed_path`` (the path as the client signed it; default ``path``)."""
    host = "proxy.test:8080"
    query = Signer().presign_url_query("GET", signed_path or path, host, "versionId=1", access_key=AK,
                                       secret_key=secret, region="us-east-1", expires_in=expires,
                                       now=PRESIGN_TIME)
    request = SimpleNamespace(method="GET", headers=CIMultiDict({"Host": host, "User-Agent": "t", **(headers or {})}))
    ctx = RequestContext(request)
    ctx.s3 = parse_s3_request("GET", path, query, host, request.headers)
    return ctx


def _authenticate(authenticator: SigV4Authenticator, ctx: RequestContext):
    return asyncio.run(authenticator.authenticate(ctx))


def _authenticator(keys=None, *, at: float = PRESIGN_TIME.timestamp(), **kw) -> SigV4Authenticator:
    return SigV4Authenticator({AK: SK} if keys is None else keys, clock=lambda: at, **kw)


def test_presigned_url_is_valid_from_its_date_for_its_expiry():
    start = PRESIGN_TIME.timestamp()
    for at in (start - 900, start, start + 300):
        assert _authenticate(_authenticator(at=at), _presigned_ctx("/bkt/k")).name == AK
    with pytest.raises(errors.AccessDenied, match="not yet valid"):
        _authenticate(_authenticator(at=start - 901), _presigned_ctx("/bkt/k"))
    with pytest.raises(errors.AccessDenied, match="expired"):
        _authenticate(_authenticator(at=start + 301), _presigned_ctx("/bkt/k"))


def test_presigned_signature_covers_secret_path_and_host_header():
    with pytest.raises(errors.SignatureDoesNotMatch):
        _authenticate(_authenticator(), _presigned_ctx("/bkt/k", secret="other"))
    with pytest.raises(errors.SignatureDoesNotMatch):
        _authenticate(_authenticator(), _presigned_ctx("/bkt/k", signed_path="/bkt/j"))
    ctx = _presigned_ctx("/bkt/k")
    ctx.request.headers["Host"] = "other.test"
    with pytest.raises(errors.SignatureDoesNotMatch):
        _authenticate(_authenticator(), ctx)


def test_a_path_sent_unencoded_may_be_signed_encoded():
    # '!' and '(' sent as is, signed as %21 and %28 (what SDKs sign); either form verifies.
    assert _authenticate(_authenticator(), _presigned_ctx("/bkt/a!(b", signed_path="/bkt/a%21%28b")).name == AK
    assert _authenticate(_authenticator(), _presigned_ctx("/bkt/a!(b")).name == AK
    with pytest.raises(errors.SignatureDoesNotMatch) as info:
        _authenticate(_authenticator(), _presigned_ctx("/bkt/a!(b", signed_path="/bkt/other"))
    # the error shows the last form tried: the canonical one
    assert info.value.extra["CanonicalRequest"].startswith("GET\n/bkt/a%21%28b\n")
    assert info.value.extra["AWSAccessKeyId"] == AK


def test_key_stores_are_asked_as_they_say():
    class Revoked(StaticKeys):  # a StaticKeys subclass may answer otherwise: it must be asked
        async def lookup(self, access_key):
            return None

    with pytest.raises(errors.InvalidAccessKeyId):
        _authenticate(_authenticator(Revoked({AK: SK})), _presigned_ctx("/bkt/k"))
    with pytest.raises(errors.InvalidAccessKeyId):
        _authenticate(_authenticator({"other": SK}), _presigned_ctx("/bkt/k"))
    asked = []

    def lookup(access_key):
        asked.append(access_key)
        return SK

    assert _authenticate(_authenticator(lookup), _presigned_ctx("/bkt/k")).name == AK and asked == [AK]
    assert _authenticate(_authenticator(StaticKeys({AK: SK})), _presigned_ctx("/bkt/k")).name == AK
