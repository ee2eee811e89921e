"""Unit tests: parsing a raw request line into an S3 request, and naming its operation.

What the authorizer is asked depends on these: a wrong bucket, key or operation name is
an authorization bug, so the table below is meant to be exhaustive for what S3 clients send.
"""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from inproxy import errors
from inproxy.s3.operations import READ_OPERATIONS, classify
from inproxy.s3.request import _decode_key, parse_s3_request
from inproxy.s3.sigv4 import canonical_query_pairs


def parse(method: str, target: str, *, host: str = "127.0.0.1:8000", headers=None, base_domains=()):
    path, _, query = target.partition("?")
    return parse_s3_request(method, path, query, host, CIMultiDict(headers or {}), base_domains)


# -- bucket and key --------------------------------------------------------------------------


@pytest.mark.parametrize("target, bucket, key, raw_key", [
    ("/", None, None, None),
    ("/bkt", "bkt", None, None),
    ("/bkt/", "bkt", None, None),
    ("/bkt/k", "bkt", "k", "k"),
    ("/bkt/dir/sub/k.txt", "bkt", "dir/sub/k.txt", "dir/sub/k.txt"),
    ("/bkt/a%20b", "bkt", "a b", "a%20b"),
    ("/bkt/a+b", "bkt", "a+b", "a+b"),  # '+' in a path is a plus, never a space
    ("/bkt/a%2Bb", "bkt", "a+b", "a%2Bb"),
    ("/bkt/100%25", "bkt", "100%", "100%25"),
    ("/bkt/a%2Fb", "bkt", "a/b", "a%2Fb"),
    ("/bkt/%C3%BCn%C3%AF", "bkt", "ünï", "%C3%BCn%C3%AF"),
    ("/bkt/a=b:c~d", "bkt", "a=b:c~d", "a=b:c~d"),
    ("/bkt/dir/", "bkt", "dir/", "dir/"),  # a "folder" object
    ("/bkt//lead", "bkt", "/lead", "/lead"),
    ("/bkt/a//b", "bkt", "a//b", "a//b"),
    ("/bkt//", "bkt", "/", "/"),
    ("/bkt/dots..x", "bkt", "dots..x", "dots..x"),
    ("/bkt/.hidden", "bkt", ".hidden", ".hidden"),
    ("/Legacy_Bucket/k", "Legacy_Bucket", "k", "k"),
])
def test_path_style_bucket_and_key(target, bucket, key, raw_key):
    s3 = parse("GET", target)
    assert (s3.bucket, s3.key, s3.raw_key, s3.addressing) == (bucket, key, raw_key, "path")
    assert s3.raw_path == target.partition("?")[0]


@pytest.mark.parametrize("target", [
    "/bkt/a/../b", "/bkt/../other/k", "/bkt/./k", "/bkt/a/.", "/bkt/a/..", "/bkt/..",
    "/bkt/%2e%2e/other", "/bkt/a/%2E", "/bkt/a%2F..%2Fb",
])
def test_dot_segments_are_refused(target):
    with pytest.raises(errors.InvalidURI):
        parse("GET", target)


@pytest.mark.parametrize("target", ["/bkt/%ff", "/bkt/a%C3", "/bkt/%00", "/bkt/a%00b"])
def test_undecodable_or_nul_keys_are_refused(target):
    with pytest.raises(errors.InvalidURI):
        parse("GET", target)


@pytest.mark.parametrize("target", ["/b%2Fx/k", "/b%20x", "/-bkt/k", "/./k", "/../k", "/b", "//k",
                                    "/bkt name/k", "/" + "b" * 256])
def test_bad_bucket_names(target):
    with pytest.raises(errors.InvalidBucketName):
        parse("GET", target)


def test_request_target_must_be_a_path():
    with pytest.raises(errors.InvalidURI):
        parse("GET", "http://example.com/bkt/k")
    with pytest.raises(errors.InvalidURI):
        parse("GET", "*")


@pytest.mark.parametrize("method", ["OPTIONS", "PATCH", "TRACE", "CONNECT", "PROPFIND", "get"])
def test_methods_s3_does_not_have(method):
    with pytest.raises(errors.MethodNotAllowed):
        parse(method, "/bkt/k")


# -- virtual-host style ------------------------------------------------------------------------


