"""The client matrix: real S3 clients -> inproxy (real sockets) -> SeaweedFS, which verifies SigV4.

Every client signs with credentials the proxy issued (access key, secret and session
token) through :mod:`inproxy.clients`, and for each one the test writes, lists, reads
whole, reads part (a byte range or a parquet column subset), overwrites and deletes,
with keys that need percent-encoding, and makes one upload big enough to go
multipart.  A recording hook checks afterwards that every request reached the proxy
as the issued identity, that none failed, and which S3 operations were used (so
"multipart" is a fact, not a hope).  What a client cannot do is said where it is
skipped; docs/clients.md holds the resulting table.

Each client's tests skip when the client is not installed; ``pip install -e
'.[test,clients]'`` installs them all.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")

from boto3.s3.transfer import TransferConfig  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

from inproxy import AllowAll, ProxyHooks, ProxyServer, clients  # noqa: E402
from util import backend_for, tls_server_context  # noqa: E402

IDENTITY = "clients-matrix"
MiB = 1024 * 1024
BIG = 17 * MiB  # > 16 MiB: multipart with every client's default part size (8 MiB) or a lowered one

# Keys that need percent-encoding in a URL path: space, '+', '=', non-ASCII.
AWKWARD_KEYS = [
    "plain/object.bin",
    "with space/a b.txt",
    "plus+equals=/x+y=z.txt",
    "unicodé/naïve 文件.txt",
]


# -- fixtures ---------------------------------------------------------------------------------


class Recorder(ProxyHooks):
    """Remembers (identity, operation, bucket, key, status) of every request the proxy answered."""

    def __init__(self) -> None:
        self.entries: list[tuple[str | None, str | None, str | None, str | None, int | None]] = []
        self._lock = threading.Lock()

    async def logging(self, ctx, error) -> None:
        s3 = ctx.s3
        entry = (ctx.identity.name if ctx.identity else None, s3.operation if s3 else None,
                 s3.bucket if s3 else None, s3.key if s3 else None, ctx.status)
        with self._lock:
            self.entries.append(entry)

    def for_bucket(self, bucket: str) -> list[tuple]:
        with self._lock:
            return [e for e in self.entries if e[2] == bucket]

    def operations(self, bucket: str, key: str | None = None) -> set[str]:
        return {e[1] for e in self.for_bucket(bucket) if key is None or e[3] == key}

    def wait_for(self, bucket: str, key: str | None, wanted: set[str], timeout: float = 5.0) -> set[str]:
        """The operations seen, once ``wanted`` are among them or ``timeout`` passed: the
        logging hook runs after the answer went out, so the client may be ahead of it."""
        deadline = time.monotonic() + timeout
        while True:
            ops = self.operations(bucket, key)
            if wanted <= ops or time.monotonic() > deadline:
                return ops
            time.sleep(0.02)


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def proxy(seaweed, recorder):
    with ProxyServer.run_in_thread(backends=backend_for(seaweed), authorizer=AllowAll(),
                                   hooks=recorder) as server:
        yield server


@pytest.fixture(scope="module")
def cfg(proxy) -> clients.ClientConfig:
    """Credentials issued by the proxy: access key, secret and session token."""
    config = clients.client_config(proxy, identity=IDENTITY, ttl=3600)
    assert config.session_token, "issued credentials carry a session token"
    return config


@pytest.fixture(scope="module")
def admin(cfg):
    """A boto3 client through the proxy, for setting up and checking what other clients did."""
    return clients.boto3_client(cfg, config=_no_retries())


@pytest.fixture
def bucket(admin, recorder, request):
    """A fresh bucket; afterwards every request on it must have come as IDENTITY and succeeded."""
    name = "cl-" + request.node.name.lower().replace("_", "-")[:40].strip("-") + "-" + uuid.uuid4().hex[:6]
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    admin.create_bucket(Bucket=name)
    yield name
    time.sleep(0.05)  # let the logging hook record the last answers
    entries = recorder.for_bucket(name)
    _empty_bucket(admin, name)
    assert entries, "the client's requests went through the proxy"
    assert {e[0] for e in entries} == {IDENTITY}, "every request carried the issued identity"
    failed = [e for e in entries if e[4] is None or e[4] >= 500]
    assert not failed, f"server errors: {failed}"


def _no_retries():
    from botocore.config import Config

    return Config(retries={"max_attempts": 1, "mode": "standard"})


def _empty_bucket(s3, bucket: str) -> None:
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket)
    except ClientError:
        pass  # best effort: the server is per session and temporary


def _keys(s3, bucket: str, prefix: str = "") -> list[str]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)


def _data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _assert_multipart(recorder: Recorder, bucket: str, key: str | None = None) -> None:
    wanted = {"CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"}
    ops = recorder.wait_for(bucket, key, wanted)
    assert wanted <= ops, ops


def _parquet_table(rows: int = 1000):
    pa = pytest.importorskip("pyarrow")
    return pa.table({"id": list(range(rows)), "name": [f"n{i}" for i in range(rows)],
                     "part": [f"p{i % 3}" for i in range(rows)]})


def _big_binary_table(size: int = BIG):
    """An uncompressible table of about ``size`` bytes as parquet."""
    pa = pytest.importorskip("pyarrow")
    blob = _data(size, seed=7)
    values = [blob[i:i + 4096] for i in range(0, size, 4096)]
    return pa.table({"blob": pa.array(values, pa.binary())})


# -- boto3 ------------------------------------------------------------------------------------


def test_boto3_roundtrip(cfg, bucket, recorder):
    s3 = clients.boto3_client(cfg, config=_no_retries())
    bodies = {key: f"v1 of {key}".encode() for key in AWKWARD_KEYS}
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    assert _keys(s3, bucket) == sorted(AWKWARD_KEYS)
    assert [p["Prefix"] for p in s3.list_objects_v2(Bucket=bucket, Delimiter="/")["CommonPrefixes"]] == \
        sorted(k.split("/")[0] + "/" for k in AWKWARD_KEYS)
    for key, body in bodies.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
        got = s3.get_object(Bucket=bucket, Key=key, Range="bytes=3-6")
        assert got["Body"].read() == body[3:7] and got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(body)
    key = AWKWARD_KEYS[3]
    s3.put_object(Bucket=bucket, Key=key, Body=b"version two")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"version two"
    s3.copy_object(Bucket=bucket, Key="copy/of é+=.txt", CopySource={"Bucket": bucket, "Key": key})
    assert s3.get_object(Bucket=bucket, Key="copy/of é+=.txt")["Body"].read() == b"version two"
    s3.delete_object(Bucket=bucket, Key=AWKWARD_KEYS[0])
    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in AWKWARD_KEYS[1:3]]})
    assert not answer.get("Errors"), answer.get("Errors")
    assert _keys(s3, bucket) == sorted([AWKWARD_KEYS[3], "copy/of é+=.txt"])
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key=AWKWARD_KEYS[0])
    assert err.value.response["Error"]["Code"] in ("NoSuchKey", "404")


def test_boto3_transfer_manager_multipart(cfg, bucket, recorder, tmp_path):
    s3 = clients.boto3_client(cfg)
    data = _data(BIG, seed=1)
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(data)
    key = "big/multi part+é=.bin"
    s3.upload_file(str(src), bucket, key)  # default TransferConfig: 8 MiB threshold and parts
    _assert_multipart(recorder, bucket, key)
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == BIG
    s3.download_file(bucket, key, str(dst), Config=TransferConfig(multipart_chunksize=4 * MiB))
    assert _md5(dst.read_bytes()) == _md5(data)
    ranged = [e for e in recorder.for_bucket(bucket) if e[1] == "GetObject" and e[3] == key]
    assert len(ranged) >= 2, "download_file fetched in ranged parts"
    s3.upload_fileobj(io.BytesIO(b"small now"), bucket, key)  # overwrite
    buf = io.BytesIO()
    s3.download_fileobj(bucket, key, buf)
    assert buf.getvalue() == b"small now"
    s3.delete_object(Bucket=bucket, Key=key)
    assert _keys(s3, bucket) == []


def test_boto3_any_region_in_the_signature_scope(proxy, bucket):
    """The proxy verifies a signature in whatever region the client's scope names."""
    for region in ("us-east-1", "eu-central-1", "ap-southeast-2", "auto"):
        s3 = clients.boto3_client(proxy, identity=IDENTITY, region=region, config=_no_retries())
        s3.put_object(Bucket=bucket, Key=f"r/{region}", Body=region.encode())
        assert s3.get_object(Bucket=bucket, Key=f"r/{region}")["Body"].read() == region.encode()


