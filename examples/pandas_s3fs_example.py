"""pandas (through s3fs) reading and writing parquet and CSV on s3:// via inproxy.

Run: python examples/pandas_s3fs_example.py   (pip install -e '.[test,clients]')
"""
# requires: pandas, s3fs, pyarrow

from __future__ import annotations

import pandas as pd

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

            options = clients.storage_options(proxy, "pandas")  # s3fs keyword arguments
            df = pd.DataFrame({"city": ["Lyon", "Oslo", "Lima"], "temp": [21.5, 9.0, 18.25]})
            df.to_parquet("s3://examples/weather/today.parquet", storage_options=options, index=False)
            df.to_csv("s3://examples/weather/today.csv", storage_options=options, index=False)

            print(pd.read_parquet("s3://examples/weather/today.parquet", storage_options=options,
                                  columns=["city"]))
            print(pd.read_csv("s3://examples/weather/today.csv", storage_options=options))

            import s3fs

            fs = s3fs.S3FileSystem(**options)
            print("listing:", fs.ls("examples/weather"))
            fs.rm("examples/weather", recursive=True)


if __name__ == "__main__":
    main()