@pytest.mark.parametrize("host, target, bucket, key", [
    ("bkt.localhost:8000", "/k", "bkt", "k"),
    ("bkt.localhost", "/dir/a%20b", "bkt", "dir/a b"),
    ("bkt.localhost:8000", "/", "bkt", None),
    ("bkt.localhost:8000", "", "bkt", None),
    ("bkt.localhost.:8000", "/k", "bkt", "k"),  # a fully qualified name
    ("BKT.LocalHost:8000", "/k", "bkt", "k"),  # host names are case-insensitive
    ("my.dotted.bucket.localhost", "/k", "my.dotted.bucket", "k"),
    ("bkt.s3.example.com", "//k", "bkt", "/k"),
    ("bkt.s3.example.com", "/bkt/k", "bkt", "bkt/k"),  # the path is all key
])
def test_virtual_host_style(host, target, bucket, key):
    s3 = parse("GET", target or "/", host=host, base_domains=["localhost", "s3.example.com"])
    assert (s3.bucket, s3.key, s3.addressing) == (bucket, key, "virtual")


@pytest.mark.parametrize("host", ["localhost:8000", "localhost", "127.0.0.1:8000", "[::1]:8000",
                                  "notlocalhost:8000", "bkt.localhost.evil.com", "s3.example.com",
                                  "example.com"])
def test_hosts_that_are_not_virtual(host):
    s3 = parse("GET", "/bkt/k", host=host, base_domains=["localhost", "s3.example.com"])
    assert (s3.bucket, s3.key, s3.addressing) == ("bkt", "k", "path")


def test_virtual_host_without_base_domains_is_path_style():
    s3 = parse("GET", "/other/k", host="bkt.localhost:8000")
    assert (s3.bucket, s3.key, s3.addressing) == ("other", "k", "path")


def test_virtual_host_bucket_name_is_checked():
    with pytest.raises(errors.InvalidBucketName):
        parse("GET", "/k", host="..localhost", base_domains=["localhost"])
    with pytest.raises(errors.InvalidBucketName):
        parse("GET", "/k", host="b%2fx.localhost", base_domains=["localhost"])


def test_virtual_host_dot_segments_are_refused():
    with pytest.raises(errors.InvalidURI):
        parse("GET", "/../other/k", host="bkt.localhost", base_domains=["localhost"])


# -- query -----------------------------------------------------------------------------------


def test_query_is_decoded_in_order_and_plus_is_a_space():
    # '+' in a query means a space (form encoding, as S3 reads it and polars sends it);
    # a literal plus arrives as %2B.  The upstream query is re-encoded from these values,
    # so the backend acts on exactly what the authorizer saw.
    s3 = parse("GET", "/bkt?list-type=2&prefix=a%20b+c%2B&prefix=second&start-after=%C3%BC&fetch-owner")
    assert s3.query == (("list-type", "2"), ("prefix", "a b c+"), ("prefix", "second"),
                        ("start-after", "ü"), ("fetch-owner", ""))
    assert s3.params["prefix"] == "a b c+"  # the first value
    assert s3.prefix == "a b c+"
    assert s3.raw_query == "list-type=2&prefix=a%20b+c%2B&prefix=second&start-after=%C3%BC&fetch-owner"


def test_prefix_only_for_listings():
    assert parse("GET", "/bkt?prefix=p/").prefix == "p/"
    assert parse("GET", "/bkt?versions&prefix=p/").prefix == "p/"
    assert parse("GET", "/bkt?uploads&prefix=p/").prefix == "p/"
    assert parse("GET", "/bkt/k?prefix=p/").prefix is None
    assert parse("PUT", "/bkt?prefix=p/").prefix is None


def test_resource():
    assert parse("GET", "/").resource == "/"
    assert parse("GET", "/bkt").resource == "/bkt"
    assert parse("GET", "/bkt/a%20b").resource == "/bkt/a b"


# -- operation names ---------------------------------------------------------------------------

COPY = {"x-amz-copy-source": "/src/k"}

