"""The request pipeline: runs one client request through every lifecycle phase."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import TYPE_CHECKING, AsyncIterator, Sequence

import aiohttp
from aiohttp import web

from . import errors, spliced
from .authorize import STATE_BUFFERED_BODY, authorize_request, upstream_headers
from .body import client_payload_hash, forward_checksum, is_aws_chunked, once, send_continue, verified_body
from .context import AccessRequest, RequestContext, RequestIds, UpstreamRequest
from .decisions import ScopedDecisions, is_allowed
from .errors import S3Error
from .hooks import Authenticator, Authorizer, ProxyHooks
from .s3 import rename, sigv4
from .s3.headers import PRESIGN_PARAMS, forwarded_headers, headers_to_sign, response_headers
from .s3.request import parse_s3_request
from .s3.xml import list_buckets_xml
from .splice import Pipes

if TYPE_CHECKING:
    from .backend import BackendMap
    from .front import FrontRequest, ResponseWriter
    from .credentials import Credentials
    from .secrets import SecretsCache
    from .upstream import UpstreamPool

log = logging.getLogger("inproxy")
# A backend that failed or stalled while its answer was read.
_BACKEND_FAILURES = (aiohttp.ClientError, asyncio.TimeoutError)


class Pipeline:
    """One proxy's request handler; all of its state is per proxy."""

    # Applies what authorization leaves in ctx.state (see inproxy.authorize): a buffered
    # body, upstream headers, an already-sent 100 Continue.
    honours_authorization_state = True

    def __init__(self, *, backends: "BackendMap", authenticators: Sequence[Authenticator],
                 authorizer: Authorizer, credential_provider, hooks: ProxyHooks,
                 cache: "SecretsCache", signer: sigv4.Signer, pool: "UpstreamPool",
                 base_domains: Sequence[str] = (), max_header_bytes: int = 16 * 1024,
                 authorize_timeout: float = 10.0, cache_decisions: float = 0.0,
                 verify_payload_hash: bool = True, cache_namespace: object = None,
                 endpoints: Sequence = (), max_splices: int = 32) -> None:
        self.backends = backends
        self.authenticators = list(authenticators)
        self.authorizer = authorizer
        self.credential_provider = credential_provider
        self.hooks = hooks
        self.cache = cache
        self.signer = signer
        self.pool = pool
        self.base_domains = tuple(base_domains)
        self.max_header_bytes = max_header_bytes
        self.authorize_timeout = authorize_timeout
        self.cache_decisions = cache_decisions
        self.verify_payload_hash = verify_payload_hash
        self.scoped_decisions = ScopedDecisions()  # allows/denies a hook scoped to a prefix
        # Non-S3 services on the proxy's own endpoint (e.g. STS): each may answer a request first.
        self.endpoints = list(endpoints)
        self.cache_namespace = cache_namespace if cache_namespace is not None else object()
        self._filters_body = _overrides(hooks, "request_body_filter")
        self._filters_response_body = _overrides(hooks, "response_body_filter")
        self._has_logging_hook = _overrides(hooks, "logging")
        # Phases the hooks leave at their default are skipped: each await costs on every request.
        self._has_request_filter = _overrides(hooks, "request_filter")
        self._has_upstream_peer = _overrides(hooks, "upstream_peer")
        self._has_upstream_request_filter = _overrides(hooks, "upstream_request_filter")
        self._has_response_filter = _overrides(hooks, "response_filter")
        self._request_ids = RequestIds()
        self._splice_requests, self._splice_responses = spliced.supported(self)
        self.pipes = Pipes(max_splices)  # kernel pipes for splicing, bounded: see Pipes

    async def handle(self, request: "FrontRequest") -> web.Response | None:
        """Answer one request (streamed through ``request.writer``, or returned whole for the
        connection to send); always logs once."""
        ctx = RequestContext(request, request_id=self._request_ids())
        try:
            response = await self._process(ctx)
        except S3Error as err:
            response = self._failed(ctx, err, err)
        except asyncio.CancelledError as exc:  # the proxy is stopping: still logged once
            ctx.error = ctx.error or exc
            await self._logging(ctx)
            raise
        except Exception as exc:  # a hook or the proxy itself failed: details to the log only
            log.exception("request %s failed", ctx.request_id)
            response = self._failed(ctx, exc, errors.InternalError())
        ctx.status = ctx.status or (response.status if response is not None else None)
        if self._has_logging_hook or self._logs_requests:
            await self._logging(ctx)
        return response

    async def _process(self, ctx: RequestContext) -> web.Response | None:
        request = ctx.request
        self._check_header_size(request)
        for endpoint in self.endpoints:
            answer = await endpoint.handle(ctx)
            if answer is not None:
                return answer
        raw_path, _, raw_query = request.raw_path.partition("?")
        ctx.s3 = parse_s3_request(request.method, raw_path, raw_query, request.host,
                                  request.headers, self.base_domains)
        ctx.identity = await self._authenticate(ctx)
        if not ctx.s3.operation:
            raise errors.NotImplementedError_("This S3 operation is not supported by the proxy.")
        if ctx.s3.operation == "ListBuckets":
            return await self._list_buckets(ctx)
        await authorize_request(self, ctx)
        if self._has_request_filter:
            answer = await self.hooks.request_filter(ctx)
            if answer is not None:
                return answer
        backend = await self.hooks.upstream_peer(ctx) if self._has_upstream_peer else None
        ctx.backend = backend or self.backends.route(ctx.s3.bucket)
        if ctx.backend is None:
            raise errors.NoSuchBucket(BucketName=ctx.s3.bucket or "")
        ctx.credentials = await self._backend_credentials(ctx)
        ctx.upstream = self._upstream_request(ctx)
        if self._has_upstream_request_filter:
            await self.hooks.upstream_request_filter(ctx)
        self._sign(ctx)
        return await self._forward(ctx)

    # -- authentication and authorization -------------------------------------------------

    async def _authenticate(self, ctx: RequestContext):
        for authenticator in self.authenticators:
            identity = await authenticator.authenticate(ctx)
            if identity is not None:
                return identity
        raise errors.AccessDenied()

    async def is_allowed(self, access) -> bool:
        """Ask the authorizer through the decision caches (inproxy.decisions.is_allowed): keyed
        by every input, scoped decisions, a Decision's own ttl; a hook that raises, times out
        or answers anything but a bool or a Decision denies, and that denial is not cached."""
        return await is_allowed(self, access)

    async def _list_buckets(self, ctx: RequestContext) -> web.Response:
        """ListBuckets is answered by the proxy: the configured buckets this identity may see."""
        visible = []
        for name in self.backends.bucket_names:
            access = AccessRequest(ctx.identity, "ListBuckets", name, method=ctx.s3.method,
                                   source_ip=ctx.request.remote)
            if await self.is_allowed(access):
                visible.append(name)
        ctx.status = 200
        return web.Response(body=list_buckets_xml(visible, owner=ctx.identity.name),
                            content_type="application/xml")

    # -- backend credentials and the upstream request ---------------------------------------

    async def _backend_credentials(self, ctx: RequestContext) -> "Credentials":
        provider = ctx.backend.credential_provider or self.credential_provider
        if provider is None:
            raise errors.InternalError()  # misconfiguration: logged by handle()
        if not getattr(provider, "cacheable", True):
            return await provider.get_credentials(ctx.identity, ctx.s3.bucket, ctx.backend)
        key = ("credentials", self.cache_namespace, id(provider), id(ctx.backend),
               provider.cache_scope(ctx.identity, ctx.s3.bucket))
        found = self.cache.get_fresh(key)  # the common case: no coroutine
        if found is not None:
            return found
        return await self.cache.get(
            key, lambda: provider.get_credentials(ctx.identity, ctx.s3.bucket, ctx.backend))

    def _upstream_request(self, ctx: RequestContext) -> UpstreamRequest:
        s3, backend, request = ctx.s3, ctx.backend, ctx.request
        client_hash = client_payload_hash(request)
        chunked = is_aws_chunked(request, client_hash)
        headers = forwarded_headers(request.headers.items(), decoding_chunked=chunked)
        if ctx.state:  # what authorization left: content-md5, a rewritten x-amz-copy-source
            headers.update(upstream_headers(self, ctx))
        encoded_key = sigv4.uri_encode(s3.key, keep_slash=True) if s3.key is not None else None
        host, path = backend.locate(s3.bucket, encoded_key)
        # A presigned URL's own parameters are all its query, usually: nothing to canonicalise.
        query = "" if s3.params.keys() <= PRESIGN_PARAMS else s3.canonical_query(drop=PRESIGN_PARAMS)
        ctx.body, ctx.body_length = self._request_body(ctx, chunked, client_hash)
        buffered = ctx.state.get(STATE_BUFFERED_BODY)
        # The client's trailing checksum goes on, verified; not when a hook may change the bytes.
        reframed = chunked and buffered is None and not self._filters_body and forward_checksum(ctx, headers)
        if ctx.body_length is not None and (ctx.body is not None or request.method in ("PUT", "POST")):
            headers["content-length"] = str(ctx.body_length)
        payload_hash = client_hash if client_hash and not chunked and sigv4.is_sha256_hex(client_hash) \
            else sigv4.UNSIGNED_PAYLOAD
        if reframed:  # the proxy's own framing: see inproxy.s3.reframe
            payload_hash = sigv4.STREAMING_UNSIGNED_PAYLOAD_TRAILER
        if buffered is not None:  # held whole: sign its real hash (unless a hook may change it)
            payload_hash = sigv4.UNSIGNED_PAYLOAD if self._filters_body else hashlib.sha256(buffered).hexdigest()
        return UpstreamRequest(request.method, backend.scheme, host, path, query, headers, payload_hash)

    def _request_body(self, ctx: RequestContext, chunked: bool,
                      client_hash: str) -> tuple[AsyncIterator[bytes] | None, int | None]:
        buffered = ctx.state.get(STATE_BUFFERED_BODY)
        if buffered is not None:  # read, verified and authorized already (DeleteObjects)
            return self._filtered_body(ctx, once(buffered)), len(buffered)
        body, length = verified_body(ctx, chunked, client_hash, verify_hash=self.verify_payload_hash)
        if body is None:
            return None, length
        body = self._filtered_body(ctx, body)
        hash_checked = self.verify_payload_hash and sigv4.is_sha256_hex(client_hash)
        if self._splice_requests and not chunked and not hash_checked:
            ctx.state[spliced.STATE_PLAIN_BODY] = body  # nothing needs its bytes: it may be spliced
        return body, length

    async def _filtered_body(self, ctx: RequestContext, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The body as forwarded: counted, through the hook, errors remembered for the answer."""
        try:
            async for chunk in body:
                if self._filters_body:
                    chunk = await self.hooks.request_body_filter(ctx, chunk)
                ctx.bytes_in += len(chunk)
                yield chunk
        except BaseException as exc:
            ctx.state["body_error"] = exc
            raise

    def _sign(self, ctx: RequestContext) -> None:
        up, creds, backend = ctx.upstream, ctx.credentials, ctx.backend
        up.headers["host"] = up.host
        if creds.bearer_token:
            up.headers["authorization"] = f"Bearer {creds.bearer_token}"
            return
        signed = headers_to_sign(up.headers, backend.unsigned_headers)
        added = self.signer.sign(
            up.method, up.path, up.query, signed, up.payload_hash,
            access_key=creds.access_key, secret_key=creds.secret_key,
            session_token=creds.session_token, region=backend.region, service=backend.service,
            query_is_canonical=True)
        up.headers.update(added)

    # -- forwarding and streaming ----------------------------------------------------------

    async def _forward(self, ctx: RequestContext) -> None:
        data = ctx.body
        zero_copy = None
        if data is not None:  # only now, authenticated and authorized, may the client send it
            await send_continue(ctx)
            zero_copy = spliced.request_body(ctx, self.pipes)
            data = zero_copy or ctx.body
        try:
            upstream = await self.pool.send(ctx.backend, ctx.upstream, data)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            if zero_copy is not None:
                spliced.body_done(ctx, zero_copy, self.pipes, exc)
            raise self._upstream_failure(ctx, exc) from exc
        if zero_copy is not None:
            spliced.body_done(ctx, zero_copy, self.pipes)
        try:
            return await self._relay_response(ctx, upstream)
        finally:
            upstream.release()

    def _upstream_failure(self, ctx: RequestContext, exc: BaseException) -> S3Error:
        body_error = ctx.state.get("body_error")
        if isinstance(body_error, S3Error):  # the client's body was short or did not verify
            return body_error
        if body_error is not None:  # request_body_filter raised: a hook failure, not the backend's
            log.error("request %s: request body failed", ctx.request_id, exc_info=body_error)
            return errors.InternalError()
        log.warning("request %s: backend %s failed: %r", ctx.request_id, ctx.backend.netloc, exc)
        if isinstance(exc, asyncio.TimeoutError):
            return errors.GatewayTimeout()
        return errors.BadGateway()

    async def _relay_response(self, ctx: RequestContext, upstream: aiohttp.ClientResponse) -> None:
        try:
            headers, chunks = await self._answer_head(ctx, upstream)
        except _BACKEND_FAILURES as exc:  # reading a renamed bucket's XML: nothing sent yet
            upstream.close()
            raise self._upstream_failure(ctx, exc) from exc
        writer = ctx.request.writer
        try:
            writer.head(upstream.status, upstream.reason, headers,
                        close=ctx.state.get("body_error") is not None)
        except ValueError as exc:  # a header no HTTP message can carry (CR/LF...): nothing sent yet
            upstream.close()
            if self._has_response_filter:
                raise  # perhaps the hook's: a failure of the proxy's side (500)
            log.warning("request %s: backend %s sent a header no HTTP message can carry: %s",
                        ctx.request_id, ctx.backend.netloc, exc)
            raise errors.BadGateway() from exc
        ctx.status = upstream.status
        try:
            if chunks is None:
                content = upstream.content
                if content.is_eof() and not self._filters_response_body:
                    # A small answer that arrived whole with its head: one write, no read loop.
                    data = content.read_nowait()
                    ctx.bytes_out += len(data)
                    if writer.end(data):
                        await writer.drain()
                    return
                if self._splice_responses and await spliced.relay_response(ctx, upstream, writer, self.pipes):
                    return
                chunks = content.iter_any()
            await self._relay_body(ctx, chunks, writer)
        except Exception as exc:
            upstream.close()
            if isinstance(exc, _BACKEND_FAILURES) and writer.retract():
                # The backend failed before the first body byte: the head was still held, so
                # the client gets a 502/504 instead of a cut connection.
                ctx.status = None
                raise self._upstream_failure(ctx, exc) from exc
            # The status line may be out (or the client gone): another answer is impossible,
            # and a short body must never look complete.  Breaking the connection is the only
            # signal left.
            ctx.error = exc
            self._log_broken_response(ctx, exc)
            _abort(ctx.request)

    async def _answer_head(self, ctx: RequestContext, upstream: aiohttp.ClientResponse) -> tuple:
        """(headers, body chunks or None when the body passes untouched) of the answer: the
        backend's, or edited for a renamed bucket and by the response_filter hook."""
        if not (self._has_response_filter or ctx.backend.bucket is not None):
            return upstream.headers.items(), None  # as they came: the writer drops hop-by-hop headers
        headers = response_headers(upstream.headers.items())  # a list to edit
        chunks = await self._renamed_xml(ctx, upstream, headers)
        if self._has_response_filter:
            await self.hooks.response_filter(ctx, upstream.status, headers)
        return headers, chunks

    async def _renamed_xml(self, ctx: RequestContext, upstream: aiohttp.ClientResponse,
                           headers: list[tuple[str, str]]) -> AsyncIterator[bytes] | None:
        """For a renamed bucket, the backend's small XML answer with the client's bucket name
        (and its Content-Length fixed); None when the body streams through untouched."""
        real = ctx.backend.backend_bucket(ctx.s3.bucket)
        if real == ctx.s3.bucket or ctx.request.method == "HEAD":
            return None
        if not rename.is_rewritable(upstream.headers.get("content-type"), upstream.headers.get("content-length")):
            return None
        body = rename.rename_bucket(await upstream.content.read(), real, ctx.s3.bucket)
        headers[:] = [(n, str(len(body)) if n.lower() == "content-length" else v) for n, v in headers]
        return once(body)

    async def _relay_body(self, ctx: RequestContext, chunks: AsyncIterator[bytes],
                          writer: "ResponseWriter") -> None:
        async for chunk in chunks:
            if self._filters_response_body:
                chunk = await self.hooks.response_body_filter(ctx, chunk)
            ctx.bytes_out += len(chunk)
            await writer.write(chunk)
        await writer.finish()

    def _log_broken_response(self, ctx: RequestContext, exc: Exception) -> None:
        if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)):
            log.warning("request %s: response cut after %d bytes: %r", ctx.request_id, ctx.bytes_out, exc)
        else:  # a response hook failed
            log.error("request %s: response failed after %d bytes", ctx.request_id, ctx.bytes_out,
                      exc_info=exc)

    # -- errors and logging -----------------------------------------------------------------

    def _check_header_size(self, request: "FrontRequest") -> None:
        size = sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
        if size > self.max_header_bytes:
            raise errors.RequestHeaderSectionTooLarge()

    def _failed(self, ctx: RequestContext, exc: BaseException, err: S3Error) -> web.Response | None:
        """The error answer for ``exc``; None (the connection broken) once the head is out."""
        ctx.error = exc
        if ctx.request.writer.started:  # too late for another answer: only breaking the connection tells
            _abort(ctx.request)
            return None
        return self._error_response(ctx, err)

    def _error_response(self, ctx: RequestContext, err: S3Error) -> web.Response:
        resource = ctx.s3.resource if ctx.s3 is not None else ""
        body = err.to_xml(resource=resource, request_id=ctx.request_id)
        head = ctx.request.method == "HEAD"
        response = web.Response(status=err.status, body=None if head else body,
                                content_type="application/xml",
                                headers={"x-amz-request-id": ctx.request_id})
        # An unread body (e.g. after refusing Expect: 100-continue) is never parsed as the next
        # request: the connection closes after this answer (inproxy.front).
        return response

    @property
    def _logs_requests(self) -> bool:
        return log.isEnabledFor(logging.INFO)  # the line's arguments cost on every request

    async def _logging(self, ctx: RequestContext) -> None:
        if self._logs_requests:
            self._log_line(ctx)
        if not self._has_logging_hook:
            return
        try:
            await self.hooks.logging(ctx, ctx.error)
        except Exception:
            log.exception("logging hook failed for request %s", ctx.request_id)

    @staticmethod
    def _log_line(ctx: RequestContext) -> None:
        s3 = ctx.s3
        log.info("%s %s %s %s/%s -> %s in %.1f ms (in %d B, out %d B)%s",
                 ctx.request_id, ctx.identity.name if ctx.identity else "-",
                 s3.operation if s3 else ctx.request.method, s3.bucket if s3 else "-",
                 s3.key if s3 and s3.key is not None else "", ctx.status,
                 (time.monotonic() - ctx.started) * 1000, ctx.bytes_in, ctx.bytes_out,
                 f" error={type(ctx.error).__name__}" if ctx.error else "")


def _abort(request: "FrontRequest") -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _overrides(hooks: ProxyHooks, name: str) -> bool:
    return getattr(type(hooks), name) is not getattr(ProxyHooks, name)
