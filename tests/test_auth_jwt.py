"""JWT verification and ``Authorization: Bearer`` authentication, over real sockets.

A local OIDC provider (``tests/jwks_server.py``) serves discovery and a JWKS;
the proxy forwards to SeaweedFS (which verifies the proxy's re-signing).  Every
refusal must be an S3 XML error, reach neither the authorizer nor the backend,
and no token may appear in the logs.
"""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import asynccontextmanager

import aiohttp
import pytest

from inproxy import Backend, Identity, ProxyServer
from inproxy.auth.jwt import (
    BearerAuthenticator,
    JWTExpired,
    JWTMalformed,
    JWTRejected,
    JWTVerifier,
    KeysUnavailable,
)
from inproxy.auth.simple import SimpleTokenAuth

from jwks_server import AUDIENCE, OIDCProvider, Recorder, forge, tamper
from util import backend_for, new_bucket

# ---------------------------------------------------------------------------------------------
# fixtures (idp and no_leaks: conftest.py) and helpers


@pytest.fixture(scope="module")
def bucket(seaweed):
    return new_bucket(seaweed, "jwt")


@asynccontextmanager
async def bearer_proxy(seaweed, verifier, recorder=None):
    proxy = ProxyServer(backends={"*": backend_for(seaweed)}, authenticator=[BearerAuthenticator(verifier)],
                        authorizer=recorder or Recorder())
    async with proxy:
        yield proxy


def verifier_for(idp: OIDCProvider, **kwargs) -> JWTVerifier:
    return JWTVerifier(issuer=idp.issuer, audience=AUDIENCE, **kwargs)


