"""AssumeRoleWithWebIdentity on the proxy's own endpoint: trade a JWT for proxy credentials.

How a JWT reaches the proxy through *standard* S3 SDKs: SDKs cannot send a
bearer token with S3 requests, but all of them implement the STS web-identity
exchange.  So the client (or its SDK's web-identity credential provider, e.g.
``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN`` + ``AWS_ENDPOINT_URL_STS``
pointing at the proxy) posts the JWT to the proxy's STS endpoint, gets back
temporary credentials that this proxy issued (:class:`~inproxy.auth.tokens.TokenIssuer`),
and then signs ordinary S3 requests with SigV4.  The session token is a
proxy-sealed token carrying the identity and the JWT's claims, never the JWT
itself; only proxies sharing the ``token_key`` accept it, and it expires with
the credentials.

The exchange::

    POST / HTTP/1.1
    Content-Type: application/x-www-form-urlencoded

    Action=AssumeRoleWithWebIdentity&Version=2011-06-15&WebIdentityToken=<jwt>
    &RoleArn=arn:aws:iam::123456789012:role/reader&RoleSessionName=app
    &DurationSeconds=3600

(the parameters may also be in the query string, as AWS accepts).  The token
is checked by the :class:`~inproxy.auth.jwt.JWTVerifier`; the credentials live
``min(DurationSeconds or default_duration, max_duration, token exp - now)``
seconds (``DurationSeconds`` above ``max_duration`` is shortened, not refused,
and unlike AWS values below 900 are accepted).  The issued identity is the
verifier's (``name=sub``, ``method="jwt"`` by default) and its claims are the
JWT claims plus ``sts:role_arn`` and ``sts:role_session_name``, for
authorizers.  ``RoleArn`` means only what an ``authorize_role`` hook or an
authorizer makes of it.  Session policies (``Policy``, ``PolicyArns``) are
refused rather than silently ignored.

Answers use STS's XML, including its error format (``ErrorResponse``) with the
codes ``InvalidIdentityToken``, ``ExpiredTokenException``,
``IDPCommunicationError``, ``ValidationError``, ``InvalidAction`` (400) and
``AccessDenied`` (403).  The credentials travel in the response body: serve the
proxy over HTTPS anywhere but on loopback.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping
from urllib.parse import parse_qsl

from aiohttp import web

from .. import errors
from ..hooks import call_hook
from ..identity import Identity
from ..s3.headers import decimal_count
from ..s3.xml import xml_text
from .jwt import JWTMalformed, JWTRejected, JWTVerifier, KeysUnavailable

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..front import FrontRequest
    from ..credentials import Credentials
    from .tokens import TokenIssuer

log = logging.getLogger("inproxy.auth.sts")

ACTION = "AssumeRoleWithWebIdentity"
STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
MAX_BODY_BYTES = 64 * 1024
_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
_ROLE_ARN = re.compile(r"^arn:[^:]+:iam::([^:]*):role/(.+)$")
_FORM = "application/x-www-form-urlencoded"

RoleCheck = Callable[[str, Identity], "bool | Awaitable[bool]"]


class STSError(Exception):
    """An STS error answer: ``code``, HTTP ``status`` and a message safe to send."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status

    def to_xml(self, request_id: str) -> bytes:
        """STS's ``ErrorResponse`` document."""
        kind = "Sender" if self.status < 500 else "Receiver"
        return (f'<ErrorResponse xmlns="{STS_NAMESPACE}"><Error><Type>{kind}</Type>'
                f"<Code>{xml_text(self.code)}</Code><Message>{xml_text(self.message)}</Message></Error>"
                f"<RequestId>{xml_text(request_id)}</RequestId></ErrorResponse>").encode()


@dataclass(frozen=True)
class WebIdentityRequest:
    """The validated parameters of one AssumeRoleWithWebIdentity call."""

    token: str
    role_arn: str
    session_name: str
    duration: int | None