OPERATIONS = [
    # service
    ("GET", "/", None, "ListBuckets"),
    ("HEAD", "/", None, "ListBuckets"),
    ("GET", "/?prefix=a&max-buckets=10", None, "ListBuckets"),
    ("PUT", "/", None, ""),
    ("POST", "/", None, ""),
    ("DELETE", "/", None, ""),
    # buckets
    ("PUT", "/bkt", None, "CreateBucket"),
    ("PUT", "/bkt/", None, "CreateBucket"),
    ("DELETE", "/bkt", None, "DeleteBucket"),
    ("HEAD", "/bkt", None, "HeadBucket"),
    ("HEAD", "/bkt?acl", None, "HeadBucket"),
    ("GET", "/bkt", None, "ListObjects"),
    ("GET", "/bkt?prefix=a&delimiter=/&marker=m&max-keys=2&encoding-type=url", None, "ListObjects"),
    ("GET", "/bkt?list-type=2", None, "ListObjectsV2"),
    ("GET", "/bkt?list-type=2&continuation-token=t&start-after=s&fetch-owner=true", None, "ListObjectsV2"),
    ("GET", "/bkt?list-type=1", None, "ListObjects"),
    ("GET", "/bkt?prefix=acl", None, "ListObjects"),  # a value is not a subresource
    ("GET", "/bkt?prefix=uploads&delimiter=versions", None, "ListObjects"),
    ("GET", "/bkt?versions", None, "ListObjectVersions"),
    ("GET", "/bkt?versions&prefix=p&key-marker=k&version-id-marker=v", None, "ListObjectVersions"),
    ("GET", "/bkt?uploads", None, "ListMultipartUploads"),
    ("GET", "/bkt?uploads&prefix=p&key-marker=k&upload-id-marker=u", None, "ListMultipartUploads"),
    ("GET", "/bkt?location", None, "GetBucketLocation"),
    ("POST", "/bkt?delete", None, "DeleteObjects"),
    ("POST", "/bkt?delete=", None, "DeleteObjects"),
    ("POST", "/bkt", None, ""),  # browser form uploads are not supported
    ("POST", "/bkt?uploads", None, ""),
    ("GET", "/bkt?acl", None, "GetBucketAcl"),
    ("PUT", "/bkt?acl", None, "PutBucketAcl"),
    ("GET", "/bkt?policy", None, "GetBucketPolicy"),
    ("PUT", "/bkt?policy", None, "PutBucketPolicy"),
    ("DELETE", "/bkt?policy", None, "DeleteBucketPolicy"),
    ("GET", "/bkt?policyStatus", None, "GetBucketPolicyStatus"),
    ("GET", "/bkt?cors", None, "GetBucketCors"),
    ("PUT", "/bkt?cors", None, "PutBucketCors"),
    ("DELETE", "/bkt?cors", None, "DeleteBucketCors"),
    ("GET", "/bkt?tagging", None, "GetBucketTagging"),
    ("PUT", "/bkt?tagging", None, "PutBucketTagging"),
    ("DELETE", "/bkt?tagging", None, "DeleteBucketTagging"),
    ("GET", "/bkt?versioning", None, "GetBucketVersioning"),
    ("PUT", "/bkt?versioning", None, "PutBucketVersioning"),
    ("GET", "/bkt?lifecycle", None, "GetBucketLifecycleConfiguration"),
    ("PUT", "/bkt?lifecycle", None, "PutBucketLifecycleConfiguration"),
    ("GET", "/bkt?encryption", None, "GetBucketEncryption"),
    ("GET", "/bkt?website", None, "GetBucketWebsite"),
    ("GET", "/bkt?logging", None, "GetBucketLogging"),
    ("GET", "/bkt?notification", None, "GetBucketNotificationConfiguration"),
    ("GET", "/bkt?replication", None, "GetBucketReplication"),
    ("GET", "/bkt?requestPayment", None, "GetBucketRequestPayment"),
    ("GET", "/bkt?accelerate", None, "GetBucketAccelerateConfiguration"),
    ("GET", "/bkt?ownershipControls", None, "GetBucketOwnershipControls"),
    ("GET", "/bkt?object-lock", None, "GetBucketObjectLockConfiguration"),
    ("GET", "/bkt?publicAccessBlock", None, "GetBucketPublicAccessBlock"),
    ("GET", "/bkt?analytics&id=a", None, "GetBucketAnalyticsConfiguration"),
    ("GET", "/bkt?metrics&id=m", None, "GetBucketMetricsConfiguration"),
    ("GET", "/bkt?inventory&id=i", None, "GetBucketInventoryConfiguration"),
    ("GET", "/bkt?intelligent-tiering&id=t", None, "GetBucketIntelligentTieringConfiguration"),
    # S3 Express CreateSession hands out credentials: never a listing
    ("GET", "/bkt?session", None, "CreateSession"),
    # objects
    ("GET", "/bkt/k", None, "GetObject"),
    ("GET", "/bkt/k?versionId=v", None, "GetObject"),
    ("GET", "/bkt/k?partNumber=2", None, "GetObject"),
    ("GET", "/bkt/k?response-content-type=text/plain&response-content-disposition=a", None, "GetObject"),
    ("GET", "/bkt/k?x-id=GetObject", None, "GetObject"),
    ("HEAD", "/bkt/k", None, "HeadObject"),
    ("HEAD", "/bkt/k?partNumber=1&versionId=v", None, "HeadObject"),
    ("HEAD", "/bkt/k?uploadId=u", None, "HeadObject"),
    ("PUT", "/bkt/k", None, "PutObject"),
    ("PUT", "/bkt/dir/", None, "PutObject"),
    ("PUT", "/bkt/k", COPY, "CopyObject"),
    ("PUT", "/bkt/k", {"X-Amz-Copy-Source": "src/k"}, "CopyObject"),
    ("DELETE", "/bkt/k", None, "DeleteObject"),
    ("DELETE", "/bkt/k?versionId=v", None, "DeleteObject"),
    ("POST", "/bkt/k?uploads", None, "CreateMultipartUpload"),
    ("POST", "/bkt/k?uploads=", None, "CreateMultipartUpload"),
    ("PUT", "/bkt/k?partNumber=1&uploadId=u", None, "UploadPart"),
    ("PUT", "/bkt/k?uploadId=u&partNumber=1", None, "UploadPart"),
    ("PUT", "/bkt/k?partNumber=1&uploadId=u", COPY, "UploadPartCopy"),
    ("PUT", "/bkt/k?uploadId=u", None, ""),  # a part needs its number
    ("POST", "/bkt/k?uploadId=u", None, "CompleteMultipartUpload"),
    ("GET", "/bkt/k?uploadId=u", None, "ListParts"),
    ("GET", "/bkt/k?uploadId=u&max-parts=2&part-number-marker=1", None, "ListParts"),
    ("DELETE", "/bkt/k?uploadId=u", None, "AbortMultipartUpload"),
    ("POST", "/bkt/k", None, ""),
    ("POST", "/bkt/k?restore", None, "RestoreObject"),
    ("POST", "/bkt/k?select&select-type=2", None, "SelectObjectContent"),
    ("GET", "/bkt/k?tagging", None, "GetObjectTagging"),
    ("PUT", "/bkt/k?tagging", None, "PutObjectTagging"),
    ("DELETE", "/bkt/k?tagging", None, "DeleteObjectTagging"),
    ("GET", "/bkt/k?acl", None, "GetObjectAcl"),
    ("PUT", "/bkt/k?acl", None, "PutObjectAcl"),
    ("GET", "/bkt/k?retention", None, "GetObjectRetention"),
    ("PUT", "/bkt/k?retention", None, "PutObjectRetention"),
    ("GET", "/bkt/k?legal-hold", None, "GetObjectLegalHold"),
    ("PUT", "/bkt/k?legal-hold", None, "PutObjectLegalHold"),
    ("GET", "/bkt/k?attributes", None, "GetObjectAttributes"),
    ("GET", "/bkt/k?torrent", None, "GetObjectTorrent"),
    ("GET", "/bkt/k?versionId=v&tagging", None, "GetObjectTagging"),
    # names are matched exactly, after decoding, never as substrings of the raw query
    ("GET", "/bkt/k?xuploadId=u", None, "GetObject"),
    ("GET", "/bkt/k?uploadIdx=u", None, "GetObject"),
    ("GET", "/bkt/k?response-content-type=uploadId%3Du", None, "GetObject"),
    ("GET", "/bkt/k?%75ploadId=u", None, "ListParts"),  # decoded like the backend decodes it
    ("GET", "/bkt/k?Tagging", None, "GetObject"),  # S3 subresources are case-sensitive
    ("GET", "/bkt?Versions", None, "ListObjects"),
    ("GET", "/bkt?%76ersions", None, "ListObjectVersions"),
]


