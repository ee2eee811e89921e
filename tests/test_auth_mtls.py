"""Client-certificate authentication over real TLS sockets.

A CA, a server certificate for 127.0.0.1 and client certificates are made with
cryptography in ``tmp_path``; the proxy serves HTTPS with a context that asks
for client certificates and forwards to SeaweedFS.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import boto3
import pytest
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from inproxy import Identity, ProxyServer
from inproxy.auth.jwt import BearerAuthenticator, JWTVerifier
from inproxy.auth.mtls import MTLSAuthenticator
from inproxy.auth.sigv4 import SigV4Authenticator

from jwks_server import AUDIENCE, OIDCProvider, Recorder, assert_not_logged
from util import backend_for, new_bucket

# ---------------------------------------------------------------------------------------------
# certificates


@dataclass
class Issued:
    cert: Path
    key: Path


def _name(common_name: str, **extra: str) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    if "ou" in extra:
        attributes += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou) for ou in extra["ou"].split(",")]
    return x509.Name(attributes)


class CA:
    """A throwaway certificate authority writing PEM files into a directory."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory, self.name = directory, name
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                                    critical=False)
                     .sign(self.key, hashes.SHA256()))
        self.path = directory / f"{name}-ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, sans: list[x509.GeneralName] = (), server: bool = False,
              ou: str | None = None) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder().subject_name(_name(common_name, **({"ou": ou} if ou else {})))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        label = f"{self.name}-{common_name or 'anon'}-{uuid.uuid4().hex[:6]}"
        issued = Issued(self.directory / f"{label}.pem", self.directory / f"{label}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        return issued


@dataclass
class PKI:
    ca: CA
    server: Issued
    alice: Issued
    stranger: Issued  # from another CA


@pytest.fixture
def pki(tmp_path) -> PKI:
    ca, other = CA(tmp_path, "test"), CA(tmp_path, "other")
    server = ca.issue("proxy", sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], server=True)
    alice = ca.issue("alice", sans=[x509.DNSName("alice.example"),
                                    x509.UniformResourceIdentifier("spiffe://example/alice")],
                     ou="eng,storage")
    stranger = other.issue("alice")
    return PKI(ca, server, alice, stranger)


def server_context(pki: PKI, mode: ssl.VerifyMode = ssl.CERT_REQUIRED) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    context.load_verify_locations(cafile=pki.ca.path)
    context.verify_mode = mode
    return context


def client_context(pki: PKI, cert: Issued | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.path))
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return context


# ---------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def bucket(seaweed):
    return new_bucket(seaweed, "mtls")


@asynccontextmanager
async def tls_proxy(seaweed, pki, authenticators, recorder, mode=ssl.CERT_REQUIRED, **kwargs):
    proxy = ProxyServer(backends={"*": backend_for(seaweed)}, authenticator=authenticators,
                        authorizer=recorder, ssl=server_context(pki, mode) if pki else None, **kwargs)
    async with proxy:
        yield proxy


async def get(proxy, path: str, ssl_context, headers=None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.endpoint_url + path, ssl=ssl_context, headers=headers or {}) as response:
            return response.status, await response.text()


# ---------------------------------------------------------------------------------------------
# tests


async def test_client_certificate_becomes_the_identity(seaweed, bucket, pki):
    recorder = Recorder()
    async with tls_proxy(seaweed, pki, [MTLSAuthenticator()], recorder) as proxy:
        assert proxy.endpoint_url.startswith("https://")
        status, body = await get(proxy, f"/{bucket}/", client_context(pki, pki.alice))
        assert status == 200 and "ListBucketResult" in body
    identity = recorder.seen[0].identity
    assert (identity.name, identity.method) == ("alice", "mtls")
    claims = identity.claims
    assert claims["subject"]["commonName"] == "alice"
    assert claims["subject"]["organizationalUnitName"] == ["eng", "storage"]
    assert claims["issuer"]["commonName"] == "test"
    assert ["DNS", "alice.example"] in claims["sans"] and ["URI", "spiffe://example/alice"] in claims["sans"]
    assert claims["serial"] and claims["not_after"]


@pytest.mark.parametrize("who", ["no-certificate", "other-ca"])
async def test_handshake_fails_without_a_trusted_certificate(seaweed, bucket, pki, who):
    recorder = Recorder()
    cert = None if who == "no-certificate" else pki.stranger
    async with tls_proxy(seaweed, pki, [MTLSAuthenticator()], recorder) as proxy:
        try:
            status, _ = await get(proxy, f"/{bucket}/", client_context(pki, cert))
        except (aiohttp.ClientError, ssl.SSLError, ConnectionError):
            status = None  # the TLS handshake (or the first read after it) failed
        assert status in (None, 403)
    assert recorder.seen == []


