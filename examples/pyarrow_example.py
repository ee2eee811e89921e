"""pyarrow's S3FileSystem and a hive-partitioned dataset through inproxy.

Run: python examples/pyarrow_example.py   (pip install -e '.[test,clients]')
"""
# requires: pyarrow

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as ds

from inproxy import AllowAll, ProxyServer, clients

from _local import local_backend  # a private S3 server for the example to run against


def main() -> None:
    with local_backend() as backend, \
            ProxyServer.run_in_thread(backends=backend, authorizer=AllowAll()) as proxy:
        clients.boto3_client(proxy).create_bucket(Bucket="examples")

        fs = clients.pyarrow_filesystem(proxy)  # paths are "bucket/key", not s3:// URIs
        table = pa.table({"year": [2024, 2024, 2025, 2025], "sales": [10, 20, 30, 40]})
        ds.write_dataset(table, "examples/sales", format="parquet", partitioning=["year"],
                         partitioning_flavor="hive", filesystem=fs)

        dataset = ds.dataset("examples/sales", format="parquet", partitioning="hive", filesystem=fs)
        print("files:", sorted(dataset.files))
        print(dataset.to_table(columns=["sales"], filter=ds.field("year") == 2025).to_pydict())
        fs.delete_dir_contents("examples/sales")


if __name__ == "__main__":
    main()
