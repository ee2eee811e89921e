"""AssumeRoleWithWebIdentity on the proxy: boto3 gets proxy credentials for a JWT and uses them.

The STS client is boto3's own (and, in a subprocess, botocore's web-identity
credential provider configured only through the environment); the S3 requests
signed with the issued credentials go through the proxy to SeaweedFS.  Expiry
is checked without waiting: the proxy's SigV4 verifier takes a clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import xml.etree.ElementTree as ET
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from urllib.parse import urlencode

import aiohttp
import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from inproxy import ProxyServer
from inproxy.auth.jwt import BearerAuthenticator, JWTVerifier
from inproxy.auth.sigv4 import SigV4Authenticator
from inproxy.auth.sts import STSEndpoint

from jwks_server import AUDIENCE, Recorder, tamper
from util import backend_for, new_bucket, s3_client

ROLE = "arn:aws:iam::123456789012:role/reader"
NS = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/"}
NO_RETRY = Config(retries={"max_attempts": 1, "mode": "standard"})


# ---------------------------------------------------------------------------------------------
# fixtures (idp and no_leaks: conftest.py) and helpers


@pytest.fixture(scope="module")
def bucket(seaweed):
    return new_bucket(seaweed, "sts")


@asynccontextmanager
async def sts_proxy(seaweed, idp, recorder=None, **sts_options):
    verifier = JWTVerifier(issuer=idp.issuer, audience=AUDIENCE)
    proxy = ProxyServer(backends={"*": backend_for(seaweed)}, authenticator=[BearerAuthenticator(verifier)],
                        endpoints=[STSEndpoint(verifier, **sts_options)], authorizer=recorder or Recorder())
    async with proxy:
        yield proxy


def sts_client(proxy):
    return boto3.client("sts", endpoint_url=proxy.endpoint_url, region_name="us-east-1", config=NO_RETRY)


async def assume(proxy, token: str, duration: int | None = None, **kwargs) -> dict:
    """boto3's AssumeRoleWithWebIdentity against the proxy (in a thread: the proxy runs on this loop)."""
    params = {"RoleArn": ROLE, "RoleSessionName": "app", "WebIdentityToken": token, **kwargs}
    if duration is not None:
        params["DurationSeconds"] = duration
    return await asyncio.to_thread(lambda: sts_client(proxy).assume_role_with_web_identity(**params))


def s3_with(proxy, creds: dict, session_token: str | None = None):
    return s3_client(proxy.endpoint_url, creds["AccessKeyId"], creds["SecretAccessKey"],
                     session_token=session_token or creds["SessionToken"])


async def in_thread(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


def error_of(exc: ClientError) -> tuple[str, int]:
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


async def sts_error_of(proxy, token: str, **kwargs) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        await assume(proxy, token, **kwargs)
    return error_of(caught.value)


def sigv4_of(proxy) -> SigV4Authenticator:
    return next(a for a in proxy.pipeline.authenticators if isinstance(a, SigV4Authenticator))


def seconds_until(expiration: datetime) -> float:
    return expiration.timestamp() - time.time()


async def raw_sts(proxy, method: str = "POST", *, form: dict | None = None, query: dict | None = None,
                  body: bytes | None = None, headers: dict | None = None):
    """(status, content type, parsed XML root) of a hand-made STS request."""
    url = proxy.endpoint_url + "/" + ("?" + urlencode(query) if query else "")
    data = body if body is not None else (urlencode(form).encode() if form is not None else None)
    hdrs = {"content-type": "application/x-www-form-urlencoded"} if form is not None or body is not None else {}
    hdrs.update(headers or {})
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, data=data, headers=hdrs) as response:
            return response.status, response.content_type, ET.fromstring(await response.read())


def form_for(token: str, **extra) -> dict:
    form = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "WebIdentityToken": token,
            "RoleArn": ROLE, "RoleSessionName": "app"}
    form.update(extra)
    return form


# ---------------------------------------------------------------------------------------------
# the exchange and the credentials


