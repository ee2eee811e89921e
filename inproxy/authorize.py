"""Authorization of one request: the main access check and, for operations that touch
more than the object in the path, every object they touch.

* **The main check**: the request's own :class:`~inproxy.context.AccessRequest`.
* **DeleteObjects**: the XML body is read (bounded), parsed without DTDs or
  entities, and ``DeleteObject`` is authorized for every key in it.  One denied key
  refuses the whole request.  The body is then kept in ``ctx.state`` so that the
  pipeline forwards exactly the bytes that were authorized, with a
  ``Content-MD5`` added when the client sent none (newer SDKs do not, some backends
  need it).
* **CopyObject / UploadPartCopy**: ``x-amz-copy-source`` is parsed and
  ``GetObject`` is authorized on the source bucket and key.  The copy must stay on
  one backend; the header sent upstream is rebuilt by the proxy (canonically
  encoded, with the backend's name for a renamed bucket).

Decisions go through :func:`is_allowed`, which caches them like the proxy's
``cache_decisions`` says (or as a :class:`~inproxy.hooks.Decision` asks) under
*every* input of the decision, and which also keeps *scoped* decisions
(``Decision(True, ttl=60, scope_prefix="a/")``): an answer that a hook declares
valid for every key under a prefix.  A scoped answer is only ever served to a
request with the same identity (name, method and claims), operation, bucket,
method and source address, whose key (or listing prefix) starts with the scope.

What the pipeline does with ``ctx.state`` (the contract of this module):

``buffered_body``
    ``bytes``: the whole request body, already read, verified (payload hash,
    chunk signatures, Content-MD5) and authorized.  Forward exactly these bytes.
``continue_sent``
    ``True`` once ``100 Continue`` has been written to the client: do not write it again.
``copy_source``
    the parsed :class:`CopySource` of the request.

and :func:`upstream_headers` gives the headers to set on the upstream request
once its backend is chosen (it raises when the copy source is on another backend).
A pipeline that implements this contract says so with a true
``honours_authorization_state`` attribute; until then, DeleteObjects is refused
after its authorization (``NotImplemented``) and a copy is refused when its
upstream header would have to differ from the client's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import re
import threading
import time
import traceback
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Callable, Sequence
from urllib.parse import unquote
from xml.parsers import expat

from cachetools import LRUCache

from . import errors
from .context import AccessRequest
from .hooks import Decision
from .s3 import sigv4
from .s3.chunked import AwsChunkedDecoder
from .secrets import Cached

if TYPE_CHECKING:
    from .backend import Backend
    from .context import RequestContext
    from .pipeline import Pipeline

__all__ = [
    "LISTING_OPERATIONS", "MAX_DELETE_BODY", "MAX_DELETE_KEYS", "CopySource", "DeleteRequest",
    "ScopedDecisions", "authorize_request", "decision_cache_key", "is_allowed",
    "parse_copy_source", "parse_delete_request", "scoped_decisions", "upstream_headers",
]

log = logging.getLogger("inproxy")

#: Largest DeleteObjects body the proxy reads (1000 keys of 1024 bytes fit easily).
MAX_DELETE_BODY = 2 * 1024 * 1024
#: Most keys in one DeleteObjects request, as S3 allows.
MAX_DELETE_KEYS = 1000
#: Listing operations: their ``prefix`` parameter is what they read.
LISTING_OPERATIONS = frozenset({"ListObjects", "ListObjectsV2", "ListObjectVersions", "ListMultipartUploads"})
#: The operations that may carry ``x-amz-copy-source``.
COPY_OPERATIONS = frozenset({"CopyObject", "UploadPartCopy"})

STATE_BUFFERED_BODY = "buffered_body"
STATE_CONTINUE_SENT = "continue_sent"
STATE_COPY_SOURCE = "copy_source"

_S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
# Authorizer calls in flight at once for the keys of one DeleteObjects request.
_PARALLEL_CHECKS = 32


def MalformedXML(message: str = "The XML you provided was not well-formed or did not validate "
                                "against our published schema.") -> errors.S3Error:
    """S3 ``MalformedXML`` (400)."""
    return errors.S3Error(message, code="MalformedXML", status=400)


# -- the entry point --------------------------------------------------------------------------

async def authorize_request(pipeline: "Pipeline", ctx: "RequestContext") -> None:
    """Raise an S3Error (AccessDenied when the authorizer says no) unless everything this
    request does is allowed."""
    s3 = ctx.s3
    _check_query(ctx)
    copy_headers = ctx.request.headers.getall("x-amz-copy-source", [])
    if not await is_allowed(pipeline, ctx.access):
        raise errors.AccessDenied()
    if copy_headers:
        if s3.operation not in COPY_OPERATIONS:
            raise errors.InvalidRequest("x-amz-copy-source is only valid for CopyObject and UploadPartCopy.")
        await _authorize_copy_source(pipeline, ctx, copy_headers)
    if s3.operation == "DeleteObjects":
        await _authorize_delete_objects(pipeline, ctx)


def _check_query(ctx: "RequestContext") -> None:
    """Refuse what the authorizer and a backend could read differently."""
    s3 = ctx.s3
    if s3.operation in LISTING_OPERATIONS and sum(1 for name, _ in s3.query if name == "prefix") > 1:
        # The authorizer sees the first; a backend may use another.
        raise errors.InvalidArgument("The prefix parameter may be given only once.")


def _honoured(pipeline: "Pipeline") -> bool:
    return bool(getattr(pipeline, "honours_authorization_state", False))


# -- decisions: cache keys, scoped decisions, asking the authorizer ---------------------------

def _identity_key(identity) -> tuple:
    """The identity as a decision depends on it: method, name and (a digest of) its claims."""
    claims = identity.claims
    if not claims:
        return identity.cache_key
    try:
        text = json.dumps(claims, sort_keys=True, separators=(",", ":"), default=repr)
    except (TypeError, ValueError):
        text = repr(sorted(claims.items(), key=lambda item: str(item[0])))
    return (*identity.cache_key, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())


def decision_cache_key(access: AccessRequest) -> tuple:
    """Every input of an authorization decision: the identity (with its claims), the
    operation, bucket, key, listing prefix, method and source address."""
    return (_identity_key(access.identity), access.operation, access.bucket, access.key,
            access.prefix, access.method, access.source_ip)


def _scope_base(access: AccessRequest) -> tuple:
    """What a scoped decision must share with the request it serves: all but the key/prefix."""
    return (_identity_key(access.identity), access.operation, access.bucket, access.method,
            access.source_ip)


def _scoped_resource(access: AccessRequest) -> str | None:
    """The string a scope prefix is matched against: the object key, the listing prefix
    (``""``: the whole bucket), or None for requests no scope can cover."""
    if access.key is not None:
        return access.key
    if access.operation in LISTING_OPERATIONS:
        return access.prefix or ""
    return None


@dataclass
class _Scope:
    prefix: str
    allowed: bool
    expires: float


class ScopedDecisions:
    """Decisions a hook declared valid for a whole key prefix, per (identity, operation,
    bucket, method, source address).  Bounded: at most ``maxsize`` such groups (least
    recently used dropped) and ``max_scopes`` prefixes in each (oldest dropped)."""

    def __init__(self, *, maxsize: int = 10_000, max_scopes: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._groups: LRUCache = LRUCache(maxsize)
        self._max_scopes = max_scopes
        self._clock = clock
        self._lock = threading.Lock()

    def lookup(self, access: AccessRequest) -> bool | None:
        """The scoped answer for ``access`` (a deny wins), or None when no scope covers it."""
        resource = _scoped_resource(access)
        if resource is None:
            return None
        base = _scope_base(access)
        now = self._clock()
        with self._lock:
            scopes = self._groups.get(base)
            if not scopes:
                return None
            scopes[:] = [s for s in scopes if s.expires > now]
            found = [s.allowed for s in scopes if resource.startswith(s.prefix)]
        if not found:
            return None
        return all(found)

    def add(self, access: AccessRequest, allowed: bool, ttl: float, scope_prefix: str) -> bool:
        """Remember a scoped answer given for ``access``; False (nothing kept) when ``access``
        itself is outside the scope, the request cannot be scoped, or ``ttl`` is not positive."""
        resource = _scoped_resource(access)
        if resource is None or not resource.startswith(scope_prefix) or not ttl > 0:
            return False
        base = _scope_base(access)
        scope = _Scope(scope_prefix, allowed, self._clock() + ttl)
        with self._lock:
            scopes = self._groups.get(base)
            if scopes is None:
                scopes = self._groups[base] = []
            scopes[:] = [s for s in scopes if not (s.prefix == scope_prefix and s.allowed == allowed)]
            scopes.append(scope)
            del scopes[:-self._max_scopes]
        return True

    def clear(self) -> None:
        with self._lock:
            self._groups.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._groups.values())


_stores: "weakref.WeakKeyDictionary[object, ScopedDecisions]" = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


def scoped_decisions(pipeline: "Pipeline") -> ScopedDecisions:
    """The scoped-decision store of one pipeline (created on first use, gone with it)."""
    with _stores_lock:
        store = _stores.get(pipeline)
        if store is None:
            store = _stores[pipeline] = ScopedDecisions()
        return store


async def _within(awaitable, seconds: float):
    """Await with a deadline; asyncio.timeout (3.11+) costs a timer, wait_for a whole task."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