async def call(proxy, method: str, path: str, token: str | None = None, data: bytes | None = None):
    """(status, body) of one request to the proxy, with a bearer token when given."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, proxy.endpoint_url + path, headers=headers, data=data) as response:
            return response.status, await response.text()


def code_of(body: str) -> str | None:
    match = re.search(r"<Code>([^<]*)</Code>", body)
    return match.group(1) if match else None


# ---------------------------------------------------------------------------------------------
# through the proxy


@pytest.mark.parametrize("key", ["rsa", "ec"])
async def test_valid_bearer_reaches_the_backend(seaweed, bucket, idp, no_leaks, key):
    recorder = Recorder()
    token = idp.token("alice", kid=idp.rsa_kid if key == "rsa" else idp.ec_kid, email="alice@example.com")
    no_leaks.append(token)
    async with bearer_proxy(seaweed, verifier_for(idp), recorder) as proxy:
        assert (await call(proxy, "PUT", f"/{bucket}/hello-{key}", token, b"hi there"))[0] == 200
        assert await call(proxy, "GET", f"/{bucket}/hello-{key}", token) == (200, "hi there")
    identity = recorder.seen[0].identity
    assert (identity.name, identity.method) == ("alice", "jwt")
    assert identity.claims["email"] == "alice@example.com" and identity.claims["aud"] == AUDIENCE
    assert identity.token == token and token not in repr(identity)


def _refused_tokens(idp: OIDCProvider) -> dict[str, tuple[str, int, str]]:
    claims = idp.claims()
    rsa_pem = idp.keys[idp.rsa_kid].public_pem()
    return {
        "expired": (idp.token(ttl=-120), 400, "ExpiredToken"),
        "wrong-aud": (idp.token(aud="someone-else"), 403, "AccessDenied"),
        "wrong-iss": (idp.token(iss="https://evil.example"), 403, "AccessDenied"),
        "no-exp": (idp.token(exp=None), 403, "AccessDenied"),
        "not-yet-valid": (idp.token(nbf=int(time.time()) + 600), 403, "AccessDenied"),
        "alg-none": (forge({"alg": "none", "typ": "JWT", "kid": idp.rsa_kid}, claims), 400, "InvalidToken"),
        "hs256-with-public-key": (forge({"alg": "HS256", "typ": "JWT", "kid": idp.rsa_kid}, claims,
                                        hmac_key=rsa_pem), 400, "InvalidToken"),
        "tampered-signature": (tamper(idp.token()), 403, "AccessDenied"),
        "tampered-claims": (_swap_claims(idp.token(), idp.token("mallory")), 403, "AccessDenied"),
        "garbage": ("not-a-jwt", 400, "InvalidToken"),
    }


def _swap_claims(token: str, other: str) -> str:
    """``token``'s header and signature with ``other``'s claims."""
    head, _, signature = token.split(".")
    return f"{head}.{other.split('.')[1]}.{signature}"


async def test_invalid_tokens_are_refused_with_s3_errors(seaweed, bucket, idp, no_leaks):
    recorder = Recorder()
    cases = _refused_tokens(idp)
    no_leaks.extend(token for token, _, _ in cases.values())
    async with bearer_proxy(seaweed, verifier_for(idp), recorder) as proxy:
        for name, (token, status, code) in cases.items():
            got_status, body = await call(proxy, "GET", f"/{bucket}/hello", token)
            assert (got_status, code_of(body)) == (status, code), name
            assert body.startswith("<?xml") and token not in body, name
    assert recorder.seen == []


async def test_unknown_kid_refreshes_once_and_a_flood_does_not_fetch(seaweed, bucket, idp, no_leaks):
    verifier = verifier_for(idp, min_refresh_interval=0.3)
    async with bearer_proxy(seaweed, verifier) as proxy:
        assert (await call(proxy, "GET", f"/{bucket}/", idp.token()))[0] == 200
        assert idp.jwks_fetches == 1
        await asyncio.sleep(0.4)
        stranger = idp.add_key("RS256", publish=False)
        status, body = await call(proxy, "GET", f"/{bucket}/", idp.token(kid=stranger))
        assert (status, code_of(body)) == (403, "AccessDenied")
        assert idp.jwks_fetches == 2  # exactly one refresh for the unknown kid
        verifier.key_set.min_refresh_interval = 60  # the flood below comes within the interval
        bogus = [forge({"alg": "RS256", "kid": f"bogus-{i}"}, idp.claims()) for i in range(30)]
        results = await asyncio.gather(*(call(proxy, "GET", f"/{bucket}/", t) for t in bogus))
        assert {status for status, _ in results} == {403}
        assert idp.jwks_fetches == 2
        assert (await call(proxy, "GET", f"/{bucket}/", idp.token()))[0] == 200


async def test_key_rotation_is_picked_up(seaweed, bucket, idp, no_leaks):
    verifier = verifier_for(idp, min_refresh_interval=0.2)
    async with bearer_proxy(seaweed, verifier) as proxy:
        assert (await call(proxy, "GET", f"/{bucket}/", idp.token()))[0] == 200
        fetched = idp.jwks_fetches
        new_kid = idp.add_key("ES256")  # published: the IdP rotated in a new key
        await asyncio.sleep(0.3)
        token = idp.token("bob", kid=new_kid)
        no_leaks.append(token)
        assert (await call(proxy, "GET", f"/{bucket}/", token))[0] == 200
        assert idp.jwks_fetches == fetched + 1
        assert (await call(proxy, "GET", f"/{bucket}/", idp.token("carol", kid=new_kid)))[0] == 200
        assert idp.jwks_fetches == fetched + 1


async def test_requests_without_bearer_are_left_to_other_authenticators(seaweed, bucket, idp):
    async with bearer_proxy(seaweed, verifier_for(idp)) as proxy:
        status, body = await call(proxy, "GET", f"/{bucket}/")
        assert (status, code_of(body)) == (403, "AccessDenied")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{proxy.endpoint_url}/{bucket}/",
                                   headers={"Authorization": "Basic dXNlcjpwYXNz"}) as response:
                assert response.status == 403
    assert idp.jwks_fetches == 0


async def test_simple_token_auth_with_bearer_tokens(seaweed, bucket, no_leaks):
    seen = []

    async def validator(token: str, bucket_name: str | None) -> bool:
        seen.append((token, bucket_name))
        return token == "opaque-token-1" and bucket_name == bucket

    def fetch_credentials(token: str, bucket_name: str | None) -> str:
        return f"{seaweed.access_key}:{seaweed.secret_key}"

    simple = SimpleTokenAuth(validator, fetch_credentials)
    no_leaks.extend(["opaque-token-1", "opaque-token-2"])
    async with ProxyServer(backends={"*": Backend(endpoint=seaweed.endpoint_url, region=seaweed.region)},
                           **simple.proxy_options()) as proxy:
        assert (await call(proxy, "PUT", f"/{bucket}/simple", "opaque-token-1", b"x"))[0] == 200
        status, body = await call(proxy, "GET", f"/{bucket}/simple", "opaque-token-2")
        assert (status, code_of(body)) == (403, "AccessDenied")
        status, body = await call(proxy, "GET", "/other-bucket/simple", "opaque-token-1")
        assert (status, code_of(body)) == (403, "AccessDenied")
    assert ("opaque-token-1", bucket) in seen and ("opaque-token-2", bucket) in seen


# ---------------------------------------------------------------------------------------------
# the verifier alone


async def test_discovery_and_fetches_are_single_flight(idp):
    verifier = verifier_for(idp)
    tokens = [idp.token(f"user{i}") for i in range(10)]
    identities = await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert [i.name for i in identities] == [f"user{i}" for i in range(10)]
    assert (idp.discovery_fetches, idp.jwks_fetches) == (1, 1)


async def test_jwks_url_without_discovery(idp):
    verifier = JWTVerifier(audience=AUDIENCE, issuer=idp.issuer, jwks_url=idp.jwks_url)
    assert (await verifier.verify(idp.token())).name == "alice"
    assert (idp.discovery_fetches, idp.jwks_fetches) == (0, 1)


async def test_static_keys(idp):
    pem = idp.keys[idp.rsa_kid].public_pem()
    ec_jwk = idp.keys[idp.ec_kid].public_jwk()
    verifier = JWTVerifier(audience=AUDIENCE, issuer=idp.issuer, keys=[pem, ec_jwk])
    assert (await verifier.verify(idp.token())).name == "alice"
    assert (await verifier.verify(idp.token(kid=idp.ec_kid))).name == "alice"
    with pytest.raises(JWTRejected):
        await verifier.verify(idp.token(kid=idp.add_key("RS256")))
    assert idp.jwks_fetches == 0


async def test_hs256_only_with_an_explicit_shared_secret(idp):
    secret = b"s" * 32
    verifier = JWTVerifier(audience=AUDIENCE, shared_secret=secret, algorithms=["HS256"])
    token = forge({"alg": "HS256", "typ": "JWT"}, idp.claims(), hmac_key=secret)
    assert (await verifier.verify(token)).name == "alice"
    with pytest.raises(JWTRejected):
        await verifier.verify(forge({"alg": "HS256"}, idp.claims(), hmac_key=b"t" * 32))
    with pytest.raises(JWTMalformed):  # RS256 is not in this verifier's list
        await verifier.verify(idp.token())


@pytest.mark.parametrize("kwargs", [
    {"algorithms": ["none"]},
    {"algorithms": ["RS256", "none"]},
    {"algorithms": ["HS256"]},  # no shared secret
    {"shared_secret": b"x" * 32},  # no HS* algorithm
    {"shared_secret": b"short", "algorithms": ["HS256"]},
    {"algorithms": []},
])
def test_unsafe_configurations_are_refused(kwargs):
    kwargs.setdefault("issuer", "https://issuer.example")
    with pytest.raises(ValueError):
        JWTVerifier(audience=AUDIENCE, **kwargs)


def test_a_key_source_is_required():
    with pytest.raises(ValueError):
        JWTVerifier(audience=AUDIENCE)


async def test_leeway_and_clock(idp):
    verifier = verifier_for(idp, leeway=30)
    assert (await verifier.verify(idp.token(ttl=-10))).name == "alice"
    with pytest.raises(JWTExpired):
        await verifier.verify(idp.token(ttl=-31))
    strict = verifier_for(idp, leeway=0, clock=lambda: time.time() + 400)
    with pytest.raises(JWTExpired):
        await strict.verify(idp.token(ttl=300))


async def test_unreachable_jwks(idp):
    idp.fail_jwks = True
    verifier = verifier_for(idp, min_refresh_interval=60)
    with pytest.raises(KeysUnavailable):
        await verifier.verify(idp.token())
    with pytest.raises(KeysUnavailable):  # rate-limited: no new fetch
        await verifier.verify(idp.token())
    assert idp.jwks_fetches == 1


async def test_cached_keys_survive_a_failed_refresh(idp):
    verifier = verifier_for(idp, jwks_ttl=0, min_refresh_interval=0)
    assert (await verifier.verify(idp.token())).name == "alice"
    idp.fail_jwks = True
    assert (await verifier.verify(idp.token("bob"))).name == "bob"
    assert idp.jwks_fetches >= 2


async def test_discovery_must_name_the_issuer(idp):
    verifier = JWTVerifier(audience=AUDIENCE, issuer=idp.issuer + "/other")
    with pytest.raises(KeysUnavailable):
        await verifier.verify(idp.token(iss=idp.issuer + "/other"))


async def test_custom_identity_from_claims(idp):
    def mapper(claims):
        if "admins" not in claims.get("groups", []):
            raise JWTRejected("not an admin")
        return Identity(name=claims["email"], method="oidc", claims={"groups": claims["groups"]})

    verifier = verifier_for(idp, identity_from_claims=mapper)
    identity = await verifier.verify(idp.token(email="a@example.com", groups=["admins"]))
    assert (identity.name, identity.method, dict(identity.claims)) == ("a@example.com", "oidc", {"groups": ["admins"]})
    with pytest.raises(JWTRejected):
        await verifier.verify(idp.token(email="b@example.com", groups=[]))


def test_repr_shows_no_secret():
    verifier = JWTVerifier(audience=AUDIENCE, shared_secret=b"q" * 32, algorithms=["HS256"])
    assert "qqqq" not in repr(verifier) and "qqqq" not in repr(verifier._static)
