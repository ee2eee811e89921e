"""Authorization: the DeleteObjects and copy-source parsers, the decision caches (exact and
scoped), PrefixPolicy, presigned URLs; then the same end to end against SeaweedFS.

Tests marked ``xfail(strict=True, reason="needs pipeline change: ...")`` pass once the
pipeline implements the ``ctx.state`` contract of :mod:`inproxy.authorize` (see its
docstring); the lead flips them when applying it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
import zlib
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

boto3 = pytest.importorskip("boto3")
requests = pytest.importorskip("requests")

from botocore.exceptions import ClientError  # noqa: E402

from inproxy import Credentials, Decision, Identity, ProxyHooks, SecretsCache, errors  # noqa: E402
from inproxy.authorize import MAX_DELETE_BODY  # noqa: E402
from inproxy.context import AccessRequest  # noqa: E402
from inproxy.decisions import ScopedDecisions, decision_cache_key, is_allowed  # noqa: E402
from inproxy.hooks import as_authorizer  # noqa: E402
from inproxy.policy import ALL_OPERATIONS, READ_OPERATIONS, WRITE_OPERATIONS, PrefixPolicy, Rule, expand_actions  # noqa: E402
from inproxy.presign import presign_url  # noqa: E402
from inproxy.s3.multi import CopySource, content_md5, parse_copy_source, parse_delete_request  # noqa: E402

from test_must_never import (  # noqa: E402
    ALICE_KEY,
    ALICE_SECRET,
    BOB_KEY,
    BOB_SECRET,
    Recorder,
    allow_all,
    client,
    error_code,
    exists,
    host_of,
    put_direct,
    raw_request,
    running,
    signed,
)

NEEDS_PIPELINE = ("needs pipeline change: Pipeline.honours_authorization_state, ctx.state['buffered_body'] "
                  "forwarded, authorize.upstream_headers() merged, no second 100 Continue")
NEEDS_IS_ALLOWED = "needs pipeline change: Pipeline.is_allowed delegating to inproxy.decisions.is_allowed"

S3NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def delete_xml(*keys: str, namespace: bool = True, quiet: bool | None = None) -> bytes:
    objects = "".join(f"<Object><Key>{k}</Key></Object>" for k in keys)
    quiet_xml = "" if quiet is None else f"<Quiet>{str(quiet).lower()}</Quiet>"
    ns = f' xmlns="{S3NS}"' if namespace else ""
    return f'<?xml version="1.0" encoding="UTF-8"?><Delete{ns}>{objects}{quiet_xml}</Delete>'.encode()


# =================================================================================================
# DeleteObjects bodies
# =================================================================================================

def test_parse_delete_request_basics():
    parsed = parse_delete_request(delete_xml("a/1", "b/2", quiet=True))
    assert parsed.objects == (("a/1", None), ("b/2", None)) and parsed.quiet
    assert parse_delete_request(delete_xml("k", namespace=False)).keys == ["k"]
    body = (f'<Delete xmlns="{S3NS}">\n  <Object>\n    <Key> spaced key </Key>\n    <VersionId>v1</VersionId>\n'
            f'  </Object>\n  <Object><Key>a&amp;b&lt;&#x41;</Key><ETag>"e"</ETag></Object>\n'
            f'  <Object><Key><![CDATA[c<d>]]></Key></Object>\n  <Object><Key>a&amp;b&lt;&#x41;</Key></Object>\n'
            f'</Delete>').encode()
    parsed = parse_delete_request(body)
    assert parsed.objects == ((" spaced key ", "v1"), ("a&b<A", None), ("c<d>", None), ("a&b<A", None))
    assert parsed.keys == [" spaced key ", "a&b<A", "c<d>"]
    assert not parsed.quiet
    prefixed = f'<s3:Delete xmlns:s3="{S3NS}"><s3:Object><s3:Key>x</s3:Key></s3:Object></s3:Delete>'.encode()
    assert parse_delete_request(prefixed).keys == ["x"]
    assert parse_delete_request("\ufeff".encode() + delete_xml("bom")).keys == ["bom"]
    assert parse_delete_request(delete_xml("\u00e9t\u00e9/\U0001F600")).keys == ["\u00e9t\u00e9/\U0001F600"]


def test_parse_delete_request_takes_at_most_1000_keys():
    assert len(parse_delete_request(delete_xml(*[f"k{i}" for i in range(1000)])).objects) == 1000
    with pytest.raises(errors.S3Error) as info:
        parse_delete_request(delete_xml(*[f"k{i}" for i in range(1001)]))
    assert info.value.code == "MalformedXML"


@pytest.mark.parametrize("body", [
    b"",
    b"not xml",
    b"<Delete>",
    b"<Delete></Delete>",  # no object
    b"<Delete><Object></Object></Delete>",  # no key
    b"<Delete><Object><Key>a</Key><Key>b</Key></Object></Delete>",  # which one?
    b"<Delete><Object><Key>a</Key><VersionId>1</VersionId><VersionId>2</VersionId></Object></Delete>",
    b"<Delete><Object><Key>a<b/></Key></Object></Delete>",  # nested
    b"<Delete><Object><Key>a</Key><Other>x</Other></Object></Delete>",
    b"<Delete><Object><Key>a</Key></Object><Other/></Delete>",
    b"<Delete><Key>a</Key></Delete>",
    b"<Remove><Object><Key>a</Key></Object></Remove>",
    b"<Delete><Object><Key id='1'>a</Key></Object></Delete>",  # attributes
    b"<Delete><Object><x:Key xmlns:x='urn:other'>a</x:Key></Object></Delete>",  # foreign namespace
    b"<x:Delete xmlns:x='urn:other'><x:Object><x:Key>a</x:Key></x:Object></x:Delete>",
    b"<Delete>text<Object><Key>a</Key></Object></Delete>",  # stray text
    b"<Delete><Object>text<Key>a</Key></Object></Delete>",
    b"<Delete><Object><Key>a</Key>text</Object></Delete>",
    b"<Delete><Object><Key>a</Key></Object><Quiet>maybe</Quiet></Delete>",
    b"<Delete><Object><Key>a</Key></Object><Quiet>true</Quiet><Quiet>false</Quiet></Delete>",
    b"<Delete><Object><Key>a<!-- c -->b</Key></Object></Delete>",  # comments
    b"<?pi x?><Delete><Object><Key>a</Key></Object></Delete>",  # processing instructions
    b"<Delete><Object><Key>a</Key></Object></Delete><Delete/>",
    b'<?xml version="1.0" encoding="ISO-8859-1"?><Delete><Object><Key>\xe9</Key></Object></Delete>',
    '<?xml version="1.0" encoding="UTF-16"?><Delete><Object><Key>a</Key></Object></Delete>'.encode("utf-16"),
    b"<Delete><Object><Key>\xff\xfe</Key></Object></Delete>",  # not UTF-8
    b"<!DOCTYPE Delete><Delete><Object><Key>a</Key></Object></Delete>",
    b'<!DOCTYPE d [<!ENTITY e "x">]><Delete><Object><Key>&e;</Key></Object></Delete>',
    b'<!DOCTYPE d [<!ENTITY e SYSTEM "file:///etc/passwd">]><Delete><Object><Key>&e;</Key></Object></Delete>',
    b'<!DOCTYPE d [<!ENTITY % p SYSTEM "http://127.0.0.1:1/x"> %p;]><Delete/>',
    b"<Delete><Object><Key>&undefined;</Key></Object></Delete>",
])
def test_parse_delete_request_refuses(body):
    with pytest.raises(errors.S3Error) as info:
        parse_delete_request(body)
    assert (info.value.code, info.value.status) == ("MalformedXML", 400)


def test_parse_delete_request_refuses_entity_expansion_fast():
    laughs = ['<!ENTITY l0 "ha">'] + [f'<!ENTITY l{i} "{("&l%d;" % (i - 1)) * 10}">' for i in range(1, 10)]
    body = (f"<!DOCTYPE d [{''.join(laughs)}]><Delete><Object><Key>&l9;</Key></Object></Delete>").encode()
    with pytest.raises(errors.S3Error):
        parse_delete_request(body)


# =================================================================================================
# copy sources
# =================================================================================================

@pytest.mark.parametrize("header, expected", [
    ("bucket/key", CopySource("bucket", "key")),
    ("/bucket/key", CopySource("bucket", "key")),
    ("bucket/dir/a%20b%2Bc+d", CopySource("bucket", "dir/a b+c+d")),
    ("bucket/%E2%82%AC/x", CopySource("bucket", "\u20ac/x")),
    ("bucket/k%3Fnot-a-query", CopySource("bucket", "k?not-a-query")),
    ("bucket/key?versionId=abc%2B1", CopySource("bucket", "key", "abc+1")),
    ("bucket/dir//double", CopySource("bucket", "dir//double")),
])
def test_parse_copy_source(header, expected):
    parsed = parse_copy_source(header)
    assert (parsed.bucket, parsed.key, parsed.version_id) == (expected.bucket, expected.key, expected.version_id)
    assert parsed.raw == header


@pytest.mark.parametrize("header, code", [
    ("", "InvalidArgument"),
    ("bucket", "InvalidArgument"),
    ("bucket/", "InvalidArgument"),
    ("/", "InvalidArgument"),
    ("//bucket/key", "InvalidArgument"),
    ("b/key", "InvalidArgument"),  # bucket name too short
    ("buc%6Bet/key", "InvalidArgument"),  # encoded bucket
    ("bucket/a/../b", "InvalidArgument"),
    ("bucket/a/%2e%2e/b", "InvalidArgument"),
    ("bucket/./b", "InvalidArgument"),
    ("bucket/a%00b", "InvalidArgument"),
    ("bucket/%FF", "InvalidArgument"),
    ("bucket/key?versionId=", "InvalidArgument"),
    ("bucket/key?versionId=1&versionId=2", "InvalidArgument"),
    ("bucket/key?partNumber=1", "InvalidArgument"),
    ("bucket/key?versionid=1", "InvalidArgument"),
    ("arn:aws:s3:us-east-1:123456789012:accesspoint/ap/object/key", "NotImplemented"),
])
def test_parse_copy_source_refuses(header, code):
    with pytest.raises(errors.S3Error) as info:
        parse_copy_source(header)
    assert info.value.code == code


def test_copy_source_header_is_rebuilt_canonically():
    source = parse_copy_source("bucket/dir/a b+c%7e%2f?versionId=v 1")
    assert source.key == "dir/a b+c~/"
    assert source.header_value() == "/bucket/dir/a%20b%2Bc~/?versionId=v%201"
    assert source.header_value("real-name") == "/real-name/dir/a%20b%2Bc~/?versionId=v%201"
    assert parse_copy_source(source.header_value()) == CopySource("bucket", "dir/a b+c~/", "v 1",
                                                                  source.header_value())


# =================================================================================================
# Decision, the decision caches
# =================================================================================================

def test_decision_validation():
    assert Decision(True, ttl=5, scope_prefix="a/").scope_prefix == "a/"
    assert not Decision(False)
    for bad in (dict(allowed=1), dict(allowed="yes"), dict(allowed=None)):
        with pytest.raises(TypeError):
            Decision(**bad)
    for ttl in (-1, float("nan"), True):
        with pytest.raises(ValueError):
            Decision(True, ttl=ttl)
    with pytest.raises(TypeError):
        Decision(True, scope_prefix=b"a/")


def access(name="alice", op="GetObject", bucket="b", key="a/1", prefix=None, method="GET", ip="10.0.0.1",
           id_method="sigv4", claims=None):
    return AccessRequest(Identity(name, id_method, claims=claims or {}), op, bucket, key, prefix, method, ip)


def test_decision_cache_key_has_every_input():
    base = access()
    variants = [access(name="bob"), access(id_method="jwt"), access(claims={"g": "x"}), access(op="HeadObject"),
                access(bucket="c"), access(key="a/2"), access(key=None, op="ListObjectsV2", prefix="a/"),
                access(method="HEAD"), access(ip="10.0.0.2"), access(claims={"g": "y"})]
    keys = {decision_cache_key(a) for a in [base, *variants]}
    assert len(keys) == len(variants) + 1
    assert decision_cache_key(access(claims={"a": 1, "b": [1, 2]})) == decision_cache_key(access(claims={"b": [1, 2], "a": 1}))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_scoped_decisions():
    clock = Clock()
    store = ScopedDecisions(clock=clock, max_scopes=3)
    assert store.add(access(key="a/1"), True, 10, "a/")
    assert store.lookup(access(key="a/2")) is True
    assert store.lookup(access(key="a/deep/er")) is True
    assert store.lookup(access(key="a")) is None
    assert store.lookup(access(key="ab/1")) is None
    assert store.lookup(access(key="b/1")) is None
    for other in (access(name="bob", key="a/2"), access(id_method="jwt", key="a/2"), access(claims={"g": 1}, key="a/2"),
                  access(op="DeleteObject", key="a/2"), access(bucket="c", key="a/2"), access(method="HEAD", key="a/2"),
                  access(ip="10.0.0.2", key="a/2"), access(key=None, op="ListObjectsV2", prefix="a/")):
        assert store.lookup(other) is None
    assert store.add(access(key="a/secret/1"), False, 10, "a/secret/")
    assert store.lookup(access(key="a/secret/2")) is False  # the deny wins
    assert store.lookup(access(key="a/public")) is True
    clock.now += 10
    assert store.lookup(access(key="a/2")) is None  # expired
    # Not stored: outside its own scope, no ttl, a request no scope can cover.
    assert not store.add(access(key="b/1"), True, 10, "a/")
    assert not store.add(access(key="a/1"), True, 0, "a/")
    assert not store.add(access(key=None, op="HeadBucket"), True, 10, "")
    assert store.lookup(access(key=None, op="HeadBucket")) is None
    # Listings are scoped by their prefix ("" or None: the whole bucket).
    listing = dict(op="ListObjectsV2", key=None)
    assert store.add(access(prefix="a/", **listing), True, 10, "a/")
    assert store.lookup(access(prefix="a/x", **listing)) is True
    assert store.lookup(access(prefix=None, **listing)) is None
    assert store.add(access(prefix=None, **listing), True, 10, "")
    assert store.lookup(access(prefix="", **listing)) is True
    # Bounded per group: the oldest scope goes.
    for prefix in ("p1/", "p2/", "p3/", "p4/"):
        store.add(access(key=prefix + "x"), True, 10, prefix)
    assert store.lookup(access(key="p1/y")) is None and store.lookup(access(key="p4/y")) is True


class FakePipeline:
    """What inproxy.decisions.is_allowed needs of a pipeline."""

    def __init__(self, authorizer, cache_decisions: float = 0.0, timeout: float = 5.0) -> None:
        self.authorizer = as_authorizer(authorizer)
        self.cache = SecretsCache()
        self.cache_decisions = cache_decisions
        self.authorize_timeout = timeout
        self.cache_namespace = object()
        self.scoped_decisions = ScopedDecisions()


async def test_is_allowed_caching_rules():
    answers = []

    def hook(a):
        answers.append(a)
        return {"ttl": Decision(True, ttl=30), "zero": Decision(True, ttl=0), "plain": True,
                "deny": Decision(False, ttl=30)}[a.key]

    pipeline = FakePipeline(hook)  # cache_decisions=0
    for key in ("ttl", "ttl", "zero", "zero", "plain", "plain", "deny", "deny"):
        await is_allowed(pipeline, access(key=key))
    assert [a.key for a in answers] == ["ttl", "zero", "zero", "plain", "plain", "deny"]
    assert await is_allowed(pipeline, access(key="deny")) is False

    answers.clear()
    pipeline = FakePipeline(hook, cache_decisions=60)
    for key in ("plain", "plain", "zero", "zero"):
        assert await is_allowed(pipeline, access(key=key)) is True
    assert [a.key for a in answers] == ["plain", "zero", "zero"]


@pytest.mark.parametrize("answer", [None, "yes", 1, object(), [True], "False"])
async def test_is_allowed_denies_anything_but_true(answer):
    pipeline = FakePipeline(lambda a: answer, cache_decisions=60)
    assert await is_allowed(pipeline, access()) is False


async def test_is_allowed_failures_deny_and_are_not_cached():
    calls = []

    async def hook(a):
        calls.append(a)
        if len(calls) == 1:
            raise RuntimeError("down")
        if len(calls) == 2:
            await asyncio.sleep(5)
        return True

    pipeline = FakePipeline(hook, cache_decisions=60, timeout=0.2)
    assert await is_allowed(pipeline, access()) is False  # raised
    assert await is_allowed(pipeline, access()) is False  # timed out
    assert await is_allowed(pipeline, access()) is True
    assert await is_allowed(pipeline, access()) is True  # cached now
    assert len(calls) == 3


async def test_is_allowed_uses_the_scope_and_ignores_a_scope_outside_the_request():
    calls = []

    def hook(a):
        calls.append(a.key)
        if a.key == "x/1":
            return Decision(True, ttl=60, scope_prefix="a/")  # not x/1's scope: answer kept, scope not
        return Decision(a.key.startswith("a/"), ttl=60, scope_prefix="a/" if a.key.startswith("a/") else None)

    pipeline = FakePipeline(hook)
    assert await is_allowed(pipeline, access(key="x/1")) is True
    assert await is_allowed(pipeline, access(key="a/9")) is True
    assert await is_allowed(pipeline, access(key="a/8")) is True
    assert await is_allowed(pipeline, access(key="b/8")) is False
    assert calls == ["x/1", "a/9", "b/8"]


_NAMES = st.sampled_from([("alice", "sigv4", None), ("alice", "jwt", None), ("bob", "sigv4", None),
                          ("alice", "sigv4", {"group": "a"}), ("alice", "sigv4", {"group": "b"})])
_KEYS = st.sampled_from(["a/1", "a/2", "a/x/3", "ab/1", "a", "b/1", "", "b/a/1"])


@st.composite
def _accesses(draw):
    name, id_method, claims = draw(_NAMES)
    op = draw(st.sampled_from(["GetObject", "DeleteObject", "ListObjectsV2", "HeadBucket"]))
    key = draw(_KEYS) if op in ("GetObject", "DeleteObject") else None
    prefix = draw(st.one_of(st.none(), _KEYS)) if op == "ListObjectsV2" else None
    return access(name=name, id_method=id_method, claims=claims, op=op, key=key, prefix=prefix,
                  bucket=draw(st.sampled_from(["b1", "b2"])), method=draw(st.sampled_from(["GET", "DELETE"])),
                  ip=draw(st.sampled_from(["10.0.0.1", "10.0.0.2"])))


def _segment(a: AccessRequest) -> str | None:
    """The first path segment (with its slash) of the key or listing prefix, when there is one."""
    path = a.key if a.key is not None else (a.prefix or "")
    return path.split("/", 1)[0] + "/" if "/" in path else None


def _truth(a: AccessRequest) -> bool:
    """A fixed, arbitrary policy that is constant over each first path segment."""
    material = repr((decision_cache_key(a)[:2], a.operation, a.bucket, a.method, a.source_ip,
                     _segment(a) or (a.key, a.prefix)))
    return hashlib.sha256(material.encode()).digest()[0] % 2 == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_accesses(), min_size=1, max_size=25), st.sampled_from([0.0, 60.0]))
def test_cached_and_scoped_decisions_never_serve_another_request(sequence, cache_decisions):
    """Whatever the order of requests, every answer is the policy's answer for that request."""

    def hook(a):
        scope = _segment(a)
        return Decision(_truth(a), ttl=60, scope_prefix=scope) if scope else _truth(a)

    async def run():
        pipeline = FakePipeline(hook, cache_decisions=cache_decisions)
        for a in sequence + sequence:
            assert await is_allowed(pipeline, a) is _truth(a), a

    asyncio.run(run())


