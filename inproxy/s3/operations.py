"""Name the S3 operation of a request from its method, bucket, key, query and headers."""

from __future__ import annotations

from typing import Collection, Mapping

# Bucket subresources: query parameter -> operation suffix (GetBucket<X>, PutBucket<X>, DeleteBucket<X>).
_BUCKET_SUBRESOURCES = {
    "accelerate": "AccelerateConfiguration", "acl": "Acl", "analytics": "AnalyticsConfiguration",
    "cors": "Cors", "encryption": "Encryption", "intelligent-tiering": "IntelligentTieringConfiguration",
    "inventory": "InventoryConfiguration", "lifecycle": "LifecycleConfiguration", "logging": "Logging",
    "metrics": "MetricsConfiguration", "notification": "NotificationConfiguration",
    "object-lock": "ObjectLockConfiguration", "ownershipControls": "OwnershipControls",
    "policy": "Policy", "policyStatus": "PolicyStatus", "publicAccessBlock": "PublicAccessBlock",
    "replication": "Replication", "requestPayment": "RequestPayment", "tagging": "Tagging",
    "versioning": "Versioning", "website": "Website",
}
# Object subresources: query parameter -> operation suffix (Get/Put/DeleteObject<X>).
_OBJECT_SUBRESOURCES = {
    "acl": "Acl", "tagging": "Tagging", "retention": "Retention", "legal-hold": "LegalHold",
    "attributes": "Attributes", "torrent": "Torrent",
}
_METHOD_VERB = {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}

# Operations that only read: what a read-only policy may allow.
READ_OPERATIONS = frozenset({
    "GetObject", "HeadObject", "ListObjects", "ListObjectsV2", "ListObjectVersions", "HeadBucket",
    "GetBucketLocation", "ListBuckets", "ListParts", "ListMultipartUploads", "GetObjectTagging",
    "GetObjectAcl", "GetObjectAttributes",
})
# Listing operations: their ``prefix`` parameter (not a key) is what they read.
LISTING_OPERATIONS = frozenset({"ListObjects", "ListObjectsV2", "ListObjectVersions", "ListMultipartUploads"})


def classify(method: str, bucket: str | None, key: str | None,
             params: Mapping[str, str], headers: Mapping[str, str]) -> str:
    """The S3 operation name (e.g. ``PutObject``), or ``""`` when none matches.

    ``params`` maps decoded query parameter names to their first value; matching
    is by exact name, never by substring of the raw query.
    """
    if bucket is None:
        return "ListBuckets" if method in ("GET", "HEAD") else ""
    if key is None:
        return _bucket_operation(method, params)
    return _object_operation(method, params, "x-amz-copy-source" in headers)


def _subresource(params: Collection[str], table: Mapping[str, str]) -> str | None:
    for name in params:
        if name in table:
            return table[name]
    return None


def _bucket_operation(method: str, params: Mapping[str, str]) -> str:
    if method == "GET":
        if "uploads" in params:
            return "ListMultipartUploads"
        if "versions" in params:
            return "ListObjectVersions"
        if "location" in params:
            return "GetBucketLocation"
        if "session" in params:
            # S3 Express CreateSession answers with temporary credentials of the backend's
            # identity: it must never pass for a listing.
            return "CreateSession"
    if method == "POST":
        return "DeleteObjects" if "delete" in params else ""
    if method == "HEAD":
        return "HeadBucket"
    suffix = _subresource(params, _BUCKET_SUBRESOURCES)
    if method in _METHOD_VERB and suffix:
        return f"{_METHOD_VERB[method]}Bucket{suffix}"
    if method == "GET":
        return "ListObjectsV2" if params.get("list-type") == "2" else "ListObjects"
    return {"PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(method, "")


def _object_operation(method: str, params: Collection[str], has_copy_source: bool) -> str:
    upload = "uploadId" in params
    if method == "HEAD":
        return "HeadObject"
    if method == "POST":
        if "uploads" in params:
            return "CreateMultipartUpload"
        if upload:
            return "CompleteMultipartUpload"
        if "restore" in params:
            return "RestoreObject"
        if "select" in params:
            return "SelectObjectContent"
        return ""
    if upload:
        part = "partNumber" in params
        if method == "PUT" and part:
            return "UploadPartCopy" if has_copy_source else "UploadPart"
        return {"GET": "ListParts", "DELETE": "AbortMultipartUpload"}.get(method, "")
    suffix = _subresource(params, _OBJECT_SUBRESOURCES)
    if suffix and method in _METHOD_VERB:
        return f"{_METHOD_VERB[method]}Object{suffix}"
    if method == "PUT":
        return "CopyObject" if has_copy_source else "PutObject"
    return {"GET": "GetObject", "DELETE": "DeleteObject"}.get(method, "")
