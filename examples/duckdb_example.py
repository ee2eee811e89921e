"""duckdb with its httpfs extension loaded offline (PyPI duckdb-extension-httpfs) through inproxy.

Run: python examples/duckdb_example.py   (pip install -e '.[test,clients]')
"""
# requires: duckdb, duckdb_extension_httpfs

from __future__ import annotations

import duckdb

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

            # LOAD httpfs from the pip package, CREATE SECRET (TYPE s3, ENDPOINT, URL_STYLE 'path', ...)
            con = clients.configure_duckdb(proxy, duckdb.connect())
            con.execute("COPY (SELECT range AS id, range * range AS square FROM range(10)) "
                        "TO 's3://examples/duckdb/squares.parquet' (FORMAT parquet)")
            print(con.execute("SELECT sum(square) FROM read_parquet('s3://examples/duckdb/*.parquet')")
                  .fetchone())
            print(con.execute("SELECT file FROM glob('s3://examples/duckdb/*')").fetchall())


if __name__ == "__main__":
    main()