async def test_optional_certificates_and_require(seaweed, bucket, pki):
    recorder = Recorder()
    async with tls_proxy(seaweed, pki, [MTLSAuthenticator(require=True)], recorder,
                         mode=ssl.CERT_OPTIONAL) as proxy:
        status, body = await get(proxy, f"/{bucket}/", client_context(pki, None))
        assert status == 403 and "<Code>AccessDenied</Code>" in body and "client certificate" in body
        assert (await get(proxy, f"/{bucket}/", client_context(pki, pki.alice)))[0] == 200

    def fallback(ctx):
        return Identity(name="fallback", method="custom")

    recorder = Recorder()
    async with tls_proxy(seaweed, pki, [MTLSAuthenticator(require=False), fallback], recorder,
                         mode=ssl.CERT_OPTIONAL) as proxy:
        assert (await get(proxy, f"/{bucket}/", client_context(pki, None)))[0] == 200
        assert (await get(proxy, f"/{bucket}/", client_context(pki, pki.alice)))[0] == 200
    assert [access.identity.name for access in recorder.seen] == ["fallback", "alice"]


async def test_plain_http_has_no_certificate(seaweed, bucket):
    recorder = Recorder()
    async with tls_proxy(seaweed, None, [MTLSAuthenticator(require=True)], recorder) as proxy:
        status, body = await get(proxy, f"/{bucket}/", None)
        assert status == 403 and "client certificate" in body
    async with tls_proxy(seaweed, None, [MTLSAuthenticator(require=False)], recorder) as proxy:
        status, body = await get(proxy, f"/{bucket}/", None)
        assert status == 403 and "<Code>AccessDenied</Code>" in body and "client certificate" not in body
    assert recorder.seen == []


async def test_custom_identity_from_certificate(seaweed, bucket, pki):
    def spiffe(claims):
        uris = [value for kind, value in claims["sans"] if kind == "URI"]
        return Identity(name=uris[0], method="spiffe", claims=claims) if uris else None

    recorder = Recorder()
    async with tls_proxy(seaweed, pki, [MTLSAuthenticator(identity_from_cert=spiffe)], recorder) as proxy:
        assert (await get(proxy, f"/{bucket}/", client_context(pki, pki.alice)))[0] == 200
    assert (recorder.seen[0].identity.name, recorder.seen[0].identity.method) == ("spiffe://example/alice", "spiffe")


async def test_combined_with_a_bearer_token(seaweed, bucket, pki, caplog):
    caplog.set_level("DEBUG")
    recorder = Recorder()
    async with OIDCProvider() as idp:
        verifier = JWTVerifier(issuer=idp.issuer, audience=AUDIENCE)
        combined = MTLSAuthenticator(then=BearerAuthenticator(verifier))
        token = idp.token("bob", email="bob@example.com")
        async with tls_proxy(seaweed, pki, [combined], recorder) as proxy:
            alice = client_context(pki, pki.alice)
            headers = {"Authorization": f"Bearer {token}"}
            assert (await get(proxy, f"/{bucket}/", alice, headers))[0] == 200
            status, body = await get(proxy, f"/{bucket}/", alice)
            assert status == 403 and "<Code>AccessDenied</Code>" in body
    identity = recorder.seen[0].identity
    assert (identity.name, identity.method) == ("bob", "mtls+jwt")
    assert identity.claims["email"] == "bob@example.com"
    assert identity.claims["mtls"]["subject"]["commonName"] == "alice"
    assert len(recorder.seen) == 1
    assert_not_logged(caplog, [token])


async def test_boto3_with_a_client_certificate_and_sigv4(seaweed, bucket, pki):
    """SigV4 keys *and* a certificate: botocore's ``client_cert`` against the combined authenticator."""
    import asyncio

    recorder = Recorder()
    sigv4 = SigV4Authenticator({"AKCERT": "cert-secret"})
    async with tls_proxy(seaweed, pki, [MTLSAuthenticator(then=sigv4)], recorder) as proxy:
        def run(client_cert):
            config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                            client_cert=client_cert)
            s3 = boto3.client("s3", endpoint_url=proxy.endpoint_url, aws_access_key_id="AKCERT",
                              aws_secret_access_key="cert-secret", region_name="us-east-1",
                              verify=str(pki.ca.path), config=config)
            s3.put_object(Bucket=bucket, Key="with-cert", Body=b"both")
            return s3.get_object(Bucket=bucket, Key="with-cert")["Body"].read()

        assert await asyncio.to_thread(run, (str(pki.alice.cert), str(pki.alice.key))) == b"both"
        with pytest.raises(Exception):
            await asyncio.to_thread(run, None)
    identity = recorder.seen[0].identity
    assert (identity.name, identity.method) == ("AKCERT", "mtls+sigv4")
    assert identity.claims["mtls"]["subject"]["commonName"] == "alice"
