"""The notebook pattern: the proxy in a background thread, then three lines to read parquet.

A ``with`` block cannot span notebook cells, so the proxy's context is entered once and
kept on an ExitStack (close it when done; the thread is a daemon and dies with the kernel).

Run: python examples/notebook_quickstart.py   (pip install -e '.[test,clients]')
"""
# requires: pandas, s3fs, pyarrow

from __future__ import annotations

import contextlib

import pandas as pd

from inproxy import AllowAll, ProxyServer, clients

from _local import local_backend  # a private S3 server for the example to run against


stack = contextlib.ExitStack()
# -- set-up a real notebook does not need: a local S3 server with a parquet file in it ------
backend = stack.enter_context(local_backend())

# -- the three lines -------------------------------------------------------------------------
proxy = stack.enter_context(ProxyServer.run_in_thread(backends=backend, authorizer=AllowAll()))
options = clients.storage_options(proxy, "pandas", identity="analyst", ttl=8 * 3600)

clients.boto3_client(proxy).create_bucket(Bucket="examples")  # (set-up: some data to read)
pd.DataFrame({"x": [1, 2, 3]}).to_parquet("s3://examples/data.parquet", storage_options=options)

df = pd.read_parquet("s3://examples/data.parquet", storage_options=options)
print(df)

stack.close()  # stops the proxy (and here the local S3 server)