def test_boto3_session_client_and_resource(cfg, bucket):
    session = clients.boto3_session(cfg)
    s3 = session.client("s3")
    s3.put_object(Bucket=bucket, Key="via session é", Body=b"1")
    objects = [o.key for o in session.resource("s3").Bucket(bucket).objects.all()]
    assert objects == ["via session é"]
    session.resource("s3").Object(bucket, "via session é").delete()
    assert _keys(s3, bucket) == []


def test_boto3_presigned_url(cfg, bucket):
    import urllib.request

    s3 = clients.boto3_client(cfg)
    s3.put_object(Bucket=bucket, Key="pre signed+é.txt", Body=b"presigned body")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "pre signed+é.txt"},
                                    ExpiresIn=300)
    with urllib.request.urlopen(url, timeout=30) as answer:
        assert answer.read() == b"presigned body"


def test_boto3_static_keys(seaweed, recorder):
    """Clients may also use static keys configured on the proxy (``keys=``) instead of issued ones."""
    keys = {"STATICCLIENTKEY": "static-secret"}
    with ProxyServer.run_in_thread(backends=backend_for(seaweed), keys=keys, authorizer=AllowAll()) as server:
        s3 = clients.boto3_client(server, credentials=("STATICCLIENTKEY", "static-secret"),
                                  config=_no_retries())
        name = "cl-static-" + uuid.uuid4().hex[:8]
        s3.create_bucket(Bucket=name)
        s3.put_object(Bucket=name, Key="k", Body=b"x")
        assert s3.get_object(Bucket=name, Key="k")["Body"].read() == b"x"
        with pytest.raises(ClientError) as err:
            clients.boto3_client(server, credentials=("STATICCLIENTKEY", "wrong"),
                                 config=_no_retries()).list_objects_v2(Bucket=name)
        assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
        _empty_bucket(s3, name)


