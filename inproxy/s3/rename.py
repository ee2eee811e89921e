"""Show a renamed bucket under its client-facing name in the backend's small XML answers."""

from __future__ import annotations

import re
from xml.sax.saxutils import escape

from .headers import decimal_count

# Elements of S3 responses that carry the bucket name (ListBucketResult/Name,
# *MultipartUpload*/Bucket, Error/BucketName) or a path or URL that starts with it.
_NAME_TAGS = (b"Name", b"Bucket", b"BucketName")
_PATH_TAGS = (b"Location", b"Resource")
MAX_REWRITE_BYTES = 4 * 1024 * 1024


def is_rewritable(content_type: str | None, content_length: str | None) -> bool:
    """An XML body of known, bounded size (others stream through untouched)."""
    if not content_type or "xml" not in content_type.lower():
        return False
    length = decimal_count(content_length)
    return length is not None and length <= MAX_REWRITE_BYTES


def rename_bucket(body: bytes, backend_bucket: str, client_bucket: str) -> bytes:
    """Replace the backend's bucket name with the client's where S3 XML names the bucket."""
    real, alias = escape(backend_bucket).encode(), escape(client_bucket).encode()
    for tag in _NAME_TAGS:
        body = body.replace(b"<%s>%s</%s>" % (tag, real, tag), b"<%s>%s</%s>" % (tag, alias, tag))
    for tag in _PATH_TAGS:
        pattern = re.compile(rb"(<%s>[^<]*?/)%s(/|</%s>)" % (tag, re.escape(real), tag))
        body = pattern.sub(lambda m: m.group(1) + alias + m.group(2), body, count=1)
    return body
