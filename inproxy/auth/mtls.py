"""Client-certificate (mutual TLS) authentication.

Serve the proxy over HTTPS with an ``ssl.SSLContext`` that asks for client
certificates and trusts the client CA::

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server_cert, server_key)
    context.load_verify_locations(client_ca)
    context.verify_mode = ssl.CERT_REQUIRED   # or CERT_OPTIONAL (see below)
    ProxyServer(..., ssl=context, authenticator=MTLSAuthenticator())

TLS has then verified the chain before any request is read; this
authenticator turns the verified peer certificate into an Identity: ``name`` is
the subject's common name (or, without one, the first subjectAltName),
``method="mtls"``, and ``claims`` hold ``subject`` and ``issuer`` (attribute
name -> value, a list when an attribute repeats, e.g. several
``organizationalUnitName``), ``sans`` (``[[type, value], ...]``, e.g.
``[["DNS", "a.example"], ["URI", "spiffe://..."]]``), ``serial`` and
``not_after``.

Without a verified certificate (plain HTTP, ``CERT_OPTIONAL`` and no
certificate sent, or a TLS terminator in front): with ``require=True`` (the
default) the request is refused with ``AccessDenied`` and no other
authenticator is asked, so place it first or alone; with ``require=False`` it
is not recognised (``None``) and the next authenticator decides (e.g. mTLS for
services, SigV4 for people, with ``CERT_OPTIONAL``).  Note that with
``CERT_REQUIRED`` a client without a certificate never gets as far as a
request: the handshake fails.  A certificate from which no name can be taken
counts as no certificate.

Combined mode, ``MTLSAuthenticator(then=other)``: the request needs both a
client certificate and the other authenticator's success (the other one not
recognising the request refuses it; a missing certificate is handled by
``require`` as above, before the other one is asked).  The identity is the other's, with
``method="mtls+<other method>"`` and claims ``{**other.claims, "mtls":
<certificate claims>}`` (the certificate's claims nested under ``"mtls"`` so
that nothing of the other identity is overwritten); an authorizer may bind
the two, e.g. require ``claims["mtls"]["subject"]["commonName"] == identity.name``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

from .. import errors
from ..hooks import Authenticator, as_authenticator, call_hook
from ..identity import Identity

if TYPE_CHECKING:
    from ..context import RequestContext

CertMapper = Callable[[Mapping[str, Any]], "Identity | None | Awaitable[Identity | None]"]


class MTLSAuthenticator(Authenticator):
    """The verified TLS client certificate as the Identity (see the module documentation).

    Parameters:
        identity_from_cert: ``cert_claims -> Identity | None`` (sync or async);
            :func:`default_cert_identity` by default.  ``None`` means the certificate
            names nobody (treated as no certificate).
        require: refuse requests without a usable certificate (True) or leave them
            to the next authenticator (False).
        then: combined mode: an Authenticator (or function) that must also succeed.
    """

    def __init__(self, *, identity_from_cert: CertMapper | None = None, require: bool = True,
                 then: Any = None) -> None:
        self.identity_from_cert = identity_from_cert or default_cert_identity
        self.require = require
        self.then = as_authenticator(then) if then is not None else None

    def __repr__(self) -> str:
        return f"MTLSAuthenticator(require={self.require}, then={self.then!r})"

    async def authenticate(self, ctx: "RequestContext") -> Identity | None:
        claims = peer_certificate_claims(ctx.request.transport)
        identity = await call_hook(self.identity_from_cert, claims) if claims is not None else None
        if identity is None:
            if self.require:
                raise errors.AccessDenied("A valid client certificate is required.")
            return None
        if self.then is None:
            return identity
        return await self._combined(ctx, identity)

    async def _combined(self, ctx: "RequestContext", cert_identity: Identity) -> Identity:
        other = await self.then.authenticate(ctx)
        if other is None:
            raise errors.AccessDenied("This request needs credentials besides the client certificate.")
        claims = {**other.claims, "mtls": dict(cert_identity.claims)}
        return Identity(name=other.name, method=f"mtls+{other.method}", claims=claims, token=other.token)


def default_cert_identity(claims: Mapping[str, Any]) -> Identity | None:
    """``name`` = subject commonName, else the first subjectAltName value; ``None`` if neither."""
    common_name = claims.get("subject", {}).get("commonName")
    if isinstance(common_name, list):
        common_name = common_name[0]
    name = common_name or next((value for _, value in claims.get("sans", []) if value), None)
    if not name:
        return None
    return Identity(name=name, method="mtls", claims=dict(claims))


def peer_certificate_claims(transport: Any) -> dict[str, Any] | None:
    """The verified peer certificate of a TLS transport as claims; ``None`` without one."""
    if transport is None or transport.get_extra_info("ssl_object") is None:
        return None
    cert = transport.get_extra_info("peercert")
    if not cert:  # None, or {} when the certificate was not verified (CERT_NONE)
        return None
    return {
        "subject": _names(cert.get("subject", ())),
        "issuer": _names(cert.get("issuer", ())),
        "sans": [[kind, value] for kind, value in cert.get("subjectAltName", ())],
        "serial": cert.get("serialNumber", ""),
        "not_after": cert.get("notAfter", ""),
    }


def _names(rdns: Any) -> dict[str, Any]:
    """``((('commonName', 'x'),), ...)`` as ``{"commonName": "x"}`` (repeated attributes as lists)."""
    names: dict[str, Any] = {}
    for rdn in rdns:
        for attribute, value in rdn:
            if attribute not in names:
                names[attribute] = value
            elif isinstance(names[attribute], list):
                names[attribute].append(value)
            else:
                names[attribute] = [names[attribute], value]
    return names
