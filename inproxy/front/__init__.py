"""The proxy's client-facing HTTP/1.1 server: asyncio protocols and aiohttp's C parser.

``aiohttp.web.Server`` builds more per request than a proxy reads (a request object with
URL, cookies, match info; a response object with its own header handling) and costs a
large share of a small request.  This package is the part of it the proxy needs:

* :mod:`.protocol`: one ``asyncio.Protocol`` per client connection (parsing with aiohttp's
  C ``HttpRequestParser``, keep-alive, pipelining, flow control, refusals as S3 XML errors);
* :mod:`.request`: what the pipeline and hooks read of a request (method, raw path,
  headers, body stream, peer);
* :mod:`.response`: writing an answer: a streamed one with backpressure, or a whole one;
* :mod:`.server`: the listening socket, the live connections, and a bounded shutdown.
"""

from .request import FrontRequest
from .response import ResponseWriter
from .server import FrontServer

__all__ = ["FrontRequest", "FrontServer", "ResponseWriter"]
