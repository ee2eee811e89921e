"""Zero-copy bodies: large bodies that nothing in the proxy needs to see go socket to socket.

A GET answer or a PUT body is spliced (:mod:`inproxy.splice`) between the client's socket
and the backend's, never entering Python, when all of these hold:

* Linux, plain TCP on both sides (TLS encrypts in user space), the lean upstream client;
* no hook sees the bytes (``request_body_filter`` / ``response_body_filter`` left at
  their defaults) and the proxy does not need them: no bucket renaming in an XML answer,
  no ``aws-chunked`` decoding, no ``x-amz-content-sha256`` to check while streaming;
* a Content-Length of at least :data:`SPLICE_MIN_BYTES` (below that, copying is cheaper
  than the set-up).

Otherwise the body streams through Python as usual: the result is the same bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import errors
from .body import once
from .s3.headers import decimal_count
from .splice import Pipes, SpliceConnectionError, SpliceTimeout, available
from .upstream_client import SpliceBody

if TYPE_CHECKING:
    from .context import RequestContext
    from .front import ResponseWriter
    from .pipeline import Pipeline

#: Bodies smaller than this are copied: a splice costs a pipe and a few system calls.
SPLICE_MIN_BYTES = 256 * 1024
#: ``ctx.state`` key: the plain client body the pipeline made (a splice may replace it).
STATE_PLAIN_BODY = "plain_body"
#: ``ctx.state`` key: which bodies were spliced, ``("request",)``, ``("response",)`` or both.
STATE_SPLICED = "spliced"


def supported(pipeline: "Pipeline") -> tuple[bool, bool]:
    """Whether this pipeline may splice (request bodies, response bodies) at all."""
    if not available() or pipeline.pool.client != "lean":
        return False, False
    return not pipeline._filters_body, not pipeline._filters_response_body


def _large(length: Any) -> bool:
    count = decimal_count(length) if isinstance(length, str) else None
    return count is not None and count >= SPLICE_MIN_BYTES


async def relay_response(ctx: "RequestContext", upstream: Any, writer: "ResponseWriter",
                         pipes: Pipes) -> bool:
    """Send the rest of ``upstream``'s body by splicing; False (nothing done) when it cannot
    be, also when ``pipes`` has none free (the body is then copied)."""
    if ctx.request.method == "HEAD" or not _large(upstream.headers.get("content-length")):
        return False
    if ctx.request.splice_fd() is None:
        return False
    pipe = pipes.take()
    if pipe is None:
        return False
    detach = getattr(upstream, "detach_body", None)
    taken = detach() if detach is not None else None
    if taken is None:
        pipes.give_back(pipe, clean=True)
        return False
    clean = False
    try:
        buffered, remaining, fd = taken
        if buffered:
            await writer.write(buffered)
            ctx.bytes_out += len(buffered)
        ctx.state[STATE_SPLICED] = ctx.state.get(STATE_SPLICED, ()) + ("response",)
        await writer.splice_body(fd, remaining, timeout=ctx.backend.read_timeout, pipe=pipe)
        clean = True  # a complete splice leaves its pipe empty
        ctx.bytes_out += remaining
        await writer.finish()
        return True
    finally:
        pipes.give_back(pipe, clean=clean)


def request_body(ctx: "RequestContext", pipes: Pipes) -> SpliceBody | None:
    """The client's body as a :class:`SpliceBody` for the upstream request, taken over from
    the client connection, or None when it must stream through Python (also when ``pipes``
    has none free).  Call it after ``100 Continue`` went out, right before sending, and
    :func:`body_done` afterwards."""
    body = ctx.body
    if body is None or ctx.state.get(STATE_PLAIN_BODY) is not body or ctx.backend.scheme != "http":
        return None
    if not _large(ctx.request.headers.get("content-length")):
        return None
    pipe = pipes.take()
    if pipe is None:
        return None
    taken = ctx.request.take_body()
    if taken is None:
        pipes.give_back(pipe, clean=True)
        return None
    prefix, remaining, fd = taken
    if remaining == 0:  # everything had arrived already: send it as it is
        pipes.give_back(pipe, clean=True)
        ctx.request.body_returned(True)
        ctx.body = once(prefix)
        ctx.bytes_in += len(prefix)
        return None
    ctx.state[STATE_SPLICED] = ctx.state.get(STATE_SPLICED, ()) + ("request",)
    return SpliceBody(prefix, fd, remaining, timeout=ctx.backend.read_timeout, pipe=pipe)


def body_done(ctx: "RequestContext", body: SpliceBody, pipes: Pipes,
              exc: BaseException | None = None) -> None:
    """Give the client connection (and the pipe) back after a spliced upload; a failure on
    the client's side becomes the answer (``IncompleteBody``, ``RequestTimeout``), not a
    backend error."""
    if body.pipe is not None:
        pipes.give_back(body.pipe, clean=body.complete)  # a complete splice left it empty
        body.pipe = None
    ctx.request.body_returned(body.complete)
    if body.complete:
        ctx.bytes_in += len(body.prefix) + body.remaining
    cause = exc.__cause__ if exc is not None else None
    if isinstance(cause, SpliceTimeout) and cause.source:
        ctx.state["body_error"] = errors.RequestTimeout()
    elif isinstance(cause, SpliceConnectionError) and cause.source:
        ctx.state["body_error"] = errors.IncompleteBody()