class STSEndpoint:
    """Answers AssumeRoleWithWebIdentity on the proxy's endpoint (pass it in ``endpoints=``).

    Parameters:
        verifier: checks the web identity token.
        max_duration: the longest credential lifetime handed out, seconds.
        default_duration: the lifetime when the request gives no ``DurationSeconds``.
        authorize_role: optional ``(role_arn, identity) -> bool`` (sync or async);
            False answers ``AccessDenied`` (403).
        max_session_token_bytes: the session token carries the identity's claims and
            travels in a header of every S3 request (the proxy's ``max_header_bytes``
            bounds those); a larger one is refused here (``ValidationError``) rather than
            issued unusable.  Trim the claims with the verifier's ``identity_from_claims``.
    """

    def __init__(self, verifier: JWTVerifier, *, max_duration: int = 3600, default_duration: int = 3600,
                 authorize_role: RoleCheck | None = None, max_session_token_bytes: int = 8192) -> None:
        if max_duration < 1 or default_duration < 1:
            raise ValueError("durations must be positive")
        self.verifier = verifier
        self.max_duration, self.default_duration = max_duration, default_duration
        self.authorize_role = authorize_role
        self.max_session_token_bytes = max_session_token_bytes
        self._issuer: "TokenIssuer | None" = None

    def __repr__(self) -> str:
        return f"STSEndpoint({self.verifier!r}, max_duration={self.max_duration})"

    def bind(self, proxy: Any) -> None:
        """Called by the ProxyServer: credentials are issued with its TokenIssuer."""
        self._issuer = proxy.issuer

    async def handle(self, ctx: "RequestContext") -> "web.Response | None":
        """The STS answer for an STS request; ``None`` for anything else (S3 carries on)."""
        if not is_sts_request(ctx.request):
            return None
        try:
            params = await read_parameters(ctx.request)
            return await self._answer(ctx, params)
        except STSError as err:
            ctx.error = err
            return _error_response(ctx, err)

    async def _answer(self, ctx: "RequestContext", params: Mapping[str, str]) -> web.Response:
        call = parse_call(params)
        claims, identity = await self._verify(call.token)
        ctx.identity = identity
        await self._check_role(call.role_arn, identity)
        identity = replace(identity, claims={**identity.claims, "sts:role_arn": call.role_arn,
                                             "sts:role_session_name": call.session_name}, token=None)
        credentials = self._issue(identity, claims, call.duration)
        log.info("request %s: issued web-identity credentials to %s until %s", ctx.request_id,
                 identity.name, _iso8601(credentials.expires_at))
        body = _result_xml(call, claims, credentials, self.verifier, ctx.request_id)
        return web.Response(body=body, content_type="text/xml",
                            headers={"x-amzn-RequestId": ctx.request_id, "cache-control": "no-store"})

    async def _verify(self, token: str) -> tuple[dict[str, Any], Identity]:
        try:
            claims = await self.verifier.decode(token)
            return claims, await self.verifier.identity_for(claims)
        except errors.S3Error as err:
            raise sts_error(err) from None

    async def _check_role(self, role_arn: str, identity: Identity) -> None:
        if self.authorize_role is None:
            return
        if not await call_hook(self.authorize_role, role_arn, identity):
            raise STSError("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity", 403)

    def _issue(self, identity: Identity, claims: Mapping[str, Any], duration: int | None) -> "Credentials":
        if self._issuer is None:
            raise RuntimeError("STSEndpoint is not bound to a proxy (pass it in ProxyServer(endpoints=...))")
        now = self.verifier.clock()
        lifetime = float(min(duration or self.default_duration, self.max_duration))
        exp = claims.get("exp")
        if isinstance(exp, (int, float)):
            lifetime = min(lifetime, exp - now)
        if lifetime < 1:
            raise STSError("ExpiredTokenException", "Token expired: the web identity token is about to expire.")
        credentials = self._issuer.issue(identity, lifetime, now=now)
        if len(credentials.session_token or "") > self.max_session_token_bytes:
            raise STSError("ValidationError", "The web identity token's claims are too large for a session token.")
        return credentials


def is_sts_request(request: "FrontRequest") -> bool:
    """``POST /`` with a form body, or ``GET|POST /?Action=...``: the shapes of STS Query API calls."""
    if request.raw_path.partition("?")[0] != "/" or request.method not in ("GET", "POST"):
        return False
    if "Action" in request.query:
        return True
    return request.method == "POST" and request.content_type == _FORM


async def read_parameters(request: "FrontRequest") -> dict[str, str]:
    """Query and form parameters (the body's win), the first value of each name; the body is bounded."""
    params: dict[str, str] = {}
    for name, value in request.query.items():
        params.setdefault(name, value)
    if request.method == "POST" and request.content_type == _FORM:
        body = await _read_body(request, MAX_BODY_BYTES)
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200)
        except (UnicodeDecodeError, ValueError):
            raise STSError("ValidationError", "The request body is not a valid form.") from None
        form: dict[str, str] = {}
        for name, value in pairs:
            form.setdefault(name, value)
        params.update(form)
    return params