async def is_allowed(pipeline: "Pipeline", access: AccessRequest) -> bool:
    """Ask the pipeline's authorizer, through the decision caches.

    * A scoped decision covering ``access`` answers first.
    * With ``cache_decisions > 0`` answers are cached that long under
      :func:`decision_cache_key`; a :class:`Decision` with a ``ttl`` chooses its own
      lifetime, also when ``cache_decisions`` is 0.
    * A hook that raises, times out or answers something other than a bool or a
      Decision denies, and that denial is never cached.
    """
    store = scoped_decisions(pipeline)
    scoped = store.lookup(access)
    if scoped is not None:
        return scoped
    cache = pipeline.cache
    key = ("authz", pipeline.cache_namespace, decision_cache_key(access))
    default_ttl = max(0.0, float(pipeline.cache_decisions or 0))

    async def fetch():
        return await _ask(pipeline, access, store, default_ttl)

    if default_ttl > 0:
        return (await cache.get(key, fetch, ttl=default_ttl)) is True
    cached = cache.peek(key)
    if cached is not None:
        return cached is True
    answer = await fetch()
    if isinstance(answer, Cached):
        if answer.ttl is not None and answer.ttl > 0:
            await cache.get(key, lambda: answer)
        return answer.value is True
    return answer is True


async def _ask(pipeline: "Pipeline", access: AccessRequest, store: ScopedDecisions,
               default_ttl: float) -> "bool | Cached[bool]":
    try:
        decision = await _within(pipeline.authorizer.authorize(access), pipeline.authorize_timeout)
    except Exception as exc:
        # The type and where, never the message: a hook's message may carry anything.
        log.warning("authorizer failed (%s) for %s on %s; denying", type(exc).__name__,
                    access.operation, access.bucket)
        if log.isEnabledFor(logging.DEBUG):
            where = "; ".join(f"{f.filename}:{f.lineno} in {f.name}"
                              for f in traceback.extract_tb(exc.__traceback__))
            log.debug("authorizer failure (%s) at %s", type(exc).__name__, where)
        return Cached(False, ttl=0)
    if isinstance(decision, Decision):
        if decision.scope_prefix is not None:
            ttl = decision.ttl if decision.ttl is not None else default_ttl
            if not store.add(access, decision.allowed, ttl, decision.scope_prefix) and ttl > 0:
                log.debug("scoped decision for %s on %s ignored: the request is outside its scope "
                          "or cannot be scoped", access.operation, access.bucket)
        if decision.ttl is not None:
            return Cached(decision.allowed, ttl=decision.ttl)
        return decision.allowed
    if isinstance(decision, bool):
        return decision
    log.warning("authorizer answered a %s, not a bool or Decision, for %s on %s; denying",
                type(decision).__name__, access.operation, access.bucket)
    return Cached(False, ttl=0)


