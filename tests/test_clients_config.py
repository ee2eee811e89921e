"""inproxy.clients without a network: what each library is handed, and the environment helpers."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from inproxy import Credentials, Identity, clients
from inproxy.clients import ClientConfig, client_config


class FakeProxy:
    """What clients.py needs of a ProxyServer: an endpoint and issue_credentials()."""

    endpoint_url = "http://127.0.0.1:4567"

    def __init__(self) -> None:
        self.issued: list[tuple[object, float]] = []

    def issue_credentials(self, identity, ttl=3600.0):
        self.issued.append((identity, ttl))
        return Credentials("ASIPFAKE", "fake-secret", "inpx1.token", expires_at=1234.0)


@pytest.fixture
def cfg() -> ClientConfig:
    return ClientConfig("http://127.0.0.1:4567", "AK", "SK", "TOKEN", region="eu-west-3")


def test_client_config_issues_credentials_for_the_identity():
    proxy = FakeProxy()
    cfg = client_config(proxy, identity="alice", ttl=60)
    assert proxy.issued == [("alice", 60)]
    assert (cfg.endpoint_url, cfg.access_key, cfg.secret_key, cfg.session_token) == (
        "http://127.0.0.1:4567", "ASIPFAKE", "fake-secret", "inpx1.token")
    assert cfg.region == clients.DEFAULT_REGION and cfg.expires_at == 1234.0
    assert cfg.addressing_style == "path" and cfg.verify is True


def test_client_config_default_identity_and_ttl():
    proxy = FakeProxy()
    client_config(proxy)
    ident = Identity(name="bob", method="jwt")
    client_config(proxy, identity=ident)
    assert proxy.issued == [("default", clients.DEFAULT_TTL), (ident, clients.DEFAULT_TTL)]


def test_secrets_stay_out_of_repr(cfg):
    text = repr(cfg)
    assert "SK" not in text.replace("ASK", "") and "TOKEN" not in text


@pytest.mark.parametrize("creds, token", [
    (("AK2", "SK2"), None),
    (("AK2", "SK2", "T2"), "T2"),
    (Credentials("AK2", "SK2", "T2"), "T2"),
    ({"aws_access_key_id": "AK2", "aws_secret_access_key": "SK2"}, None),
])
def test_explicit_credentials_are_not_issued(creds, token):
    proxy = FakeProxy()
    cfg = client_config(proxy, creds)
    assert proxy.issued == []
    assert (cfg.access_key, cfg.secret_key, cfg.session_token) == ("AK2", "SK2", token)


def test_client_config_from_object_with_keys():
    fixture_like = SimpleNamespace(endpoint_url="http://127.0.0.1:1", access_key="A", secret_key="S",
                                   region="ap-south-1")
    cfg = client_config(fixture_like)
    assert (cfg.access_key, cfg.secret_key, cfg.session_token, cfg.region) == ("A", "S", None, "ap-south-1")


def test_client_config_overrides_an_existing_config(cfg):
    assert client_config(cfg) is cfg
    other = client_config(cfg, region="us-west-2", addressing_style="virtual",
                          endpoint_url="http://localhost:4567", credentials=("X", "Y"))
    assert (other.region, other.addressing_style, other.endpoint_url) == ("us-west-2", "virtual",
                                                                          "http://localhost:4567")
    assert (other.access_key, other.secret_key, other.session_token) == ("X", "Y", None)


def test_client_config_rejects_nonsense():
    with pytest.raises(TypeError):
        client_config(object())
    with pytest.raises(TypeError):
        client_config(SimpleNamespace(endpoint_url="http://127.0.0.1:1"))
    with pytest.raises(ValueError):
        ClientConfig("ftp://x", "a", "b")
    with pytest.raises(ValueError):
        ClientConfig("http://127.0.0.1:1", "a", "b", addressing_style="dns")
    with pytest.raises(ValueError):
        client_config(FakeProxy(), Credentials(bearer_token="t"))


def test_s3fs_and_pandas_options(cfg):
    opts = clients.storage_options(cfg, "s3fs")
    assert opts == clients.storage_options(cfg, "pandas") == clients.storage_options(cfg, "fsspec")
    assert opts["key"] == "AK" and opts["secret"] == "SK" and opts["token"] == "TOKEN"
    assert opts["endpoint_url"] == "http://127.0.0.1:4567"
    assert opts["client_kwargs"] == {"region_name": "eu-west-3"}
    assert opts["config_kwargs"]["s3"] == {"addressing_style": "path"}


def test_polars_options(cfg):
    opts = clients.storage_options(cfg, "polars")
    assert opts == {
        "aws_endpoint_url": "http://127.0.0.1:4567", "aws_access_key_id": "AK",
        "aws_secret_access_key": "SK", "aws_session_token": "TOKEN", "aws_region": "eu-west-3",
        "aws_virtual_hosted_style_request": "false", "aws_allow_http": "true",
    }
    https = clients.storage_options(client_config(cfg, endpoint_url="https://h:1", verify=False), "polars")
    assert https["aws_allow_http"] == "false" and https["aws_allow_invalid_certificates"] == "true"


def test_pyarrow_options(cfg):
    opts = clients.storage_options(cfg, "pyarrow")
    assert opts == {"access_key": "AK", "secret_key": "SK", "session_token": "TOKEN",
                    "endpoint_override": "127.0.0.1:4567", "scheme": "http", "region": "eu-west-3",
                    "force_virtual_addressing": False}
    with_ca = clients.storage_options(client_config(cfg, endpoint_url="https://h:1", verify="/ca.pem"),
                                      "pyarrow")
    assert with_ca["scheme"] == "https" and with_ca["tls_ca_file_path"] == "/ca.pem"


def test_duckdb_secret_params(cfg):
    params = clients.storage_options(cfg, "duckdb")
    assert params["ENDPOINT"] == "127.0.0.1:4567" and params["URL_STYLE"] == "path"
    assert params["USE_SSL"] is False and params["SESSION_TOKEN"] == "TOKEN"
    assert params["REGION"] == "eu-west-3"


def test_unknown_kind(cfg):
    with pytest.raises(ValueError):
        clients.storage_options(cfg, "hdfs")
    with pytest.raises(TypeError):
        clients.storage_options(cfg, "s3fs", bogus=1)


def test_environ(cfg):
    env = clients.environ(cfg)
    assert env["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL_S3"] == env["S3_ENDPOINT_URL"] == cfg.endpoint_url
    assert env["AWS_ACCESS_KEY_ID"] == "AK" and env["AWS_SECRET_ACCESS_KEY"] == "SK"
    assert env["AWS_SESSION_TOKEN"] == "TOKEN"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-3"
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert env["RCLONE_CONFIG_INPROXY_TYPE"] == "s3"
    assert env["RCLONE_CONFIG_INPROXY_FORCE_PATH_STYLE"] == "true"
    assert env["RCLONE_CONFIG_INPROXY_SESSION_TOKEN"] == "TOKEN"
    assert all(isinstance(v, str) for v in env.values())
    assert not any(k.startswith("RCLONE_") for k in clients.environ(cfg, rclone_remote=None))
    assert "RCLONE_CONFIG_DATA_ENDPOINT" in clients.environ(cfg, rclone_remote="data")
    assert clients.rclone_remote("s3://b/k") == "inproxy:b/k"


def test_patched_environ_sets_and_restores(cfg, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "prod")
    monkeypatch.setenv("AWS_REGION", "sa-east-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    before = dict(os.environ)
    with clients.patched_environ(cfg) as used:
        assert used is cfg
        assert "AWS_PROFILE" not in os.environ
        assert os.environ["AWS_REGION"] == "eu-west-3" and os.environ["AWS_SESSION_TOKEN"] == "TOKEN"
    assert dict(os.environ) == before


def test_patched_environ_restores_after_an_error(cfg):
    before = dict(os.environ)
    with pytest.raises(RuntimeError):
        with clients.patched_environ(cfg):
            raise RuntimeError
    assert dict(os.environ) == before


def test_subprocess_env(cfg):
    env = clients.subprocess_env(cfg, {"PATH": "/bin", "AWS_PROFILE": "x", "AWS_CA_BUNDLE": "/c"},
                                 unset=("AWS_CA_BUNDLE",))
    assert env["PATH"] == "/bin" and "AWS_PROFILE" not in env and "AWS_CA_BUNDLE" not in env
    assert env["AWS_ACCESS_KEY_ID"] == "AK"


def test_duckdb_httpfs_path_matches_duckdb():
    duckdb = pytest.importorskip("duckdb")
    pytest.importorskip("duckdb_extension_httpfs")
    path = clients.duckdb_httpfs_path()
    assert path is not None and path.is_file() and f"v{duckdb.__version__}" in str(path)
    assert clients.duckdb_httpfs_path("0.0.1") is None


def test_sql_literal_escapes_quotes():
    assert clients._sql_literal("it's") == "'it''s'"
    assert clients._sql_literal(True) == "true"
    with pytest.raises(ValueError):
        clients.configure_duckdb(ClientConfig("http://127.0.0.1:1", "a", "b"), secret_name="x; DROP")
