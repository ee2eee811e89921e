"""polars reading and writing parquet on s3:// through inproxy.

Run: python examples/polars_example.py   (pip install -e '.[test,clients]')
"""
# requires: polars

from __future__ import annotations

import polars as pl

from inproxy import AllowAll, Backend, ProxyServer, clients
from inproxy.testing.servers import MotoServer, SeaweedFS, SeaweedFSError, find_weed


def local_s3_server():
    """A private S3 server on 127.0.0.1: SeaweedFS (it verifies signatures) if installed, else moto."""
    try:
        find_weed()
        return SeaweedFS()
    except SeaweedFSError:
        return MotoServer()


def main() -> None:
    with local_s3_server() as server:
        info = server.info
        backend = Backend(endpoint=info.endpoint_url, region=info.region,
                          credentials={"access_key": info.access_key, "secret_key": info.secret_key})
        with ProxyServer.run_in_thread(backends=backend, authorizer=AllowAll()) as proxy:
            clients.boto3_client(proxy).create_bucket(Bucket="examples")

            options = clients.storage_options(proxy, "polars")  # object_store keys
            df = pl.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"]})
            df.write_parquet("s3://examples/polars/part-0.parquet", storage_options=options)
            df.write_parquet("s3://examples/polars/part-1.parquet", storage_options=options)

            print(pl.read_parquet("s3://examples/polars/part-0.parquet", storage_options=options))
            lazy = pl.scan_parquet("s3://examples/polars/*.parquet", storage_options=options)
            print(lazy.filter(pl.col("id") > 1).select("name").collect())


if __name__ == "__main__":
    main()
