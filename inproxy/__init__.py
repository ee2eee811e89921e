"""inproxy: an S3 reverse proxy inside your application's asyncio event loop.

Clients talk S3 to ``proxy.endpoint_url``; the proxy authenticates them, asks
the application's hooks whether they may, re-signs with the backend's own
credentials and streams both ways.
"""

from .auth.anonymous import AnonymousAccess
from .auth.jwt import BearerAuthenticator, JWTVerifier
from .auth.mtls import MTLSAuthenticator
from .auth.sigv4 import KeyStore, SigV4Authenticator
from .auth.simple import SimpleTokenAuth
from .auth.sts import STSEndpoint
from .backend import Backend
from .context import AccessRequest, RequestContext, UpstreamRequest
from .credentials import Credentials
from .errors import S3Error
from .front import FrontRequest
from .hooks import (
    AllowAll,
    Authenticator,
    Authorizer,
    CredentialProvider,
    Decision,
    DenyAll,
    ProxyHooks,
    blocking,
)
from .identity import ANONYMOUS, Identity
from .policy import PrefixPolicy, Rule
from .presign import presign_url
from .providers import AWSDefaultChain, IBMIAMToken
from .secrets import Cached, SecretsCache
from .server import ProxyServer

__version__ = "0.1.0"

__all__ = [
    "ANONYMOUS", "AnonymousAccess", "AWSDefaultChain", "AccessRequest", "AllowAll", "Authenticator", "Authorizer",
    "Backend", "BearerAuthenticator", "Cached", "CredentialProvider", "Credentials", "Decision",
    "DenyAll", "FrontRequest", "IBMIAMToken", "Identity", "JWTVerifier", "KeyStore", "MTLSAuthenticator",
    "PrefixPolicy", "ProxyHooks", "ProxyServer", "RequestContext", "Rule", "S3Error", "STSEndpoint", "SecretsCache",
    "SigV4Authenticator", "SimpleTokenAuth", "UpstreamRequest", "blocking", "presign_url",
]