async def test_boto3_exchange_and_s3_through_the_proxy(seaweed, bucket, idp, no_leaks):
    recorder = Recorder()
    token = idp.token("alice", ttl=3600, email="alice@example.com", groups=["readers"])
    async with sts_proxy(seaweed, idp, recorder) as proxy:
        answer = await assume(proxy, token, duration=900)
        creds = answer["Credentials"]
        no_leaks.extend([token, creds["SecretAccessKey"], creds["SessionToken"]])
        assert answer["SubjectFromWebIdentityToken"] == "alice"
        assert answer["Audience"] == AUDIENCE and answer["Provider"] == idp.issuer
        assert answer["AssumedRoleUser"]["Arn"] == "arn:aws:sts::123456789012:assumed-role/reader/app"
        assert answer["AssumedRoleUser"]["AssumedRoleId"].endswith(":app")
        assert 890 <= seconds_until(creds["Expiration"]) <= 901
        assert token not in creds["SessionToken"] and token.split(".")[1] not in creds["SessionToken"]

        s3 = s3_with(proxy, creds)
        await in_thread(s3.put_object, Bucket=bucket, Key="via-sts", Body=b"web identity")
        got = await in_thread(s3.get_object, Bucket=bucket, Key="via-sts")
        assert got["Body"].read() == b"web identity"
        direct = s3_client(seaweed.endpoint_url, seaweed.access_key, seaweed.secret_key)
        assert (await in_thread(direct.get_object, Bucket=bucket, Key="via-sts"))["Body"].read() == b"web identity"

    identity = recorder.seen[0].identity
    assert (identity.name, identity.method) == ("alice", "jwt")
    assert identity.claims["email"] == "alice@example.com" and identity.claims["groups"] == ["readers"]
    assert identity.claims["sts:role_arn"] == ROLE and identity.claims["sts:role_session_name"] == "app"
    assert identity.claims["iss"] == idp.issuer


async def test_credentials_stop_working_after_their_expiry(seaweed, bucket, idp, no_leaks):
    async with sts_proxy(seaweed, idp) as proxy:
        creds = (await assume(proxy, idp.token(ttl=3600), duration=900))["Credentials"]
        no_leaks.extend([creds["SecretAccessKey"], creds["SessionToken"]])
        s3 = s3_with(proxy, creds)
        await in_thread(s3.list_objects_v2, Bucket=bucket)
        verifier = sigv4_of(proxy)
        verifier.max_skew = 3600  # the clock moves, not the client's: only the expiry may refuse
        verifier.clock = lambda: time.time() + 901  # 15 minutes later, without waiting for them
        with pytest.raises(ClientError) as caught:
            await in_thread(s3.list_objects_v2, Bucket=bucket)
        assert error_of(caught.value) == ("ExpiredToken", 400)
        verifier.clock = lambda: time.time() + 880
        await in_thread(s3.list_objects_v2, Bucket=bucket)


async def test_lifetime_is_bounded_by_the_token_and_max_duration(seaweed, bucket, idp):
    async with sts_proxy(seaweed, idp, max_duration=1200) as proxy:
        token = idp.token(ttl=120)
        short = (await assume(proxy, token, duration=3600))["Credentials"]
        assert 100 <= seconds_until(short["Expiration"]) <= 121
        capped = (await assume(proxy, idp.token(ttl=7200), duration=3600))["Credentials"]
        assert 1190 <= seconds_until(capped["Expiration"]) <= 1201
        default = (await assume(proxy, idp.token(ttl=7200)))["Credentials"]
        assert 1190 <= seconds_until(default["Expiration"]) <= 1201


async def test_credentials_from_a_short_lived_token_really_expire(seaweed, bucket, idp):
    async with sts_proxy(seaweed, idp) as proxy:
        token = idp.token(ttl=3)
        creds = (await assume(proxy, token, duration=900))["Credentials"]
        assert seconds_until(creds["Expiration"]) <= 3
        s3 = s3_with(proxy, creds)
        await in_thread(s3.list_objects_v2, Bucket=bucket)
        await asyncio.sleep(max(0.0, seconds_until(creds["Expiration"])) + 1.0)
        with pytest.raises(ClientError) as caught:
            await in_thread(s3.list_objects_v2, Bucket=bucket)
        assert error_of(caught.value) == ("ExpiredToken", 400)


