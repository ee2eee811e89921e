"""duckdb with its httpfs extension loaded offline (PyPI duckdb-extension-httpfs) through inproxy.

Run: python examples/duckdb_example.py   (pip install -e '.[test,clients]')
"""
# requires: duckdb, duckdb_extension_httpfs

from __future__ import annotations

import duckdb

from inproxy import AllowAll, ProxyServer, clients

from _local import local_backend  # a private S3 server for the example to run against


def main() -> None:
    with local_backend() as backend, \
            ProxyServer.run_in_thread(backends=backend, authorizer=AllowAll()) as proxy:
        clients.boto3_client(proxy).create_bucket(Bucket="examples")

        # LOAD httpfs from the pip package, CREATE SECRET (TYPE s3, ENDPOINT, URL_STYLE 'path', ...)
        con = clients.configure_duckdb(proxy, duckdb.connect())
        con.execute("COPY (SELECT range AS id, range * range AS square FROM range(10)) "
                    "TO 's3://examples/duckdb/squares.parquet' (FORMAT parquet)")
        print(con.execute("SELECT sum(square) FROM read_parquet('s3://examples/duckdb/*.parquet')")
              .fetchone())
        print(con.execute("SELECT file FROM glob('s3://examples/duckdb/*')").fetchall())


if __name__ == "__main__":
    main()
