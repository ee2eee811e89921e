"""Credential providers for backends: the AWS default chain and IBM Cloud IAM."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import aiohttp

from .credentials import Credentials
from .hooks import CredentialProvider
from .identity import Identity

if TYPE_CHECKING:
    from .backend import Backend

IBM_IAM_TOKEN_URL = "https://iam.cloud.ibm.com/identity/token"


class AWSDefaultChain(CredentialProvider):
    """Backend credentials from botocore's default chain: environment, shared config and
    credentials files, web identity, container and instance metadata.

    botocore refreshes expiring credentials itself; the proxy's SecretsCache
    holds the frozen value until shortly before its expiry, shared by every
    identity.  Resolution can touch the network (metadata endpoints), so it
    runs in a thread.
    """

    def __init__(self, profile: str | None = None) -> None:
        self.profile = profile
        self._credentials = None

    def cache_scope(self, identity: Identity, bucket: str | None) -> tuple:
        return ()

    async def get_credentials(self, identity: Identity, bucket: str | None,
                              backend: "Backend") -> Credentials:
        return await asyncio.to_thread(self._frozen)

    def _frozen(self) -> Credentials:
        if self._credentials is None:
            import botocore.session

            self._credentials = botocore.session.Session(profile=self.profile).get_credentials()
        if self._credentials is None:
            raise RuntimeError("the AWS default credential chain found no credentials")
        frozen = self._credentials.get_frozen_credentials()
        expiry = getattr(self._credentials, "_expiry_time", None)
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token,
                           expires_at=expiry.timestamp() if expiry is not None else None)


class IBMIAMToken(CredentialProvider):
    """An IBM Cloud API key exchanged for an IAM bearer token (for IBM COS).

    The token is cached until shortly before its expiry (the SecretsCache's
    ``expiry_margin``) and refreshed ahead of it; ``iam_url`` may point at a
    private or test IAM endpoint.
    """

    def __init__(self, api_key: str, *, iam_url: str = IBM_IAM_TOKEN_URL, timeout: float = 30.0) -> None:
        self._api_key = api_key
        self.iam_url = iam_url
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"IBMIAMToken(iam_url={self.iam_url!r})"

    def cache_scope(self, identity: Identity, bucket: str | None) -> tuple:
        return ()

    async def get_credentials(self, identity: Identity, bucket: str | None,
                              backend: "Backend") -> Credentials:
        form = {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": self._api_key}
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(self.iam_url, data=form, headers={"Accept": "application/json"}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"IBM IAM token request failed with HTTP {resp.status}")
                payload = await resp.json(content_type=None)
        expires_at = payload.get("expiration")
        if expires_at is None and "expires_in" in payload:
            expires_at = time.time() + float(payload["expires_in"])
        return Credentials(bearer_token=payload["access_token"], expires_at=expires_at)
