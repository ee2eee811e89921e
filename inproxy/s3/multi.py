"""Parse the bodies and headers of multi-object operations: the DeleteObjects XML body,
``x-amz-copy-source`` and ``Content-MD5``.

Pure functions of bytes and strings; what they read is what a conforming backend reads,
so that the keys authorized are the keys acted on."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import unquote
from xml.parsers import expat

from ..errors import BadDigest, InvalidArgument, InvalidDigest, MalformedXML, NotImplementedError_
from . import sigv4

__all__ = ["MAX_DELETE_KEYS", "CopySource", "DeleteRequest", "check_content_md5", "check_key",
           "content_md5", "parse_copy_source", "parse_delete_request"]

#: Most keys in one DeleteObjects request, as S3 allows.
MAX_DELETE_KEYS = 1000

_S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")


def check_key(key: str) -> None:
    """The keys the proxy refuses in a path are refused in a body too: a backend that
    normalises ``a/../b`` would act on a key that was never authorized."""
    if any(segment in (".", "..") for segment in key.split("/")) or "\x00" in key:
        raise InvalidArgument("Keys with '.' or '..' path segments are not supported by this proxy.")


# -- DeleteObjects ----------------------------------------------------------------------------

@dataclass(frozen=True)
class DeleteRequest:
    """The parsed body of DeleteObjects: ``(key, version id or None)`` per object."""

    objects: tuple[tuple[str, str | None], ...]
    quiet: bool = False

    @property
    def keys(self) -> list[str]:
        """The distinct keys, in order."""
        return list(dict.fromkeys(key for key, _ in self.objects))


class _Reject(Exception):
    pass


_OBJECT_FIELDS = frozenset({"Key", "VersionId", "ETag", "LastModifiedTime", "Size"})


def parse_delete_request(body: bytes, *, max_keys: int = MAX_DELETE_KEYS) -> DeleteRequest:
    """Parse a DeleteObjects body strictly; raise MalformedXML for anything unexpected.

    Safe against hostile XML: a DOCTYPE (so any entity declaration), processing
    instructions, comments, attributes, unknown elements or namespaces, more than three
    levels, and encodings other than UTF-8 are refused, so that the keys read here are
    the keys any conforming backend reads."""
    parser = expat.ParserCreate(encoding="UTF-8", namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[str] = []
    text: list[str] = []
    objects: list[tuple[str, str | None]] = []
    current: dict[str, str] = {}
    quiet: list[str] = []

    def reject(*_args) -> None:
        raise _Reject()

    def xml_decl(version, encoding, standalone) -> None:
        if encoding is not None and encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
            raise _Reject()

    def start(name: str, attributes) -> None:
        namespace, _, local = name.rpartition(" ")
        if attributes or namespace not in ("", _S3_NAMESPACE):
            raise _Reject()
        depth = len(stack)
        if "".join(text).strip():
            raise _Reject()  # stray text around elements
        text.clear()
        if depth == 0:
            ok = local == "Delete"
        elif depth == 1:
            ok = local in ("Object", "Quiet")
            if local == "Object":
                if len(objects) >= max_keys:
                    raise _Reject()
                current.clear()
            elif quiet:
                raise _Reject()
        elif depth == 2:
            ok = stack[-1] == "Object" and local in _OBJECT_FIELDS and local not in current
        else:
            ok = False
        if not ok:
            raise _Reject()
        stack.append(local)

    def end(name: str) -> None:
        local = stack.pop()
        value = "".join(text)
        text.clear()
        if len(stack) == 2:  # a field of an Object: its text is the value
            current[local] = value
        elif local == "Quiet":
            if value.strip() not in ("true", "false"):
                raise _Reject()
            quiet.append(value.strip())
        elif value.strip():
            raise _Reject()  # stray text in Delete or Object
        elif local == "Object":
            if "Key" not in current:
                raise _Reject()
            objects.append((current["Key"], current.get("VersionId")))

    def characters(data: str) -> None:
        text.append(data)

    parser.StartDoctypeDeclHandler = reject
    parser.EntityDeclHandler = reject
    parser.UnparsedEntityDeclHandler = reject
    parser.NotationDeclHandler = reject
    parser.ExternalEntityRefHandler = reject
    parser.ProcessingInstructionHandler = reject
    parser.CommentHandler = reject
    parser.XmlDeclHandler = xml_decl
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    try:
        parser.Parse(body, True)
    except (_Reject, expat.ExpatError, ValueError):
        raise MalformedXML() from None
    if not objects:
        raise MalformedXML()
    return DeleteRequest(tuple(objects), quiet=quiet == ["true"])


# -- Content-MD5 ------------------------------------------------------------------------------

def check_content_md5(header: str | None, body: bytes) -> None:
    """Raise InvalidDigest for a malformed ``Content-MD5``, BadDigest for one that is not
    ``body``'s; no header, nothing to check."""
    if header is None:
        return
    try:
        claimed = base64.b64decode(header.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidDigest() from None
    if len(claimed) != 16:
        raise InvalidDigest()
    if claimed != hashlib.md5(body).digest():
        raise BadDigest()


def content_md5(body: bytes) -> str:
    """The ``Content-MD5`` header value of ``body``."""
    return base64.b64encode(hashlib.md5(body).digest()).decode("ascii")


# -- CopyObject and UploadPartCopy ------------------------------------------------------------

@dataclass(frozen=True)
class CopySource:
    """A parsed ``x-amz-copy-source``: client-facing bucket, decoded key, version id."""

    bucket: str
    key: str
    version_id: str | None = None
    raw: str = ""

    def header_value(self, backend_bucket: str | None = None) -> str:
        """The header as the proxy sends it: ``/bucket/key[?versionId=v]``, canonically encoded,
        with ``backend_bucket`` (the backend's name for a renamed bucket) when given."""
        value = f"/{backend_bucket or self.bucket}/{sigv4.uri_encode(self.key, keep_slash=True)}"
        if self.version_id is not None:
            value += f"?versionId={sigv4.uri_encode(self.version_id)}"
        return value


def parse_copy_source(value: str) -> CopySource:
    """Parse ``x-amz-copy-source`` (``[/]bucket/url-encoded-key[?versionId=id]``);
    raise InvalidArgument (or NotImplemented for access point ARNs)."""
    raw = value.strip()
    path = raw[1:] if raw.startswith("/") else raw
    if path.startswith("arn:"):
        raise NotImplementedError_("Copy sources given as ARNs are not supported by this proxy.")
    path, has_query, query = path.partition("?")
    version_id = None
    if has_query:
        pairs = sigv4.parse_query(query)
        if len(pairs) != 1 or pairs[0][0] != "versionId" or not pairs[0][1]:
            raise InvalidArgument("Invalid copy source: only versionId may follow the key.")
        version_id = pairs[0][1]
    bucket, _, raw_key = path.partition("/")
    if not _BUCKET_RE.match(bucket) or not raw_key:
        raise InvalidArgument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey.")
    try:
        key = unquote(raw_key, errors="strict")
        key.encode("utf-8")  # raw non-UTF-8 bytes of the header arrive as lone surrogates
    except UnicodeError:
        raise InvalidArgument("The copy source key is not valid percent-encoded UTF-8.") from None
    check_key(key)
    return CopySource(bucket, key, version_id, raw)