# =================================================================================================
# PrefixPolicy
# =================================================================================================

def test_expand_actions():
    assert expand_actions("*") is None
    assert expand_actions("read") == READ_OPERATIONS
    assert expand_actions("write") == WRITE_OPERATIONS
    assert expand_actions(["read", "PutObject"]) == READ_OPERATIONS | {"PutObject"}
    assert expand_actions("GetBucketPolicy") == {"GetBucketPolicy"}
    assert {"PutBucketVersioning", "GetObjectTagging", "UploadPartCopy", "SelectObjectContent"} <= ALL_OPERATIONS
    for bad in ("GetObjects", "getobject", "admin", [], ["read", "Nope"]):
        with pytest.raises(ValueError):
            expand_actions(bad)
    with pytest.raises(TypeError):
        expand_actions([1])


def test_rule_validation():
    assert Rule("alice", "data").operations == READ_OPERATIONS
    assert Rule.coerce({"identity": "*", "bucket": "*", "actions": "*"}).operations is None
    for bad in (dict(identity="", bucket="b"), dict(identity=3, bucket="b"), dict(identity="a", bucket=""),
                dict(identity="a", bucket="b", prefix=None), dict(identity="a", bucket="b", actions="Fly")):
        with pytest.raises((TypeError, ValueError)):
            Rule(**bad)
    with pytest.raises(ValueError):
        PrefixPolicy([{"identity": "a", "bucket": "b", "prefixes": "x/"}])
    with pytest.raises(TypeError):
        PrefixPolicy(["alice"])


