"""The notebook pattern: the proxy in a background thread, then three lines to read parquet.

A ``with`` block cannot span notebook cells, so the proxy's context is entered once and
kept on an ExitStack (close it when done; the thread is a daemon and dies with the kernel).

Run: python examples/notebook_quickstart.py   (pip install -e '.[test,clients]')
"""
# requires: pandas, s3fs, pyarrow

from __future__ import annotations

import contextlib

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


stack = contextlib.ExitStack()
# -- set-up a real notebook does not need: a local S3 server with a parquet file in it ------
info = stack.enter_context(local_s3_server()).info
backend = Backend(endpoint=info.endpoint_url, region=info.region,
                  credentials={"access_key": info.access_key, "secret_key": info.secret_key})

# -- the three lines -------------------------------------------------------------------------
proxy = stack.enter_context(ProxyServer.run_in_thread(backends=backend, authorizer=AllowAll()))
options = clients.storage_options(proxy, "pandas", identity="analyst", ttl=8 * 3600)

clients.boto3_client(proxy).create_bucket(Bucket="examples")  # (set-up: some data to read)
pd.DataFrame({"x": [1, 2, 3]}).to_parquet("s3://examples/data.parquet", storage_options=options)

df = pd.read_parquet("s3://examples/data.parquet", storage_options=options)
print(df)

stack.close()  # stops the proxy (and here the local S3 server)