@pytest.mark.parametrize("method, target, headers, operation", OPERATIONS)
def test_operation_names(method, target, headers, operation):
    assert parse(method, target, headers=headers).operation == operation


def test_virtual_host_operation_names():
    def op(method, target, headers=None):
        return parse(method, target, host="bkt.localhost", headers=headers, base_domains=["localhost"]).operation

    assert op("GET", "/") == "ListObjects"
    assert op("GET", "/?list-type=2") == "ListObjectsV2"
    assert op("PUT", "/") == "CreateBucket"
    assert op("HEAD", "/") == "HeadBucket"
    assert op("GET", "/k") == "GetObject"
    assert op("PUT", "/k", COPY) == "CopyObject"
    assert op("POST", "/?delete") == "DeleteObjects"
    assert op("GET", "/k?uploadId=u") == "ListParts"


def test_classify_directly():
    assert classify("GET", None, None, {}, CIMultiDict()) == "ListBuckets"
    assert classify("PUT", "b", "k", {"partNumber": "1", "uploadId": "u"},
                    CIMultiDict({"X-AMZ-COPY-SOURCE": "b/k"})) == "UploadPartCopy"


def test_read_operations_only_read():
    names = {operation for _, _, _, operation in OPERATIONS if operation}
    writes = {"PutObject", "CopyObject", "DeleteObject", "DeleteObjects", "CreateMultipartUpload", "UploadPart",
              "UploadPartCopy", "CompleteMultipartUpload", "AbortMultipartUpload", "CreateBucket", "DeleteBucket",
              "CreateSession", "RestoreObject", "SelectObjectContent"}
    assert not READ_OPERATIONS & writes
    assert not {n for n in READ_OPERATIONS if n.startswith(("Put", "Delete", "Create"))}
    # every read operation is one the classifier can produce
    assert READ_OPERATIONS <= names


