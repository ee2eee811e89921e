"""pandas (through s3fs) reading and writing parquet and CSV on s3:// via inproxy.

Run: python examples/pandas_s3fs_example.py   (pip install -e '.[test,clients]')
"""
# requires: pandas, s3fs, pyarrow

from __future__ import annotations

import pandas as pd

from inproxy import AllowAll, ProxyServer, clients

from _local import local_backend  # a private S3 server for the example to run against


def main() -> None:
    with local_backend() as backend, \
            ProxyServer.run_in_thread(backends=backend, authorizer=AllowAll()) as proxy:
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
