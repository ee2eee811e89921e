"""XML documents the proxy writes itself (ListBuckets), and text made safe for any of them."""

from __future__ import annotations

import re
from typing import Iterable
from xml.sax.saxutils import escape

# What XML 1.0 cannot carry at all, not even as a character reference: control characters
# other than tab, LF and CR, lone surrogates (raw non-UTF-8 bytes of a request, decoded
# with surrogateescape) and U+FFFE/U+FFFF.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: str) -> str:
    """``value`` as XML character data: ``&``, ``<``, ``>`` escaped, and every character
    XML cannot carry (a key with ``%01`` in it, a header value with a raw ``\xff``) replaced
    by U+FFFD, so that an error document quoting client input is always well-formed."""
    return escape(_NOT_XML.sub("\ufffd", value))


_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_EPOCH = "2000-01-01T00:00:00.000Z"


def list_buckets_xml(names: Iterable[str], *, owner: str) -> bytes:
    """A ListAllMyBucketsResult naming the given buckets."""
    buckets = "".join(
        f"<Bucket><Name>{xml_text(n)}</Name><CreationDate>{_EPOCH}</CreationDate></Bucket>" for n in names
    )
    owner_xml = f"<Owner><ID>{xml_text(owner)}</ID><DisplayName>{xml_text(owner)}</DisplayName></Owner>"
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<ListAllMyBucketsResult xmlns="{_NS}">'
            f"{owner_xml}<Buckets>{buckets}</Buckets></ListAllMyBucketsResult>").encode()