POLICY = PrefixPolicy([
    {"identity": "alice", "bucket": "data", "prefix": "team-a/", "actions": ["read", "PutObject", "DeleteObject"]},
    {"identity": "bob", "bucket": "data", "prefix": "team-b/", "actions": "*"},
    {"identity": "*", "bucket": "public", "actions": "read"},
    {"identity": lambda who: who.claims.get("role") == "admin", "bucket": "*", "actions": "*"},
    {"identity": "carol", "bucket": "data", "actions": ["GetBucketPolicy", "ListObjectsV2"]},
])


@pytest.mark.parametrize("who, op, bucket, key, prefix, allowed", [
    ("alice", "GetObject", "data", "team-a/x", None, True),
    ("alice", "HeadObject", "data", "team-a/sub/x", None, True),
    ("alice", "PutObject", "data", "team-a/x", None, True),
    ("alice", "CopyObject", "data", "team-a/x", None, False),  # not among alice's actions
    ("alice", "GetObject", "data", "team-b/x", None, False),
    ("alice", "GetObject", "data", "team-ab/x", None, False),
    ("alice", "GetObject", "data", "team-a", None, False),
    ("alice", "GetObject", "other", "team-a/x", None, False),
    ("alice", "ListObjectsV2", "data", None, "team-a/", True),
    ("alice", "ListObjectsV2", "data", None, "team-a/sub", True),
    ("alice", "ListObjects", "data", None, "team-a", False),
    ("alice", "ListObjectsV2", "data", None, None, False),
    ("alice", "ListObjectsV2", "data", None, "", False),
    ("alice", "ListObjectVersions", "data", None, "team-a/", True),
    ("alice", "ListMultipartUploads", "data", None, "team-a/", True),
    ("alice", "ListMultipartUploads", "data", None, None, False),
    ("alice", "HeadBucket", "data", None, None, True),
    ("alice", "GetBucketLocation", "data", None, None, True),
    ("alice", "ListBuckets", "data", None, None, True),
    ("alice", "ListBuckets", "other", None, None, False),
    ("alice", "DeleteObjects", "data", None, None, True),  # each key is checked as DeleteObject
    ("alice", "DeleteObject", "data", "team-b/x", None, False),
    ("alice", "DeleteBucket", "data", None, None, False),
    ("alice", "GetBucketPolicy", "data", None, None, False),
    ("bob", "DeleteObject", "data", "team-b/x", None, True),
    ("bob", "PutObjectTagging", "data", "team-b/x", None, True),
    ("bob", "DeleteBucket", "data", None, None, False),  # "*" under a prefix: no bucket-wide operation
    ("bob", "PutBucketPolicy", "data", None, None, False),
    ("bob", "DeleteObjects", "data", None, None, True),
    ("bob", "GetObject", "data", "team-a/x", None, False),
    ("dave", "GetObject", "public", "anything", None, True),
    ("dave", "ListObjectsV2", "public", None, None, True),
    ("dave", "PutObject", "public", "anything", None, False),
    ("dave", "DeleteObjects", "public", None, None, False),
    ("dave", "HeadBucket", "data", None, None, False),
    ("carol", "GetBucketPolicy", "data", None, None, True),
    ("carol", "ListObjectsV2", "data", None, None, True),
    ("carol", "GetObject", "data", "x", None, False),
])
async def test_prefix_policy(who, op, bucket, key, prefix, allowed):
    decision = await POLICY.authorize(AccessRequest(Identity(who), op, bucket, key, prefix))
    assert isinstance(decision, Decision) and decision.ttl is None and decision.scope_prefix is None
    assert decision.allowed is allowed


