"""aiohttp's low-level server, adapted: its own refusals are S3 XML errors too."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from . import errors

log = logging.getLogger("inproxy")


class S3Server(web.Server):
    """aiohttp's low-level server whose own answers (requests it cannot parse, header
    limits) are S3 XML errors too, so every client sees one error format."""

    def __call__(self) -> RequestHandler:
        # What web.Server.__call__ does, with our handler class (aiohttp offers no option for it).
        return S3RequestHandler(self, loop=self._loop, **self._kwargs)

    def _make_request(self, message, payload, protocol, writer, task) -> web.BaseRequest:
        # The connection remembers its latest request body, for S3RequestHandler.connection_lost.
        if isinstance(protocol, S3RequestHandler):
            protocol.last_payload = payload
        return super()._make_request(message, payload, protocol, writer, task)


class S3RequestHandler(RequestHandler):
    """aiohttp's connection handler, with S3 XML errors and an end to lingering on lost connections."""

    last_payload: Any = None  # the body of the connection's latest request

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        # After an answer that left the body unread (a refusal), aiohttp keeps reading it for
        # up to 10 s.  If the client leaves meanwhile that body never ends, and stop() would
        # wait on it: end it.  A body a handler is still reading has aiohttp's error already.
        payload, self.last_payload = self.last_payload, None
        if payload is not None and payload.exception() is None and not payload.is_eof():
            payload.feed_eof()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # A response is already on the wire: only a broken connection can tell the client.
            raise ConnectionError("response already started; cannot answer an error")
        err = _http_error(status, exc)
        request_id = errors.new_request_id()
        if err.status >= 500:  # a bug, not a bad client: keep the traceback
            log.error("request %s from %s failed", request_id, request.remote, exc_info=exc)
        else:
            # The exception's text may quote a header (an Authorization value): log its type only.
            log.warning("request %s from %s refused by the HTTP parser: %s (%d)", request_id,
                        request.remote, type(exc).__name__ if exc else message, status)
        response = web.Response(status=err.status, body=err.to_xml(request_id=request_id),
                                content_type="application/xml",
                                headers={"x-amz-request-id": request_id})
        response.force_close()  # the parser's state is unknown: never read another request here
        return response


def _http_error(status: int, exc: BaseException | None) -> errors.S3Error:
    """The S3 error for a request aiohttp refused before the pipeline saw it."""
    # aiohttp has no exception class for "too many headers": its message is all there is.
    if isinstance(exc, LineTooLong) or "too many headers" in str(exc).lower():
        return errors.RequestHeaderSectionTooLarge()
    if status == 400:
        return errors.InvalidRequest("The request is not valid HTTP/1.1.")
    if status == 504:
        return errors.GatewayTimeout()
    return errors.InternalError()