async def test_tampered_and_foreign_session_tokens_are_refused(seaweed, bucket, idp, no_leaks):
    async with sts_proxy(seaweed, idp) as proxy:
        creds = (await assume(proxy, idp.token()))["Credentials"]
        no_leaks.extend([creds["SecretAccessKey"], creds["SessionToken"]])
        session_token = creds["SessionToken"]
        for index in (len("inpx1.") + 5, len(session_token) // 2, len(session_token) - 3):
            flipped = "A" if session_token[index] != "A" else "B"
            bad = session_token[:index] + flipped + session_token[index + 1:]
            with pytest.raises(ClientError) as caught:
                await in_thread(s3_with(proxy, creds, bad).list_objects_v2, Bucket=bucket)
            code, status = error_of(caught.value)
            assert status in (400, 403) and code in ("InvalidToken", "InvalidAccessKeyId"), index

        foreign = ProxyServer(backends={"*": backend_for(seaweed)}).issue_credentials("alice")
        foreign_creds = {"AccessKeyId": foreign.access_key, "SecretAccessKey": foreign.secret_key,
                         "SessionToken": foreign.session_token}
        with pytest.raises(ClientError) as caught:
            await in_thread(s3_with(proxy, foreign_creds).list_objects_v2, Bucket=bucket)
        assert error_of(caught.value) == ("InvalidToken", 400)

        secret = creds["SecretAccessKey"]
        other = "x" if secret[-1] != "x" else "y"  # a secret ending in "x" already would not be wrong
        wrong_secret = dict(creds, SecretAccessKey=secret[:-1] + other)
        with pytest.raises(ClientError) as caught:
            await in_thread(s3_with(proxy, wrong_secret).list_objects_v2, Bucket=bucket)
        assert error_of(caught.value) == ("SignatureDoesNotMatch", 403)


async def test_sdk_web_identity_provider_from_the_environment(seaweed, bucket, idp, tmp_path, no_leaks):
    """botocore's own provider (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN + AWS_ENDPOINT_URL_STS)."""
    recorder = Recorder()
    token = idp.token("svc-account", ttl=600)
    no_leaks.append(token)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    script = (
        "import sys, json, boto3\n"
        "from botocore.config import Config\n"
        "session = boto3.Session()\n"
        "s3 = session.client('s3', endpoint_url=sys.argv[1], config=Config(s3={'addressing_style': 'path'},"
        " retries={'max_attempts': 1}))\n"
        "s3.put_object(Bucket=sys.argv[2], Key='from-env', Body=b'env ok')\n"
        "body = s3.get_object(Bucket=sys.argv[2], Key='from-env')['Body'].read().decode()\n"
        "creds = session.get_credentials()\n"
        "print(json.dumps({'body': body, 'method': creds.method,"
        " 'issued': creds.get_frozen_credentials().access_key.startswith('ASIP')}))\n"
    )
    async with sts_proxy(seaweed, idp, recorder) as proxy:
        env = {
            "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
            "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file), "AWS_ROLE_ARN": ROLE,
            "AWS_ROLE_SESSION_NAME": "env-session", "AWS_ENDPOINT_URL_STS": proxy.endpoint_url,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, proxy.endpoint_url, bucket, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, err.decode()[-2000:]
    assert json.loads(out) == {"body": "env ok", "method": "assume-role-with-web-identity", "issued": True}
    identity = recorder.seen[0].identity
    assert identity.name == "svc-account" and identity.claims["sts:role_session_name"] == "env-session"


# ---------------------------------------------------------------------------------------------
# STS errors


async def test_invalid_web_identity_tokens(seaweed, idp, no_leaks):
    async with sts_proxy(seaweed, idp) as proxy:
        cases = {
            "expired": (idp.token(ttl=-120), ("ExpiredTokenException", 400)),
            "tampered": (tamper(idp.token()), ("InvalidIdentityToken", 400)),
            "wrong-aud": (idp.token(aud="other-client"), ("InvalidIdentityToken", 400)),
            "wrong-iss": (idp.token(iss="https://evil.example"), ("InvalidIdentityToken", 400)),
            "unknown-kid": (idp.token(kid=idp.add_key("RS256", publish=False)), ("InvalidIdentityToken", 400)),
            "garbage": ("this-is-not-a-jwt", ("InvalidIdentityToken", 400)),
        }
        no_leaks.extend(token for token, _ in cases.values())
        for name, (token, expected) in cases.items():
            assert await sts_error_of(proxy, token) == expected, name


async def test_error_format_and_validation(seaweed, idp):
    token = idp.token()
    async with sts_proxy(seaweed, idp) as proxy:
        status, ctype, root = await raw_sts(proxy, form=form_for(token, WebIdentityToken=""))
        assert (status, ctype) == (400, "text/xml")
        assert root.tag == "{%s}ErrorResponse" % NS["sts"]
        assert root.findtext("sts:Error/sts:Type", namespaces=NS) == "Sender"
        assert root.findtext("sts:Error/sts:Code", namespaces=NS) == "ValidationError"
        assert root.findtext("sts:Error/sts:Message", namespaces=NS)
        assert root.findtext("sts:RequestId", namespaces=NS)

        bad = {"RoleSessionName": "has space", "DurationSeconds": "ten", "RoleArn": "short",
               "Policy": '{"Version":"2012-10-17"}', "PolicyArns.member.1.arn": ROLE}
        for name, value in bad.items():
            status, _, root = await raw_sts(proxy, form=form_for(token, **{name: value}))
            assert (status, root.findtext("sts:Error/sts:Code", namespaces=NS)) == (400, "ValidationError"), name

        status, _, root = await raw_sts(proxy, form=form_for(token, Action="AssumeRole"))
        assert (status, root.findtext("sts:Error/sts:Code", namespaces=NS)) == (400, "InvalidAction")


async def test_parameters_in_the_query_string(seaweed, idp):
    async with sts_proxy(seaweed, idp) as proxy:
        for method in ("GET", "POST"):
            status, ctype, root = await raw_sts(proxy, method, query=form_for(idp.token(ttl=3600), DurationSeconds="1000"))
            assert (status, ctype) == (200, "text/xml"), method
            result = root.find("sts:AssumeRoleWithWebIdentityResult", NS)
            assert result.findtext("sts:SubjectFromWebIdentityToken", namespaces=NS) == "alice"
            assert result.findtext("sts:Credentials/sts:AccessKeyId", namespaces=NS).startswith("ASIP")
            expiration = result.findtext("sts:Credentials/sts:Expiration", namespaces=NS)
            when = datetime.strptime(expiration, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            assert 990 <= seconds_until(when) <= 1001
            assert root.findtext("sts:ResponseMetadata/sts:RequestId", namespaces=NS)


async def test_oversized_body_is_refused(seaweed, idp):
    async with sts_proxy(seaweed, idp) as proxy:
        body = urlencode(form_for("x" * 70000)).encode()
        status, _, root = await raw_sts(proxy, body=body)
        assert (status, root.findtext("sts:Error/sts:Code", namespaces=NS)) == (400, "ValidationError")


async def test_expect_100_continue_and_large_claims(seaweed, idp):
    async with sts_proxy(seaweed, idp, max_session_token_bytes=4096) as proxy:
        data = urlencode(form_for(idp.token(ttl=3600))).encode()
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.endpoint_url + "/", data=data, expect100=True,
                                    headers={"content-type": "application/x-www-form-urlencoded"}) as response:
                assert response.status == 200
        big = idp.token(ttl=3600, groups=[f"group-{i:04d}" for i in range(400)])
        assert await sts_error_of(proxy, big) == ("ValidationError", 400)


async def test_role_authorization_hook(seaweed, idp):
    def only_readers(role_arn, identity):
        return role_arn.endswith("/reader") and identity.name == "alice"

    async with sts_proxy(seaweed, idp, authorize_role=only_readers) as proxy:
        await assume(proxy, idp.token("alice"))
        assert await sts_error_of(proxy, idp.token("bob")) == ("AccessDenied", 403)
        assert await sts_error_of(proxy, idp.token("alice"), RoleArn="arn:aws:iam::123456789012:role/admin") \
            == ("AccessDenied", 403)


async def test_other_requests_are_not_sts(seaweed, bucket, idp):
    async with sts_proxy(seaweed, idp) as proxy:
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {idp.token()}"}
            async with session.get(proxy.endpoint_url + "/", headers=headers) as response:
                assert response.status == 200 and b"ListAllMyBucketsResult" in await response.read()
            async with session.get(f"{proxy.endpoint_url}/{bucket}/", headers=headers) as response:
                assert response.status == 200 and b"ListBucketResult" in await response.read()
            async with session.post(proxy.endpoint_url + "/", data=b"<x/>",
                                    headers={"content-type": "application/xml"}) as response:
                assert response.status in (403, 405, 501)
                assert b"<Error>" in await response.read()  # an S3 error, not an STS one


async def test_unsigned_sts_client_without_credentials(seaweed, idp):
    """The SDK sends AssumeRoleWithWebIdentity unsigned; the proxy needs nothing else."""
    async with sts_proxy(seaweed, idp) as proxy:
        client = boto3.client("sts", endpoint_url=proxy.endpoint_url, region_name="us-east-1",
                              config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}))
        answer = await in_thread(client.assume_role_with_web_identity, RoleArn=ROLE, RoleSessionName="x1",
                                 WebIdentityToken=idp.token())
        assert answer["Credentials"]["AccessKeyId"].startswith("ASIP")