async def test_prefix_policy_callable_identity():
    admin = Identity("eve", "jwt", claims={"role": "admin"})
    assert (await POLICY.authorize(AccessRequest(admin, "DeleteBucket", "anything"))).allowed
    assert not (await POLICY.authorize(AccessRequest(Identity("eve", "jwt", claims={"role": "user"}),
                                                     "GetObject", "data", "team-a/x"))).allowed
    truthy = PrefixPolicy([Rule(identity=lambda who: "yes", bucket="*", actions="*")])
    assert not (await truthy.authorize(AccessRequest(admin, "GetObject", "b", "k"))).allowed  # True only


# =================================================================================================
# presigned URLs (units)
# =================================================================================================

class StubProxy:
    endpoint_url = "http://127.0.0.1:9999"

    def __init__(self) -> None:
        self.issued = []

    def issue_credentials(self, identity, ttl=3600.0):
        self.issued.append((identity, ttl))
        return Credentials("ASIPSTUB", "stub-secret", "stub-token", expires_at=0)


def test_presign_url_shape():
    proxy = StubProxy()
    url = presign_url(proxy, "alice", "GetObject", "bucket", "dir/a b+c\u20ac~", expires_in=600,
                      params={"response-content-type": "text/plain"})
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("http", "127.0.0.1:9999")
    assert parts.path == "/bucket/dir/a%20b%2Bc%E2%82%AC~"
    query = parse_qs(parts.query)
    assert query["X-Amz-Expires"] == ["600"] and query["X-Amz-Security-Token"] == ["stub-token"]
    assert query["X-Amz-Credential"][0].startswith("ASIPSTUB/")
    assert query["response-content-type"] == ["text/plain"]
    assert proxy.issued == [("alice", 660)]
    url = presign_url(proxy, Credentials("AKSTATIC", "s"), "PutObject", "bucket", "k", expires_in=5)
    assert "X-Amz-Security-Token" not in url and "AKSTATIC%2F" in url and len(proxy.issued) == 1


