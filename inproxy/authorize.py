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

Decisions go through :func:`inproxy.decisions.is_allowed` (its caches and scoped
decisions); the bodies and headers are parsed by :mod:`inproxy.s3.multi`; the body is
read and verified by :mod:`inproxy.body`, as a forwarded body is.

What the pipeline does with ``ctx.state`` (the contract of this module):

``buffered_body``
    ``bytes``: the whole request body, already read, verified (payload hash,
    chunk signatures, Content-MD5) and authorized.  Forward exactly these bytes.
``continue_sent``
    ``True`` once ``100 Continue`` has been written to the client: do not write it again
    (:func:`inproxy.body.send_continue` does both).
``copy_source``
    the parsed :class:`~inproxy.s3.multi.CopySource` of the request.

and :func:`upstream_headers` gives the headers to set on the upstream request
once its backend is chosen (it raises when the copy source is on another backend).
A pipeline that implements this contract says so with a true
``honours_authorization_state`` attribute; until then, DeleteObjects is refused
after its authorization (``NotImplemented``) and a copy is refused when its
upstream header would have to differ from the client's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from . import errors
from .body import client_payload_hash, decoded_length, is_aws_chunked, once, read_all, send_continue, verified_body
from .context import AccessRequest
from .decisions import all_allowed, allowed_or_pending, is_allowed
from .s3.multi import CopySource, check_content_md5, check_key, content_md5, parse_copy_source, parse_delete_request
from .s3.operations import LISTING_OPERATIONS

if TYPE_CHECKING:
    from .backend import Backend
    from .context import RequestContext
    from .front import FrontRequest
    from .pipeline import Pipeline

__all__ = ["MAX_DELETE_BODY", "STATE_BUFFERED_BODY", "STATE_COPY_SOURCE", "authorize_request",
           "upstream_headers"]

#: Largest DeleteObjects body the proxy reads (1000 keys of 1024 bytes fit easily).
MAX_DELETE_BODY = 2 * 1024 * 1024
#: The operations that may carry ``x-amz-copy-source``.
COPY_OPERATIONS = frozenset({"CopyObject", "UploadPartCopy"})

STATE_BUFFERED_BODY = "buffered_body"
STATE_COPY_SOURCE = "copy_source"


# -- the entry point --------------------------------------------------------------------------

async def authorize_request(pipeline: "Pipeline", ctx: "RequestContext") -> None:
    """Raise an S3Error (AccessDenied when the authorizer says no) unless everything this
    request does is allowed."""
    s3 = ctx.s3
    if s3.operation in LISTING_OPERATIONS:
        _check_query(ctx)
    headers = ctx.request.headers
    copy_headers = headers.getall("x-amz-copy-source") if "x-amz-copy-source" in headers else ()
    allowed = allowed_or_pending(pipeline, ctx.access)  # a cached answer costs no coroutine
    if not isinstance(allowed, bool):
        allowed = await allowed
    if not allowed:
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


# -- DeleteObjects ----------------------------------------------------------------------------

async def _authorize_delete_objects(pipeline: "Pipeline", ctx: "RequestContext") -> None:
    body = await _read_delete_body(ctx)
    request = parse_delete_request(body)
    s3, identity, source_ip = ctx.s3, ctx.identity, ctx.request.remote
    accesses = []
    for key in request.keys:
        check_key(key)
        accesses.append(AccessRequest(identity, "DeleteObject", s3.bucket, key, None, "DELETE", source_ip))
    if not await all_allowed(pipeline, accesses):
        raise errors.AccessDenied()
    check_content_md5(ctx.request.headers.get("content-md5"), body)
    if not _honoured(pipeline):
        raise errors.NotImplementedError_("DeleteObjects needs a pipeline that forwards the authorized body.")
    ctx.state[STATE_BUFFERED_BODY] = body
    ctx.body, ctx.body_length = once(body), len(body)


async def _read_delete_body(ctx: "RequestContext") -> bytes:
    """The whole DeleteObjects body, verified as a forwarded body is (and its payload hash
    always); sends ``100 Continue`` first when the client waits for it."""
    request = ctx.request
    client_hash = client_payload_hash(request)
    chunked = is_aws_chunked(request, client_hash)
    _check_delete_body_size(request, chunked)
    await send_continue(ctx)
    body, _ = verified_body(ctx, chunked, client_hash, verify_hash=True)
    return await read_all(body, MAX_DELETE_BODY)


def _check_delete_body_size(request: "FrontRequest", chunked: bool) -> None:
    """Refuse, before reading it, a body that is absent, empty or larger than MAX_DELETE_BODY."""
    declared = request.content_length
    if declared is None:
        if request.body_exists:
            raise errors.MissingContentLength()
        raise errors.MalformedXML()
    if chunked:
        # The encoded body may exceed the decoded one by its chunk framing and signatures.
        if decoded_length(request) > MAX_DELETE_BODY or declared > 2 * MAX_DELETE_BODY + 64 * 1024:
            raise errors.EntityTooLarge()
    elif declared > MAX_DELETE_BODY:
        raise errors.EntityTooLarge()
    if declared == 0:
        raise errors.MalformedXML()


# -- CopyObject and UploadPartCopy ------------------------------------------------------------

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
