"""polars reading and writing parquet on s3:// through inproxy.

Run: python examples/polars_example.py   (pip install -e '.[test,clients]')
"""
# requires: polars

from __future__ import annotations

import polars as pl

from inproxy import AllowAll, ProxyServer, clients

from _local import local_backend  # a private S3 server for the example to run against


def main() -> None:
    with local_backend() as backend, \
            ProxyServer.run_in_thread(backends=backend, authorizer=AllowAll()) as proxy:
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