@pytest.mark.parametrize("kwargs", [
    dict(operation="ListObjectsV2"), dict(operation="CopyObject"), dict(operation="getobject"),
    dict(expires_in=0), dict(expires_in=604801), dict(expires_in=1.5), dict(expires_in=True),
    dict(key=""), dict(key="a/../b"), dict(key="./b"), dict(bucket=""), dict(bucket="a/b"),
    dict(params={"X-Amz-Expires": "9"}), dict(params={"x-amz-date": "1"}),
])
def test_presign_url_refuses(kwargs):
    arguments = dict(operation="GetObject", bucket="bucket", key="k", expires_in=60)
    arguments.update(kwargs)
    with pytest.raises(ValueError):
        presign_url(StubProxy(), "alice", arguments.pop("operation"), arguments.pop("bucket"),
                    arguments.pop("key"), **arguments)


# =================================================================================================
# end to end (SeaweedFS behind a recording relay)
# =================================================================================================

@pytest.fixture
def bucket(direct):
    import uuid

    name = f"az-{uuid.uuid4().hex[:12]}"
    direct.create_bucket(Bucket=name)
    return name


class Upstream(ProxyHooks):
    """Records the upstream request headers (before signing) of every forwarded request."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()

    async def upstream_request_filter(self, ctx):
        with self._lock:
            self.headers.append(dict(ctx.upstream.headers))


def test_delete_objects_allowed_deletes_and_adds_content_md5(seaweed, relay, direct, bucket):
    keys = [f"del/{i}" for i in range(5)]
    for key in keys:
        put_direct(direct, bucket, key)
    hooks = Upstream()
    authorizer = Recorder(allow_all)
    with running(seaweed, relay, authorizer=authorizer, hooks=hooks) as proxy:
        answer = client(proxy).delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})
    assert sorted(d["Key"] for d in answer["Deleted"]) == keys
    assert not any(exists(direct, bucket, key) for key in keys)
    sent = hooks.headers[-1]
    assert "content-md5" in sent  # botocore >= 1.36 sends a CRC32 checksum, not Content-MD5
    assert sorted(op for _, op, *_ in authorizer.seen()) == ["DeleteObject"] * 5 + ["DeleteObjects"]


def _delete_objects_raw(proxy, bucket: str, body: bytes, *, headers: dict | None = None,
                        payload_hash: str | None = None, content: bytes | None = None):
    path, query = f"/{bucket}", "delete="
    signed_headers = signed("POST", host_of(proxy), path, query, body, headers=headers, payload_hash=payload_hash)
    return raw_request(proxy.port, "POST", f"{path}?{query}", signed_headers, body if content is None else content)


def test_delete_objects_forwards_exactly_the_authorized_body(seaweed, relay, direct, bucket):
    """A hand-made body (no Content-MD5) is forwarded byte for byte with its MD5 added."""
    put_direct(direct, bucket, "raw/1")
    body = delete_xml("raw/1", quiet=True)
    hooks = Upstream()
    with running(seaweed, relay, authorizer=allow_all, hooks=hooks) as proxy:
        with relay.watch() as upstream:
            response = _delete_objects_raw(proxy, bucket, body)
    assert response.status == 200, response
    assert upstream == [("POST", f"/{bucket}?delete=")]
    assert hooks.headers[-1]["content-md5"] == content_md5(body)
    assert body in relay.data()
    assert not exists(direct, bucket, "raw/1")


def test_delete_objects_aws_chunked_body(seaweed, relay, direct, bucket):
    put_direct(direct, bucket, "chunked/1")
    response, _ = _chunked_delete(seaweed, relay, bucket, ["chunked/1"], allow_all)
    assert response.status == 200, response
    assert not exists(direct, bucket, "chunked/1")


def _chunked_delete(seaweed, relay, bucket, keys, authorizer):
    body = delete_xml(*keys)
    checksum = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    encoded = (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n"
               + f"x-amz-checksum-crc32:{checksum}\r\n\r\n".encode())
    recorder = Recorder(authorizer)
    with running(seaweed, relay, authorizer=recorder) as proxy:
        headers = {"content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(body)),
                   "x-amz-trailer": "x-amz-checksum-crc32"}
        response = _delete_objects_raw(proxy, bucket, encoded, headers=headers,
                                       payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    return response, recorder


def test_delete_objects_aws_chunked_body_is_authorized_key_by_key(seaweed, relay, direct, bucket):
    for key in ("chunked/ok", "chunked/no"):
        put_direct(direct, bucket, key)
    response, recorder = _chunked_delete(seaweed, relay, bucket, ["chunked/ok", "chunked/no"],
                                         lambda a: a.key != "chunked/no")
    assert (response.status, response.code) == (403, "AccessDenied")
    assert ("alice", "DeleteObject", bucket, "chunked/no", None) in recorder.seen()
    assert exists(direct, bucket, "chunked/ok") and exists(direct, bucket, "chunked/no")


def test_delete_objects_refusals(seaweed, relay, direct, bucket):
    put_direct(direct, bucket, "keep/1")
    authorizer = Recorder(allow_all)
    with running(seaweed, relay, authorizer=authorizer) as proxy:
        with relay.watch() as upstream:
            cases = {
                "doctype": (_delete_objects_raw(proxy, bucket, b'<!DOCTYPE d [<!ENTITY e "keep/1">]>'
                                                b"<Delete><Object><Key>&e;</Key></Object></Delete>"),
                            (400, "MalformedXML")),
                "1001 keys": (_delete_objects_raw(proxy, bucket, delete_xml(*[f"k{i}" for i in range(1001)])),
                              (400, "MalformedXML")),
                "dot segment": (_delete_objects_raw(proxy, bucket, delete_xml("x/../keep/1")), (400, "InvalidArgument")),
                "wrong md5": (_delete_objects_raw(proxy, bucket, delete_xml("keep/1"),
                                                  headers={"content-md5": content_md5(b"other")}), (400, "BadDigest")),
                "bad md5": (_delete_objects_raw(proxy, bucket, delete_xml("keep/1"),
                                                headers={"content-md5": "nope"}), (400, "InvalidDigest")),
                "other body": (_delete_objects_raw(proxy, bucket, delete_xml("keep/1"),
                                                   content=delete_xml("keep/2")), (400, "XAmzContentSHA256Mismatch")),
                "empty": (_delete_objects_raw(proxy, bucket, b""), (400, "MalformedXML")),
            }
            big = b" " * (MAX_DELETE_BODY + 1)
            headers = signed("POST", host_of(proxy), f"/{bucket}", "delete=", big)
            too_big = raw_request(proxy.port, "POST", f"/{bucket}?delete=", headers, big)
        for name, (response, expected) in cases.items():
            assert (response.status, response.code) == expected, name
        assert (too_big.status, too_big.code) == (400, "EntityTooLarge")
        assert upstream == []
    assert exists(direct, bucket, "keep/1")


def test_delete_objects_with_expect_100_continue(seaweed, relay, direct, bucket):
    """The main check passes, so 100 Continue is sent once to read the body; a denied key
    then refuses the request."""
    from test_must_never import _read_body, _read_head

    put_direct(direct, bucket, "expect/1")
    body = delete_xml("expect/1")
    with running(seaweed, relay, authorizer=lambda a: a.key != "expect/1") as proxy:
        headers = signed("POST", host_of(proxy), f"/{bucket}", "delete=", body)
        lines = [f"POST /{bucket}?delete= HTTP/1.1", *[f"{k}: {v}" for k, v in headers.items()],
                 f"content-length: {len(body)}", "expect: 100-continue", "connection: close"]
        import socket

        with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            buffer = bytearray()
            first, _ = _read_head(sock, buffer)
            sock.sendall(body)
            second, response_headers = _read_head(sock, buffer)
            answer = _read_body(sock, buffer, response_headers, "POST")
    assert (first, second) == (100, 403)
    assert b"<Code>AccessDenied</Code>" in answer
    assert exists(direct, bucket, "expect/1")


def test_delete_objects_refused_when_the_pipeline_cannot_forward_the_body(seaweed, relay, direct, bucket):
    put_direct(direct, bucket, "interim/1")
    with running(seaweed, relay, authorizer=allow_all) as proxy:
        proxy.pipeline.honours_authorization_state = False
        with relay.watch() as upstream, pytest.raises(ClientError) as info:
            client(proxy).delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "interim/1"}]})
    assert error_code(info.value) == "NotImplemented"
    assert upstream == []
    assert exists(direct, bucket, "interim/1")


def test_copy_object_and_upload_part_copy_authorize_the_source(seaweed, relay, direct, bucket):
    put_direct(direct, bucket, "src/a b+c", b"x" * (5 * 1024 * 1024))
    authorizer = Recorder(allow_all)
    with running(seaweed, relay, authorizer=authorizer) as proxy:
        c = client(proxy)
        c.copy_object(Bucket=bucket, Key="dst/copy", CopySource={"Bucket": bucket, "Key": "src/a b+c"})
        upload = c.create_multipart_upload(Bucket=bucket, Key="dst/parts")
        part = c.upload_part_copy(Bucket=bucket, Key="dst/parts", UploadId=upload["UploadId"], PartNumber=1,
                                  CopySource={"Bucket": bucket, "Key": "src/a b+c"})
        c.complete_multipart_upload(Bucket=bucket, Key="dst/parts", UploadId=upload["UploadId"], MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]})
    seen = authorizer.seen()
    assert seen[:2] == [("alice", "CopyObject", bucket, "dst/copy", None), ("alice", "GetObject", bucket, "src/a b+c", None)]
    assert ("alice", "UploadPartCopy", bucket, "dst/parts", None) in seen
    assert seen.count(("alice", "GetObject", bucket, "src/a b+c", None)) == 2
    assert direct.get_object(Bucket=bucket, Key="dst/copy")["ContentLength"] == 5 * 1024 * 1024
    assert direct.get_object(Bucket=bucket, Key="dst/parts")["ContentLength"] == 5 * 1024 * 1024


def test_copy_across_backends_is_refused(seaweed, relay, direct, bucket):
    put_direct(direct, bucket, "src/x")
    first, second = relay.backend(seaweed), relay.backend(seaweed)  # same server, two backends
    with running(seaweed, relay, authorizer=allow_all, backends={bucket: first, "*": second}) as proxy:
        c = client(proxy)
        with relay.watch() as upstream:
            with pytest.raises(ClientError) as info:
                c.copy_object(Bucket="elsewhere-bucket", Key="x", CopySource={"Bucket": bucket, "Key": "src/x"})
            assert error_code(info.value) == "NotImplemented"
            with pytest.raises(ClientError) as info:
                c.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": "elsewhere-bucket", "Key": "src/x"})
            assert error_code(info.value) == "NotImplemented"
        assert upstream == []


def test_copy_that_needs_a_header_rewrite_is_refused_until_the_pipeline_does_it(seaweed, relay, direct, bucket):
    put_direct(direct, bucket, "src/x")
    renamed = relay.backend(seaweed, bucket=bucket)
    with running(seaweed, relay, authorizer=allow_all, backends={"alias": renamed, "*": relay.backend(seaweed)}) as proxy:
        proxy.pipeline.honours_authorization_state = False
        c = client(proxy)
        with relay.watch() as upstream, pytest.raises(ClientError) as info:
            c.copy_object(Bucket="alias", Key="dst/x", CopySource={"Bucket": "alias", "Key": "src/x"})
        assert error_code(info.value) == "NotImplemented"
        path = "/alias/dst/y"
        response = raw_request(proxy.port, "PUT", path, signed("PUT", host_of(proxy), path, headers={
            "x-amz-copy-source": "alias/src/x+y"}))
        assert (response.status, response.code) == (501, "NotImplemented")
        # A '+' must be re-encoded (a backend may read it as a space): not without the rewrite.
        path = f"/{bucket}/dst/z"
        response = raw_request(proxy.port, "PUT", path, signed("PUT", host_of(proxy), path, headers={
            "x-amz-copy-source": f"{bucket}/src/x+y"}))
        assert (response.status, response.code) == (501, "NotImplemented")
        assert upstream == []
    assert not exists(direct, bucket, "dst/x") and not exists(direct, bucket, "dst/z")


def test_copy_within_a_renamed_bucket(seaweed, relay, direct, bucket):
    put_direct(direct, bucket, "src/x", b"renamed source")
    renamed = relay.backend(seaweed, bucket=bucket)
    with running(seaweed, relay, authorizer=allow_all, backends={"alias": renamed}) as proxy:
        client(proxy).copy_object(Bucket="alias", Key="dst/x", CopySource={"Bucket": "alias", "Key": "src/x"})
    assert direct.get_object(Bucket=bucket, Key="dst/x")["Body"].read() == b"renamed source"
    assert f"x-amz-copy-source: /{bucket}/src/x".encode() in relay.data().lower()


def test_copy_source_is_sent_as_authorized(seaweed, relay, direct, bucket):
    """A raw '+' in the header is the key character '+' (what was authorized), whatever the
    backend would make of it."""
    put_direct(direct, bucket, "src/x+y", b"plus")
    put_direct(direct, bucket, "src/x y", b"space")
    authorizer = Recorder(allow_all)
    with running(seaweed, relay, authorizer=authorizer) as proxy:
        path = f"/{bucket}/dst/plus"
        response = raw_request(proxy.port, "PUT", path, signed("PUT", host_of(proxy), path, headers={
            "x-amz-copy-source": f"{bucket}/src/x+y"}))
    assert response.status == 200, response
    assert ("alice", "GetObject", bucket, "src/x+y", None) in authorizer.seen()
    assert direct.get_object(Bucket=bucket, Key="dst/plus")["Body"].read() == b"plus"


def test_copy_source_on_another_operation_is_refused(seaweed, relay, direct, bucket):
    put_direct(direct, bucket, "tagged")
    with running(seaweed, relay, authorizer=allow_all) as proxy:
        path = f"/{bucket}/tagged"
        body = b'<Tagging><TagSet><Tag><Key>k</Key><Value>v</Value></Tag></TagSet></Tagging>'
        with relay.watch() as upstream:
            response = raw_request(proxy.port, "PUT", f"{path}?tagging", signed(
                "PUT", host_of(proxy), path, "tagging", body, headers={"x-amz-copy-source": f"{bucket}/secret"}), body)
            twice = raw_request(proxy.port, "PUT", f"/{bucket}/dst", _two_copy_sources(proxy, bucket))
        assert (response.status, response.code) == (400, "InvalidRequest")
        assert (twice.status, twice.code) == (400, "InvalidArgument")
        assert upstream == []


def _two_copy_sources(proxy, bucket: str) -> dict:
    """Two x-amz-copy-source lines, signed as the proxy reads them (joined with ',')."""
    first, second = f"{bucket}/tagged", f"{bucket}/other"
    headers = signed("PUT", host_of(proxy), f"/{bucket}/dst", headers={"x-amz-copy-source": f"{first},{second}"})
    # raw_request writes a dict: the second line's name differs only in case.
    headers["x-amz-copy-source"], headers["X-Amz-Copy-Source"] = first, second
    return headers


def test_listing_prefix_given_twice_is_refused(seaweed, relay, bucket):
    with running(seaweed, relay, authorizer=lambda a: (a.prefix or "").startswith("ok/")) as proxy:
        path, query = f"/{bucket}", "list-type=2&prefix=ok%2F&prefix="
        with relay.watch() as upstream:
            response = raw_request(proxy.port, "GET", f"{path}?{query}", signed("GET", host_of(proxy), path, query))
        assert (response.status, response.code) == (400, "InvalidArgument")
        assert upstream == []


def test_prefix_policy_list_buckets(seaweed, relay, direct, bucket):
    other = bucket + "-o"
    direct.create_bucket(Bucket=other)
    backends = {bucket: relay.backend(seaweed), other: relay.backend(seaweed)}
    policy = PrefixPolicy([{"identity": "alice", "bucket": bucket, "prefix": "team-a/", "actions": "read"}])
    with running(seaweed, relay, authorizer=policy, backends=backends) as proxy:
        assert [b["Name"] for b in client(proxy).list_buckets()["Buckets"]] == [bucket]
        assert client(proxy, BOB_KEY, BOB_SECRET).list_buckets()["Buckets"] == []


def test_list_buckets_does_not_cache_a_failing_authorizer(seaweed, relay, bucket):
    calls = []

    def flaky(a):
        calls.append(a)
        if len(calls) == 1:
            raise RuntimeError("down")
        return True

    with running(seaweed, relay, authorizer=flaky, backends={bucket: relay.backend(seaweed)},
                 cache_decisions=60) as proxy:
        assert client(proxy).list_buckets()["Buckets"] == []
        assert [b["Name"] for b in client(proxy).list_buckets()["Buckets"]] == [bucket]


def test_list_buckets_honours_a_decision_ttl(seaweed, relay, bucket):
    authorizer = Recorder(lambda a: Decision(True, ttl=60))
    with running(seaweed, relay, authorizer=authorizer, backends={bucket: relay.backend(seaweed)}) as proxy:
        for _ in range(3):
            assert [b["Name"] for b in client(proxy).list_buckets()["Buckets"]] == [bucket]
    assert authorizer.count() == 1


@pytest.mark.parametrize("signer", ["identity", "static"])
def test_presigned_urls_round_trip(seaweed, relay, direct, bucket, signer):
    key = "pre/a b+c\u20ac%~"
    authorizer = Recorder(lambda a: a.identity.name == "alice")
    with running(seaweed, relay, authorizer=authorizer) as proxy:
        who = Identity("alice", "issued") if signer == "identity" else Credentials(ALICE_KEY, ALICE_SECRET)

        def url(op, **kwargs):
            return presign_url(proxy, who, op, bucket, key, expires_in=300, **kwargs)

        assert requests.put(url("PutObject"), data=b"presigned body", timeout=20).status_code == 200
        assert direct.get_object(Bucket=bucket, Key=key)["Body"].read() == b"presigned body"
        got = requests.get(url("GetObject", params={"response-content-type": "text/x-test"}), timeout=20)
        assert (got.status_code, got.content, got.headers["content-type"]) == (200, b"presigned body", "text/x-test")
        head = requests.head(url("HeadObject"), timeout=20)
        assert head.status_code == 200 and head.headers["content-length"] == "14"
        assert requests.delete(url("DeleteObject"), timeout=20).status_code == 204
        bob = presign_url(proxy, "bob", "GetObject", bucket, key, expires_in=300)
        assert requests.get(bob, timeout=20).status_code == 403
    assert not exists(direct, bucket, key)
    assert [op for _, op, *_ in authorizer.seen()] == ["PutObject", "GetObject", "HeadObject", "DeleteObject",
                                                       "GetObject"]