async def _all_allowed(pipeline: "Pipeline", accesses: Sequence[AccessRequest]) -> bool:
    """Whether every access is allowed; stops asking at the first batch with a denial."""
    for start in range(0, len(accesses), _PARALLEL_CHECKS):
        batch = accesses[start:start + _PARALLEL_CHECKS]
        answers = await asyncio.gather(*(is_allowed(pipeline, a) for a in batch))
        if not all(answers):
            return False
    return True


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


async def _authorize_delete_objects(pipeline: "Pipeline", ctx: "RequestContext") -> None:
    body = await _read_small_body(pipeline, ctx, MAX_DELETE_BODY)
    request = parse_delete_request(body)
    s3, identity, source_ip = ctx.s3, ctx.identity, ctx.request.remote
    accesses = []
    for key in request.keys:
        _check_key(key)
        accesses.append(AccessRequest(identity, "DeleteObject", s3.bucket, key, None, "DELETE", source_ip))
    if not await _all_allowed(pipeline, accesses):
        raise errors.AccessDenied()
    _check_content_md5(ctx.request.headers.get("content-md5"), body)
    if not _honoured(pipeline):
        raise errors.NotImplementedError_("DeleteObjects needs a pipeline that forwards the authorized body.")
    ctx.state[STATE_BUFFERED_BODY] = body
    ctx.body, ctx.body_length = _once(body), len(body)