@pytest.fixture
def localhost_subdomains(monkeypatch):
    """Resolve ``*.localhost`` to 127.0.0.1 in this process, as RFC 6761 resolvers do.

    This machine resolves names from /etc/hosts, which lists ``localhost`` only.
    """
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, str) and host.lower().rstrip(".").endswith(".localhost"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_boto3_virtual_host_style(seaweed, localhost_subdomains):
    recorder = Recorder()
    with ProxyServer.run_in_thread(backends=backend_for(seaweed), authorizer=AllowAll(),
                                   base_domains=["localhost"], hooks=recorder) as server:
        cfg = clients.client_config(server, identity=IDENTITY, addressing_style="virtual",
                                    endpoint_url=f"http://localhost:{server.port}")
        s3 = clients.boto3_client(cfg, config=_no_retries())
        name = "cl-vhost-" + uuid.uuid4().hex[:8]
        s3.create_bucket(Bucket=name)
        for key in AWKWARD_KEYS:
            s3.put_object(Bucket=name, Key=key, Body=key.encode())
        assert _keys(s3, name) == sorted(AWKWARD_KEYS)
        assert s3.get_object(Bucket=name, Key=AWKWARD_KEYS[3], Range="bytes=0-4")["Body"].read() == \
            AWKWARD_KEYS[3].encode()[:5]
        for key in AWKWARD_KEYS:
            s3.delete_object(Bucket=name, Key=key)
        assert _keys(s3, name) == []
        s3.delete_bucket(Bucket=name)
    entries = [e for e in recorder.entries if e[2] == name]
    assert entries and all(e[4] < 300 for e in entries), entries


# -- s3fs + pandas ----------------------------------------------------------------------------


def test_s3fs_roundtrip_and_multipart(cfg, bucket, recorder):
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(**clients.storage_options(cfg, "s3fs"), skip_instance_cache=True)
    for key in AWKWARD_KEYS:
        fs.pipe(f"{bucket}/{key}", f"v1 of {key}".encode())
    fs.invalidate_cache()
    assert sorted(fs.find(bucket)) == sorted(f"{bucket}/{k}" for k in AWKWARD_KEYS)
    assert sorted(fs.ls(f"{bucket}/with space")) == [f"{bucket}/with space/a b.txt"]
    key = f"{bucket}/{AWKWARD_KEYS[2]}"
    assert fs.cat(key) == f"v1 of {AWKWARD_KEYS[2]}".encode()
    assert fs.cat_file(key, start=3, end=7) == f"v1 of {AWKWARD_KEYS[2]}".encode()[3:7]
    fs.pipe(key, b"overwritten")
    assert fs.cat(key) == b"overwritten"
    fs.rm(key)
    fs.invalidate_cache()
    assert not fs.exists(key)
    big_key = f"{bucket}/big/s3fs mp+é=.bin"
    data = _data(BIG, seed=2)
    with fs.open(big_key, "wb", block_size=5 * MiB) as f:
        for i in range(0, BIG, MiB):
            f.write(data[i:i + MiB])
    _assert_multipart(recorder, bucket, big_key.split("/", 1)[1])
    assert fs.size(big_key) == BIG
    assert _md5(fs.cat(big_key)) == _md5(data)
    fs.rm(f"{bucket}/big", recursive=True)


def test_pandas_parquet_and_csv(cfg, bucket):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("s3fs")
    pytest.importorskip("pyarrow")
    options = clients.storage_options(cfg, "pandas")
    df = pd.DataFrame({"id": range(100), "name": [f"n {i}+é" for i in range(100)],
                       "part": [f"p{i % 3}" for i in range(100)]})
    url = f"s3://{bucket}/pandas/table a+b=c é.parquet"
    df.to_parquet(url, storage_options=options, index=False)
    pd.testing.assert_frame_equal(pd.read_parquet(url, storage_options=options), df)
    subset = pd.read_parquet(url, storage_options=options, columns=["name"])
    assert list(subset.columns) == ["name"] and len(subset) == 100
    df.head(10).to_parquet(url, storage_options=options, index=False)  # overwrite
    assert len(pd.read_parquet(url, storage_options=options)) == 10

    csv_url = f"s3://{bucket}/pandas/table é.csv"
    df.to_csv(csv_url, storage_options=options, index=False)
    back = pd.read_csv(csv_url, storage_options=options)
    assert back["name"].tolist() == df["name"].tolist()
    assert len(pd.read_csv(csv_url, storage_options=options, usecols=["id"], nrows=5)) == 5

    ds_url = f"s3://{bucket}/pandas/dataset"
    df.to_parquet(ds_url, storage_options=options, partition_cols=["part"], index=False)
    parted = pd.read_parquet(ds_url, storage_options=options, filters=[("part", "=", "p1")])
    assert sorted(parted["id"].tolist()) == [i for i in range(100) if i % 3 == 1]

    import s3fs

    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    fs.rm(f"{bucket}/pandas", recursive=True)
    fs.invalidate_cache()
    assert fs.find(bucket) == []


# -- pyarrow ----------------------------------------------------------------------------------


def test_pyarrow_filesystem_roundtrip_and_multipart(cfg, bucket, recorder):
    pafs = pytest.importorskip("pyarrow.fs")
    fs = clients.pyarrow_filesystem(cfg)
    for key in AWKWARD_KEYS:
        with fs.open_output_stream(f"{bucket}/{key}") as out:
            out.write(f"v1 of {key}".encode())
    listed = fs.get_file_info(pafs.FileSelector(bucket, recursive=True))
    files = sorted(i.path for i in listed if i.type == pafs.FileType.File)
    assert files == sorted(f"{bucket}/{k}" for k in AWKWARD_KEYS)
    in_space = fs.get_file_info(pafs.FileSelector(f"{bucket}/with space"))
    assert [i.path for i in in_space] == [f"{bucket}/with space/a b.txt"]
    path = f"{bucket}/{AWKWARD_KEYS[3]}"
    with fs.open_input_stream(path) as f:
        assert f.read() == f"v1 of {AWKWARD_KEYS[3]}".encode()
    with fs.open_input_file(path) as f:
        assert f.read_at(4, 3) == f"v1 of {AWKWARD_KEYS[3]}".encode()[3:7]
    with fs.open_output_stream(path) as out:
        out.write(b"overwritten")
    with fs.open_input_stream(path) as f:
        assert f.read() == b"overwritten"
    fs.delete_file(path)
    assert fs.get_file_info(path).type == pafs.FileType.NotFound

    data = _data(BIG, seed=3)
    big = f"{bucket}/big/arrow mp+é=.bin"
    with fs.open_output_stream(big) as out:
        for i in range(0, BIG, MiB):
            out.write(data[i:i + MiB])
    _assert_multipart(recorder, bucket, big.split("/", 1)[1])
    with fs.open_input_stream(big) as f:
        assert _md5(f.read()) == _md5(data)
    fs.delete_dir_contents(f"{bucket}/big")


def test_pyarrow_partitioned_dataset(cfg, bucket):
    ds = pytest.importorskip("pyarrow.dataset")
    pq = pytest.importorskip("pyarrow.parquet")
    fs = clients.pyarrow_filesystem(cfg)
    table = _parquet_table()
    base = f"{bucket}/arrow dataset+é"
    ds.write_dataset(table, base, format="parquet", partitioning=["part"], partitioning_flavor="hive",
                     filesystem=fs)
    dataset = ds.dataset(base, format="parquet", partitioning="hive", filesystem=fs)
    assert sorted(f.split("/")[-2] for f in dataset.files) == ["part=p0", "part=p1", "part=p2"]
    assert dataset.count_rows() == table.num_rows
    got = dataset.to_table(columns=["id"], filter=ds.field("part") == "p2")
    assert got.column_names == ["id"]
    assert sorted(got.column("id").to_pylist()) == [i for i in range(1000) if i % 3 == 2]
    single = f"{bucket}/single é.parquet"
    pq.write_table(table, single, filesystem=fs)
    assert pq.read_table(single, filesystem=fs, columns=["name"]).num_rows == 1000
    big = f"{bucket}/big.parquet"
    pq.write_table(_big_binary_table(), big, filesystem=fs, compression="none")
    assert pq.read_metadata(big, filesystem=fs).num_rows == BIG // 4096
    fs.delete_dir_contents(bucket)


# -- polars -----------------------------------------------------------------------------------


def test_polars_roundtrip(cfg, bucket, admin, recorder):
    pl = pytest.importorskip("polars")
    options = clients.storage_options(cfg, "polars")
    df = pl.DataFrame({"id": list(range(100)), "name": [f"n {i}+é" for i in range(100)]})
    keys = ["polars/with space/a b.parquet", "polars/plus+equals=/x+y=z.parquet",
            "polars/unicodé/naïve 文件.parquet"]
    for key in keys:
        df.write_parquet(f"s3://{bucket}/{key}", storage_options=options)
    assert _keys(admin, bucket, "polars/") == sorted(keys)
    for key in keys:
        assert pl.read_parquet(f"s3://{bucket}/{key}", storage_options=options).equals(df)
    # scan: a listing (glob), a column subset and a predicate, read with ranged GETs
    scanned = (pl.scan_parquet(f"s3://{bucket}/polars/plus+equals=/*.parquet", storage_options=options)
               .select("id").filter(pl.col("id") < 10).collect())
    assert scanned["id"].to_list() == list(range(10))
    df.head(3).write_parquet(f"s3://{bucket}/{keys[0]}", storage_options=options)  # overwrite
    assert pl.read_parquet(f"s3://{bucket}/{keys[0]}", storage_options=options).height == 3
    # polars has no delete: the objects are removed with boto3 (same credentials)
    for key in keys:
        admin.delete_object(Bucket=bucket, Key=key)
    assert _keys(admin, bucket, "polars/") == []


def test_polars_listing_a_prefix_with_a_space(cfg, proxy):
    # polars' object_store sends a space in a query value as '+' and signs it as %20.
    pl = pytest.importorskip("polars")
    admin = clients.boto3_client(cfg)
    name = "cl-polars-space-" + uuid.uuid4().hex[:8]
    admin.create_bucket(Bucket=name)
    try:
        options = clients.storage_options(cfg, "polars")
        pl.DataFrame({"id": [1, 2]}).write_parquet(f"s3://{name}/with space/a.parquet", storage_options=options)
        scanned = pl.scan_parquet(f"s3://{name}/with space/*.parquet", storage_options=options).collect()
        assert scanned["id"].to_list() == [1, 2]
    finally:
        _empty_bucket(admin, name)


@pytest.mark.xfail(strict=True, reason=(
    "polars (2.1) finds nothing when it globs under a non-ASCII prefix: it sends no listing at all, "
    "and fails the same way straight against SeaweedFS, so this is polars' own limitation"))
def test_polars_glob_under_a_non_ascii_prefix(cfg, bucket, admin):
    pl = pytest.importorskip("polars")
    options = clients.storage_options(cfg, "polars")
    pl.DataFrame({"id": [1]}).write_parquet(f"s3://{bucket}/unicodé/a.parquet", storage_options=options)
    try:
        assert pl.scan_parquet(f"s3://{bucket}/unicodé/*.parquet", storage_options=options).collect().height == 1
    finally:
        admin.delete_object(Bucket=bucket, Key="unicodé/a.parquet")


def test_polars_large_write_multipart(cfg, bucket, recorder, monkeypatch):
    pl = pytest.importorskip("polars")
    # polars uploads a file in one PutObject up to its upload chunk size (above 17 MiB by
    # default); a smaller chunk size makes this write multipart.
    monkeypatch.setenv("POLARS_UPLOAD_CHUNK_SIZE", str(5 * MiB))
    options = clients.storage_options(cfg, "polars")
    df = pl.from_arrow(_big_binary_table())
    url = f"s3://{bucket}/big/polars mp+é=.parquet"
    df.write_parquet(url, storage_options=options, compression="uncompressed")
    _assert_multipart(recorder, bucket, "big/polars mp+é=.parquet")
    assert pl.scan_parquet(url, storage_options=options).select(pl.len()).collect().item() == df.height


# -- duckdb -----------------------------------------------------------------------------------


def test_duckdb_httpfs(cfg, bucket, admin, recorder):
    duckdb = pytest.importorskip("duckdb")
    pytest.importorskip("duckdb_extension_httpfs")
    con = clients.configure_duckdb(cfg, duckdb.connect())
    try:
        base = f"s3://{bucket}/duck"
        con.execute(f"COPY (SELECT range AS id, 'n ' || range AS name, 'p' || (range % 3) AS part "
                    f"FROM range(1000)) TO '{base}/table a+b=c é.parquet' (FORMAT parquet)")
        assert con.execute(f"SELECT count(*), sum(id) FROM read_parquet('{base}/table a+b=c é.parquet')"
                           ).fetchone() == (1000, sum(range(1000)))
        assert con.execute(f"SELECT name FROM read_parquet('{base}/table a+b=c é.parquet') WHERE id = 7"
                           ).fetchone() == ("n 7",)
        # overwrite
        con.execute(f"COPY (SELECT 1 AS id) TO '{base}/table a+b=c é.parquet' (FORMAT parquet)")
        assert con.execute(f"SELECT count(*) FROM '{base}/table a+b=c é.parquet'").fetchone() == (1,)
        # a hive-partitioned dataset, read back through a listing (glob) with a filter
        con.execute(f"COPY (SELECT range AS id, 'p' || (range % 3) AS part FROM range(300)) "
                    f"TO '{base}/dataset' (FORMAT parquet, PARTITION_BY (part))")
        listed = [r[0] for r in con.execute(f"SELECT file FROM glob('{base}/dataset/*/*.parquet')").fetchall()]
        assert len(listed) == 3 and all("/part=p" in f for f in listed)
        assert con.execute(f"SELECT count(*) FROM read_parquet('{base}/dataset/*/*.parquet', "
                           f"hive_partitioning = true) WHERE part = 'p1'").fetchone() == (100,)
        con.execute(f"COPY (SELECT range AS id, 'x' || range AS name FROM range(10)) "
                    f"TO '{base}/data é.csv' (FORMAT csv, HEADER)")
        assert con.execute(f"SELECT count(*) FROM read_csv('{base}/data é.csv')").fetchone() == (10,)
        # a listing under a prefix with a space, '+' and '='
        con.execute(f"COPY (SELECT 1 AS id) TO '{base}/dir a+b=c/one.parquet' (FORMAT parquet)")
        assert con.execute(f"SELECT count(*) FROM glob('{base}/dir a+b=c/*')").fetchone() == (1,)
        # one large upload, multipart: duckdb's part size is s3_uploader_max_filesize divided by
        # s3_uploader_max_parts_per_file (800GB / 10000 by default); 50GB gives ~5 MiB parts.
        con.execute("SET s3_uploader_max_filesize = '50GB'")
        con.execute(f"COPY (SELECT md5(range::VARCHAR) || md5((range + 1)::VARCHAR) AS h FROM range(300000)) "
                    f"TO '{base}/big.parquet' (FORMAT parquet, COMPRESSION uncompressed)")
        size = admin.head_object(Bucket=bucket, Key="duck/big.parquet")["ContentLength"]
        assert size >= 16 * MiB
        _assert_multipart(recorder, bucket, "duck/big.parquet")
        assert con.execute(f"SELECT count(*) FROM '{base}/big.parquet'").fetchone() == (300000,)
    finally:
        con.close()
    # duckdb has no delete: the objects are removed with boto3 (same credentials)
    for key in _keys(admin, bucket, "duck/"):
        admin.delete_object(Bucket=bucket, Key=key)
    assert _keys(admin, bucket) == []


# -- configured by the environment only -------------------------------------------------------


def test_patched_environ_configures_libraries(cfg, bucket, admin):
    """Inside patched_environ, libraries built with no arguments reach the proxy."""
    with clients.patched_environ(cfg):
        boto3.client("s3").put_object(Bucket=bucket, Key="env/boto3 é.txt", Body=b"1")
        if importlib.util.find_spec("s3fs"):
            import s3fs

            assert s3fs.S3FileSystem(skip_instance_cache=True).cat(f"{bucket}/env/boto3 é.txt") == b"1"
        if importlib.util.find_spec("polars"):
            import polars as pl

            pl.DataFrame({"a": [1]}).write_parquet(f"s3://{bucket}/env/polars.parquet")
            assert pl.read_parquet(f"s3://{bucket}/env/polars.parquet")["a"].to_list() == [1]
        if importlib.util.find_spec("pyarrow") and importlib.util.find_spec("pandas"):
            import pandas as pd
            import pyarrow.parquet as pq

            # pyarrow reads AWS_ENDPOINT_URL for s3:// URIs (FileSystem.from_uri), not for
            # S3FileSystem() built without arguments.
            assert pq.read_table(f"s3://{bucket}/env/polars.parquet").num_rows == 1
            pd.DataFrame({"b": [2]}).to_parquet(f"s3://{bucket}/env/pandas.parquet")
            assert pd.read_parquet(f"s3://{bucket}/env/pandas.parquet")["b"].tolist() == [2]
    for key in _keys(admin, bucket):
        admin.delete_object(Bucket=bucket, Key=key)


# -- command-line tools -----------------------------------------------------------------------


def _cli_env(cfg: clients.ClientConfig, tmp_path: Path) -> dict[str, str]:
    """A clean environment for a CLI: the proxy's variables, no user config files."""
    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[default]\ns3 =\n    addressing_style = path\n")
    rclone_config = tmp_path / "rclone.conf"
    rclone_config.write_text("")
    env = clients.subprocess_env(cfg, unset=("AWS_CA_BUNDLE",))
    env.update(AWS_CONFIG_FILE=str(aws_config), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               RCLONE_CONFIG=str(rclone_config), HOME=str(tmp_path))
    return env


def _run(cmd: list[str], env: dict[str, str], *, stdin: bytes | None = None, timeout: float = 120) -> bytes:
    done = subprocess.run(cmd, env=env, input=stdin, capture_output=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{cmd} exited {done.returncode}\nstdout: {done.stdout[-2000:]!r}\n"
                             f"stderr: {done.stderr[-4000:]!r}")
    return done.stdout


def _tool(name: str) -> str:
    """A CLI installed next to this Python (the venv) or on PATH; skip when absent."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[clients]')")
    return found


def test_aws_cli(cfg, bucket, admin, recorder, tmp_path):
    pytest.importorskip("awscli")
    aws = [sys.executable, "-m", "awscli"]  # the `aws` entry point, with this venv's Python
    env = _cli_env(cfg, tmp_path)
    local, back = tmp_path / "up", tmp_path / "down"
    for key in AWKWARD_KEYS:
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(f"v1 of {key}".encode())
    data = _data(BIG, seed=4)
    (local / "big é+=.bin").write_bytes(data)  # 17 MiB > the CLI's 8 MiB multipart threshold
    # sync up (PutObject for each key, one multipart upload), list, list a prefix with a space
    _run([*aws, "s3", "sync", str(local), f"s3://{bucket}/"], env)
    assert _keys(admin, bucket) == sorted([*AWKWARD_KEYS, "big é+=.bin"])
    _assert_multipart(recorder, bucket, "big é+=.bin")
    listing = _run([*aws, "s3", "ls", f"s3://{bucket}/", "--recursive"], env).decode()
    assert all(key in listing for key in AWKWARD_KEYS)
    assert "a b.txt" in _run([*aws, "s3", "ls", f"s3://{bucket}/with space/"], env).decode()
    # read whole objects back (sync down: ranged multipart GETs for the big one), and to stdout
    _run([*aws, "s3", "sync", f"s3://{bucket}/", str(back)], env)
    assert _md5((back / "big é+=.bin").read_bytes()) == _md5(data)
    assert all((back / key).read_bytes() == f"v1 of {key}".encode() for key in AWKWARD_KEYS)
    key = AWKWARD_KEYS[3]
    assert _run([*aws, "s3", "cp", f"s3://{bucket}/{key}", "-"], env) == f"v1 of {key}".encode()
    # s3api: put-object overwrites, get-object --range reads part
    (tmp_path / "put.txt").write_bytes(b"0123456789abcdef")
    _run([*aws, "s3api", "put-object", "--bucket", bucket, "--key", key, "--body", str(tmp_path / "put.txt")], env)
    _run([*aws, "s3api", "get-object", "--bucket", bucket, "--key", key, "--range", "bytes=4-9",
          str(tmp_path / "range.out")], env)
    assert (tmp_path / "range.out").read_bytes() == b"456789"
    # rm one key, then everything
    _run([*aws, "s3", "rm", f"s3://{bucket}/{AWKWARD_KEYS[1]}"], env)
    assert AWKWARD_KEYS[1] not in _keys(admin, bucket)
    _run([*aws, "s3", "rm", f"s3://{bucket}/", "--recursive"], env)
    assert _keys(admin, bucket) == []


def test_rclone(cfg, bucket, admin, recorder, tmp_path):
    rclone = _tool("rclone")
    env = _cli_env(cfg, tmp_path)
    remote = clients.rclone_remote
    for key in AWKWARD_KEYS:
        _run([rclone, "rcat", remote(f"{bucket}/{key}")], env, stdin=f"v1 of {key}".encode())
    listed = _run([rclone, "lsf", "-R", "--files-only", remote(bucket)], env).decode().splitlines()
    assert sorted(listed) == sorted(AWKWARD_KEYS)
    assert _run([rclone, "lsf", remote(f"{bucket}/with space")], env).decode().split() == ["a", "b.txt"]
    key = AWKWARD_KEYS[2]
    assert _run([rclone, "cat", remote(f"{bucket}/{key}")], env) == f"v1 of {key}".encode()
    assert _run([rclone, "cat", "--offset", "3", "--count", "4", remote(f"{bucket}/{key}")], env) == \
        f"v1 of {key}".encode()[3:7]
    _run([rclone, "rcat", remote(f"{bucket}/{key}")], env, stdin=b"overwritten")
    assert admin.get_object(Bucket=bucket, Key=key)["Body"].read() == b"overwritten"
    _run([rclone, "deletefile", remote(f"{bucket}/{key}")], env)
    assert key not in _keys(admin, bucket)
    data = _data(BIG, seed=5)
    (tmp_path / "big.bin").write_bytes(data)
    _run([rclone, "copyto", "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", str(tmp_path / "big.bin"),
          remote(f"{bucket}/big/rclone mp+é=.bin")], env)
    _assert_multipart(recorder, bucket, "big/rclone mp+é=.bin")
    _run([rclone, "copyto", remote(f"{bucket}/big/rclone mp+é=.bin"), str(tmp_path / "big.out")], env)
    assert _md5((tmp_path / "big.out").read_bytes()) == _md5(data)
    _run([rclone, "delete", remote(bucket)], env)
    assert _keys(admin, bucket) == []


def test_s5cmd(cfg, bucket, admin, recorder, tmp_path):
    s5cmd = _tool("s5cmd")
    env = _cli_env(cfg, tmp_path)
    for i, key in enumerate(AWKWARD_KEYS):
        (tmp_path / f"f{i}.txt").write_bytes(f"v1 of {key}".encode())
        _run([s5cmd, "cp", str(tmp_path / f"f{i}.txt"), f"s3://{bucket}/{key}"], env)
    listing = _run([s5cmd, "ls", f"s3://{bucket}/*"], env).decode()
    for key in AWKWARD_KEYS:
        assert key in listing
    assert "a b.txt" in _run([s5cmd, "ls", f"s3://{bucket}/with space/"], env).decode()
    key = AWKWARD_KEYS[3]
    assert _run([s5cmd, "cat", f"s3://{bucket}/{key}"], env) == f"v1 of {key}".encode()
    # s5cmd has no ranged read: the whole-object reads above and below are what it offers
    (tmp_path / "f3.txt").write_bytes(b"overwritten")
    _run([s5cmd, "cp", str(tmp_path / "f3.txt"), f"s3://{bucket}/{key}"], env)
    assert _run([s5cmd, "cat", f"s3://{bucket}/{key}"], env) == b"overwritten"
    _run([s5cmd, "rm", f"s3://{bucket}/{key}"], env)
    assert key not in _keys(admin, bucket)
    data = _data(BIG, seed=6)
    (tmp_path / "big.bin").write_bytes(data)
    _run([s5cmd, "cp", "--part-size", "5", str(tmp_path / "big.bin"), f"s3://{bucket}/big/s5cmd mp+é=.bin"],
         env)
    _assert_multipart(recorder, bucket, "big/s5cmd mp+é=.bin")
    _run([s5cmd, "cp", f"s3://{bucket}/big/s5cmd mp+é=.bin", str(tmp_path / "big.out")], env)
    assert _md5((tmp_path / "big.out").read_bytes()) == _md5(data)
    _run([s5cmd, "rm", f"s3://{bucket}/*"], env)
    assert _keys(admin, bucket) == []


# -- HTTPS: each client's way of trusting the proxy's own CA ------------------------------------


def test_https_with_the_proxy_own_ca(seaweed, tmp_path, monkeypatch):
    """Every client trusts an HTTPS proxy's private CA the way clients.py tells it to."""
    context, ca = tls_server_context(tmp_path)
    recorder = Recorder()
    with ProxyServer.run_in_thread(backends=backend_for(seaweed), authorizer=AllowAll(), ssl=context,
                                   hooks=recorder) as server:
        cfg = clients.client_config(server, identity=IDENTITY, verify=ca)
        assert cfg.endpoint_url.startswith("https://")
        s3 = clients.boto3_client(cfg, config=_no_retries())
        name = "cl-https-" + uuid.uuid4().hex[:8]
        s3.create_bucket(Bucket=name)
        body = _data(300_000, seed=8)
        done = []
        if importlib.util.find_spec("s3fs"):
            import s3fs

            fs = s3fs.S3FileSystem(**clients.storage_options(cfg, "s3fs"), skip_instance_cache=True)
            fs.pipe(f"{name}/s3fs é.bin", body)
            assert fs.cat(f"{name}/s3fs é.bin") == body
            done.append("s3fs")
        if importlib.util.find_spec("pyarrow"):
            fs = clients.pyarrow_filesystem(cfg)
            with fs.open_output_stream(f"{name}/arrow é.bin") as out:
                out.write(body)
            with fs.open_input_stream(f"{name}/arrow é.bin") as f:
                assert f.read() == body
            done.append("pyarrow")
        if importlib.util.find_spec("duckdb") and importlib.util.find_spec("duckdb_extension_httpfs"):
            con = clients.configure_duckdb(cfg)
            con.execute(f"COPY (SELECT 42 AS v) TO 's3://{name}/duck.parquet' (FORMAT parquet)")
            assert con.execute(f"SELECT v FROM 's3://{name}/duck.parquet'").fetchone() == (42,)
            con.close()
            done.append("duckdb")
        if importlib.util.find_spec("polars"):
            import polars as pl

            # object_store has no storage option for a CA: it reads SSL_CERT_FILE when it
            # builds an HTTPS client.
            monkeypatch.setenv("SSL_CERT_FILE", ca)
            options = clients.storage_options(cfg, "polars")
            pl.DataFrame({"v": [1, 2]}).write_parquet(f"s3://{name}/polars.parquet", storage_options=options)
            assert pl.read_parquet(f"s3://{name}/polars.parquet", storage_options=options)["v"].to_list() == [1, 2]
            done.append("polars")
        env = _cli_env(cfg, tmp_path)  # AWS_CA_BUNDLE, SSL_CERT_FILE and RCLONE_CA_CERT name the CA
        assert env["AWS_CA_BUNDLE"] == env["SSL_CERT_FILE"] == env["RCLONE_CA_CERT"] == ca
        (tmp_path / "up.bin").write_bytes(body)
        if importlib.util.find_spec("awscli"):
            _run([sys.executable, "-m", "awscli", "s3", "cp", str(tmp_path / "up.bin"), f"s3://{name}/aws é.bin"],
                 env)
            done.append("awscli")
        for tool, cmd in (("s5cmd", ["cp", str(tmp_path / "up.bin"), f"s3://{name}/s5cmd é.bin"]),
                          ("rclone", ["copyto", "--retries", "1", "--low-level-retries", "1", str(tmp_path / "up.bin"),
                                      clients.rclone_remote(f"{name}/rclone é.bin")])):
            path = Path(sys.executable).parent / tool
            if path.is_file() or shutil.which(tool):
                _run([str(path) if path.is_file() else tool, *cmd], env)
                done.append(tool)
        uploaded = [k for k in _keys(s3, name) if k.endswith("é.bin")]
        for key in uploaded:
            assert s3.get_object(Bucket=name, Key=key)["Body"].read() == body, key
        _empty_bucket(s3, name)
    assert {e[0] for e in recorder.entries if e[2] == name} == {IDENTITY}
    print("HTTPS clients:", done)
