"""XML documents the proxy writes itself (ListBuckets)."""

from __future__ import annotations

from typing import Iterable
from xml.sax.saxutils import escape

_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_EPOCH = "2000-01-01T00:00:00.000Z"


def list_buckets_xml(names: Iterable[str], *, owner: str) -> bytes:
    """A ListAllMyBucketsResult naming the given buckets."""
    buckets = "".join(
        f"<Bucket><Name>{escape(n)}</Name><CreationDate>{_EPOCH}</CreationDate></Bucket>" for n in names
    )
    owner_xml = f"<Owner><ID>{escape(owner)}</ID><DisplayName>{escape(owner)}</DisplayName></Owner>"
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<ListAllMyBucketsResult xmlns="{_NS}">'
            f"{owner_xml}<Buckets>{buckets}</Buckets></ListAllMyBucketsResult>").encode()