async def _read_body(request: "FrontRequest", limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise STSError("ValidationError", "The request body is too large.")
    if request.headers.get("expect", "").lower() == "100-continue":
        await request.send_continue()
    parts, size = [], 0
    async for chunk in request.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > limit:
            raise STSError("ValidationError", "The request body is too large.")
        parts.append(chunk)
    return b"".join(parts)


def parse_call(params: Mapping[str, str]) -> WebIdentityRequest:
    """Validate the AssumeRoleWithWebIdentity parameters (messages name parameters, never values)."""
    if params.get("Action") != ACTION:
        raise STSError("InvalidAction", "This endpoint only supports AssumeRoleWithWebIdentity.")
    if "Policy" in params or any(name.startswith("PolicyArns.") for name in params):
        raise STSError("ValidationError", "Session policies are not supported by this endpoint.")
    token = params.get("WebIdentityToken", "")
    if not 4 <= len(token) <= 20000:
        raise STSError("ValidationError", _constraint("webIdentityToken", "length between 4 and 20000"))
    role_arn = params.get("RoleArn", "")
    if not 20 <= len(role_arn) <= 2048:
        raise STSError("ValidationError", _constraint("roleArn", "length between 20 and 2048"))
    session_name = params.get("RoleSessionName", "")
    if not _SESSION_NAME.match(session_name):
        raise STSError("ValidationError", _constraint("roleSessionName", r"pattern [\w+=,.@-]{2,64}"))
    return WebIdentityRequest(token, role_arn, session_name, _duration(params.get("DurationSeconds")))


def _duration(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    seconds = decimal_count(value, max_digits=5)
    if seconds is None or not 1 <= seconds <= 43200:
        raise STSError("ValidationError", _constraint("durationSeconds", "an integer between 1 and 43200"))
    return seconds


def _constraint(name: str, what: str) -> str:
    return f"1 validation error detected: Value at '{name}' failed to satisfy constraint: Member must have {what}"


def sts_error(err: errors.S3Error) -> STSError:
    """The STS error for a verifier's S3 error."""
    if isinstance(err, errors.ExpiredToken):
        return STSError("ExpiredTokenException", f"Token expired: {err.message}")
    if isinstance(err, KeysUnavailable):
        return STSError("IDPCommunicationError", "The identity provider's signing keys could not be fetched.")
    if isinstance(err, (JWTRejected, JWTMalformed)):
        return STSError("InvalidIdentityToken", err.message)
    if err.status == 403:  # refused by identity_from_claims
        return STSError("AccessDenied", err.message, 403)
    return STSError(err.code, err.message, err.status)


# -- responses ------------------------------------------------------------------------------


def _result_xml(call: WebIdentityRequest, claims: Mapping[str, Any], creds: "Credentials",
                verifier: JWTVerifier, request_id: str) -> bytes:
    account, role = _role_parts(call.role_arn)
    role_id = "AROA" + base64.b32encode(hashlib.sha256(call.role_arn.encode()).digest()).decode()[:17]
    fields = [
        ("SubjectFromWebIdentityToken", str(claims.get("sub", ""))),
        ("Audience", _audience(claims, verifier.audience)),
        ("AssumedRoleUser", _xml([("Arn", f"arn:aws:sts::{account}:assumed-role/{role}/{call.session_name}"),
                                  ("AssumedRoleId", f"{role_id}:{call.session_name}")])),
        ("Credentials", _xml([("AccessKeyId", creds.access_key), ("SecretAccessKey", creds.secret_key),
                              ("SessionToken", creds.session_token or ""),
                              ("Expiration", _iso8601(creds.expires_at))])),
        ("Provider", str(claims.get("iss") or verifier.issuer or "")),
    ]
    result = _xml(fields)
    return (f'<AssumeRoleWithWebIdentityResponse xmlns="{STS_NAMESPACE}">'
            f"<AssumeRoleWithWebIdentityResult>{result}</AssumeRoleWithWebIdentityResult>"
            f"<ResponseMetadata><RequestId>{xml_text(request_id)}</RequestId></ResponseMetadata>"
            f"</AssumeRoleWithWebIdentityResponse>").encode()


class _Raw(str):
    """Already-serialised XML (not escaped again)."""


def _xml(fields: list[tuple[str, str]]) -> _Raw:
    return _Raw("".join(f"<{name}>{value if isinstance(value, _Raw) else xml_text(value)}</{name}>"
                        for name, value in fields))


def _role_parts(role_arn: str) -> tuple[str, str]:
    match = _ROLE_ARN.match(role_arn)
    return (match.group(1), match.group(2)) if match else ("", role_arn)


def _audience(claims: Mapping[str, Any], configured: Any) -> str:
    aud = claims.get("aud")
    values = [aud] if isinstance(aud, str) else [a for a in aud or [] if isinstance(a, str)]
    accepted = [configured] if isinstance(configured, str) else list(configured or [])
    matching = [a for a in values if a in accepted]
    return (matching or values or [""])[0]


def _iso8601(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error_response(ctx: "RequestContext", err: STSError) -> web.Response:
    response = web.Response(status=err.status, body=err.to_xml(ctx.request_id), content_type="text/xml",
                            headers={"x-amzn-RequestId": ctx.request_id})
    if ctx.request.body_exists and not ctx.request.content.at_eof():
        response.force_close()  # an unread body must not be parsed as the next request
    return response
