"""inproxy: an S3 reverse proxy inside your application's asyncio event loop.

Clients talk S3 to ``proxy.endpoint_url``; the proxy authenticates them, asks
the application's hooks whether they may, re-signs with the backend's own
credentials and streams both ways.
"""

from .backend import Backend
from .context import AccessRequest, RequestContext, UpstreamRequest
from .credentials import Credentials
from .errors import S3Error
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
from .providers import AWSDefaultChain, IBMIAMToken
from .secrets import Cached, SecretsCache
from .server import ProxyServer

__version__ = "0.1.0"

__all__ = [
    "ANONYMOUS", "AWSDefaultChain", "AccessRequest", "AllowAll", "Authenticator", "Authorizer",
    "Backend", "Cached", "CredentialProvider", "Credentials", "Decision", "DenyAll",
    "IBMIAMToken", "Identity", "ProxyHooks", "ProxyServer", "RequestContext", "S3Error",
    "SecretsCache", "UpstreamRequest", "blocking",
]