def test_headers_named_by_connection_are_not_forwarded():
    from inproxy.s3.headers import forwarded_headers

    sent = forwarded_headers([("Connection", "keep-alive, X-Private-Hop"), ("X-Private-Hop", "1"),
                              ("x-amz-meta-a", "kept"), ("Range", "bytes=0-1")], decoding_chunked=False)
    assert sent == {"x-amz-meta-a": "kept", "range": "bytes=0-1"}


def test_only_listings_carry_a_prefix():
    assert parse("GET", "/bkt?list-type=2&prefix=a/").prefix == "a/"
    assert parse("GET", "/bkt/key?uploadId=1&prefix=a/").prefix is None  # ListParts has no prefix


# -- the request record and its fast paths ------------------------------------------------------


def test_the_request_record_is_immutable_and_hides_the_query():
    s3 = parse("GET", "/bkt/k?X-Amz-Signature=secret&prefix=p")
    for name in ("key", "bucket", "operation", "params", "canonical_query_pairs", "other"):
        with pytest.raises(AttributeError):
            setattr(s3, name, "changed")
    with pytest.raises(AttributeError):
        del s3.key
    assert s3.key == "k" and " query=" not in repr(s3) and "params=" not in repr(s3)
    assert s3 == parse("GET", "/bkt/k?X-Amz-Signature=secret&prefix=p")
    assert s3 != parse("GET", "/bkt/k?X-Amz-Signature=other&prefix=p")
    assert s3.canonical_query() == "X-Amz-Signature=secret&prefix=p"
    assert s3.canonical_query(drop={"X-Amz-Signature"}) == "prefix=p"


query_names = st.sampled_from(["a", "b", "prefix", "uploads", "tagging", "acl", "versionId", "a%20b", "a+b"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(query_names, st.sampled_from(["", "1", "2", "x%2Fy"])), max_size=6))
def test_params_are_the_first_value_of_each_name_in_order(pairs):
    raw_query = "&".join(f"{n}={v}" for n, v in pairs)
    s3 = parse("GET", f"/bkt?{raw_query}")
    first: dict[str, str] = {}
    for name, value in s3.query:
        first.setdefault(name, value)
    assert list(s3.params.items()) == list(first.items())  # values and order (classify reads in order)
    assert s3.canonical_query_pairs == canonical_query_pairs(raw_query)


def _decoded_key_as_first_written(raw_key: str) -> str:
    try:
        key = unquote(raw_key, errors="strict")
    except UnicodeDecodeError:
        raise errors.InvalidURI("The key is not valid percent-encoded UTF-8.") from None
    if any(segment in (".", "..") for segment in key.split("/")):
        raise errors.InvalidURI("Keys with '.' or '..' path segments are not supported by this proxy.")
    if "\x00" in key:
        raise errors.InvalidURI()
    return key


def _outcome(call):
    try:
        return call()
    except errors.S3Error as exc:
        return type(exc), str(exc)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a", ".", "..", "/", "%2E", "%2e", "%2F", "%00", "\x00", "%C3%BC", "%C3", "%ff",
                                 "%", "%z", "ü", "+", "..."]), min_size=1, max_size=8).map("".join))
def test_keys_decode_as_first_written(raw_key):
    assert _outcome(lambda: _decode_key(raw_key)) == _outcome(lambda: _decoded_key_as_first_written(raw_key))