def _check_key(key: str) -> None:
    """The keys the proxy refuses in a path are refused in a body too: a backend that
    normalises ``a/../b`` would act on a key that was never authorized."""
    if any(segment in (".", "..") for segment in key.split("/")) or "\x00" in key:
        raise errors.InvalidArgument("Keys with '.' or '..' path segments are not supported by this proxy.")


def _check_content_md5(header: str | None, body: bytes) -> None:
    if header is None:
        return
    try:
        claimed = base64.b64decode(header.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidDigest() from None
    if len(claimed) != 16:
        raise errors.InvalidDigest()
    if claimed != hashlib.md5(body).digest():
        raise errors.BadDigest()


def content_md5(body: bytes) -> str:
    """The ``Content-MD5`` header value of ``body``."""
    return base64.b64encode(hashlib.md5(body).digest()).decode("ascii")


async def _once(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


async def _read_small_body(pipeline: "Pipeline", ctx: "RequestContext", limit: int) -> bytes:
    """The whole request body (aws-chunked decoded and verified, payload hash checked), at
    most ``limit`` bytes; sends ``100 Continue`` first when the client waits for it."""
    request = ctx.request
    headers = request.headers
    client_hash = headers.get("x-amz-content-sha256", "")
    encodings = [c.strip().lower() for e in headers.getall("content-encoding", []) for c in e.split(",")]
    chunked = client_hash.startswith("STREAMING-") or "aws-chunked" in encodings
    declared = request.content_length
    if declared is None:
        if request.body_exists:
            raise errors.MissingContentLength()
        raise MalformedXML()
    if chunked:
        decoded = headers.get("x-amz-decoded-content-length")
        if decoded is None or not decoded.isdigit():
            raise errors.MissingContentLength("aws-chunked bodies need x-amz-decoded-content-length.")
        if int(decoded) > limit or declared > 2 * limit + 64 * 1024:
            raise errors.EntityTooLarge()
    elif declared > limit:
        raise errors.EntityTooLarge()
    if declared == 0:
        raise MalformedXML()
    await _send_continue(ctx)
    raw = await _read_exactly(request, declared)
    if chunked:
        trailer = headers.get("x-amz-trailer", "")
        verifier = ctx.state.get("chunk_verifier")
        decoder = AwsChunkedDecoder(
            decoded_length=int(decoded),
            trailer_names=[n.strip().lower() for n in trailer.split(",") if n.strip()],
            chunk_verifier=getattr(verifier, "verify_chunk", None),
            trailer_verifier=getattr(verifier, "verify_trailer", None))
        body = b"".join([piece async for piece in decoder.decode(_once(raw))])
    else:
        body = raw
        if sigv4.is_sha256_hex(client_hash) and hashlib.sha256(body).hexdigest() != client_hash:
            raise errors.XAmzContentSHA256Mismatch()
    return body


async def _send_continue(ctx: "RequestContext") -> None:
    request = ctx.request
    if request.headers.get("expect", "").lower() == "100-continue" and not ctx.state.get(STATE_CONTINUE_SENT):
        # The client is authenticated and authorized for the request itself: it may send the body.
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        ctx.state[STATE_CONTINUE_SENT] = True


async def _read_exactly(request, declared: int) -> bytes:
    parts, received = [], 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
        if received > declared:
            raise errors.IncompleteBody()
        parts.append(chunk)
    if received != declared:
        raise errors.IncompleteBody()
    return b"".join(parts)


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
        raise errors.NotImplementedError_("Copy sources given as ARNs are not supported by this proxy.")
    path, has_query, query = path.partition("?")
    version_id = None
    if has_query:
        pairs = sigv4.parse_query(query)
        if len(pairs) != 1 or pairs[0][0] != "versionId" or not pairs[0][1]:
            raise errors.InvalidArgument("Invalid copy source: only versionId may follow the key.")
        version_id = pairs[0][1]
    bucket, _, raw_key = path.partition("/")
    if not _BUCKET_RE.match(bucket) or not raw_key:
        raise errors.InvalidArgument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey.")
    try:
        key = unquote(raw_key, errors="strict")
    except UnicodeDecodeError:
        raise errors.InvalidArgument("The copy source key is not valid percent-encoded UTF-8.") from None
    _check_key(key)
    return CopySource(bucket, key, version_id, raw)


async def _authorize_copy_source(pipeline: "Pipeline", ctx: "RequestContext", values: Sequence[str]) -> None:
    if len(values) != 1:
        raise errors.InvalidArgument("x-amz-copy-source may be given only once.")
    source = parse_copy_source(values[0])
    access = AccessRequest(ctx.identity, "GetObject", source.bucket, source.key, None, "GET",
                           ctx.request.remote)
    if not await is_allowed(pipeline, access):
        raise errors.AccessDenied()
    ctx.state[STATE_COPY_SOURCE] = source
    if not _honoured(pipeline):
        # Until the pipeline rewrites the header, only copies whose header needs no
        # rewriting are safe: one routed backend, no renaming, a canonical header.
        backends = pipeline.backends
        target, origin = backends.route(ctx.s3.bucket), backends.route(source.bucket)
        _check_same_backend(origin, target)
        unchanged = source.header_value(origin.backend_bucket(source.bucket))
        if unchanged.lstrip("/") != source.raw.lstrip("/"):
            raise errors.NotImplementedError_("This copy source needs a pipeline that rewrites it.")


def _check_same_backend(origin: "Backend | None", target: "Backend | None") -> None:
    if origin is None:
        raise errors.NoSuchBucket("The specified copy source bucket does not exist.")
    if target is None or origin is not target:
        raise errors.NotImplementedError_("Copying between buckets on different backends is not supported.")


def upstream_headers(pipeline: "Pipeline", ctx: "RequestContext") -> dict[str, str]:
    """Headers to set on the upstream request once ``ctx.backend`` is chosen (lower-case
    names): ``content-md5`` for a buffered body that has none, ``x-amz-copy-source``
    rebuilt for the backend.  Raises NotImplemented for a copy across backends."""
    out: dict[str, str] = {}
    body = ctx.state.get(STATE_BUFFERED_BODY)
    if body is not None and "content-md5" not in ctx.request.headers:
        out["content-md5"] = content_md5(body)
    source: CopySource | None = ctx.state.get(STATE_COPY_SOURCE)
    if source is not None:
        origin = pipeline.backends.route(source.bucket)
        _check_same_backend(origin, ctx.backend)
        out["x-amz-copy-source"] = source.header_value(ctx.backend.backend_bucket(source.bucket))
    return out
