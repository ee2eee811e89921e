"""Small helpers shared by the tests (not fixtures: plain functions)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import uuid

import boto3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from yarl import URL

from inproxy import Backend
from inproxy.testing.servers import S3ServerInfo


def backend_for(info: S3ServerInfo, **kwargs) -> Backend:
    """A Backend that signs with the test server's own keys."""
    return Backend(endpoint=info.endpoint_url, region=info.region,
                   credentials={"access_key": info.access_key, "secret_key": info.secret_key}, **kwargs)


def new_bucket(info: S3ServerInfo, prefix: str) -> str:
    """A bucket created on the test server, named ``prefix-<random>``."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    s3_client(info.endpoint_url, info.access_key, info.secret_key).create_bucket(Bucket=name)
    return name


def s3_client(endpoint_url: str, access_key: str, secret_key: str, *, session_token: str | None = None,
              region: str = "us-east-1", addressing_style: str = "path", verify=None, **config):
    """A boto3 S3 client with explicit keys, path style, SigV4 presigning and no retries."""
    cfg = Config(s3={"addressing_style": addressing_style}, signature_version="s3v4",
                 retries={"total_max_attempts": 1, "mode": "standard"}, **config)
    return boto3.client("s3", endpoint_url=endpoint_url, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, aws_session_token=session_token,
                        region_name=region, config=cfg, verify=verify)


class _DeclaredPayloadAuth(S3SigV4Auth):
    """botocore's S3 SigV4 with the payload hash we declare (streamed or unsent bodies)."""

    def __init__(self, credentials, payload_hash: str) -> None:
        super().__init__(credentials, "s3", "us-east-1")
        self._payload_hash = payload_hash

    def payload(self, request):
        return self._payload_hash


def signed_headers(method: str, url: str, headers: dict | None = None, *, payload_hash: str,
                   key: str, secret: str) -> dict[str, str]:
    """Headers of a request signed by botocore (not by inproxy's own signer), Host included."""
    request = AWSRequest(method=method, url=url, headers=dict(headers or {}))
    _DeclaredPayloadAuth(BotoCredentials(key, secret), payload_hash).add_auth(request)
    signed = dict(request.headers.items())
    signed.setdefault("Host", URL(url).raw_authority)
    return signed


def make_tls_files(directory) -> tuple[str, str, str]:
    """(CA file, certificate chain file, key file): a throwaway CA and a leaf for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "inproxy test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(ca_file), str(cert_file), str(key_file)


def tls_server_context(directory) -> tuple[ssl.SSLContext, str]:
    """(server SSLContext, CA file) from :func:`make_tls_files` in ``directory``."""
    ca_file, cert_file, key_file = make_tls_files(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, ca_file
