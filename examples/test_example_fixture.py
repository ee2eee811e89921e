"""Testing an application's S3 code with the ``inproxy_server`` pytest fixture.

The fixture comes with inproxy (a pytest plugin registered on install): a proxy in a
background thread in front of an in-process moto server, with one client key.

Run: python -m pytest examples/test_example_fixture.py   (pip install -e '.[test,clients]')
"""

from __future__ import annotations

import pytest

from inproxy import clients


def save_report(s3, bucket: str, name: str, text: str) -> None:
    """The application code under test."""
    s3.put_object(Bucket=bucket, Key=f"reports/{name}", Body=text.encode())


def test_save_report(inproxy_server):
    s3 = inproxy_server.boto3_client()
    s3.create_bucket(Bucket="app-data")
    save_report(s3, "app-data", "q4 summary.txt", "all good")
    body = s3.get_object(Bucket="app-data", Key="reports/q4 summary.txt")["Body"].read()
    assert body == b"all good"


def test_pandas_through_the_fixture(inproxy_server):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("s3fs")
    inproxy_server.boto3_client().create_bucket(Bucket="frames")
    # clients.* accept the fixture too: it carries the endpoint and its static key.
    options = clients.storage_options(inproxy_server, "pandas")
    pd.DataFrame({"a": [1, 2]}).to_csv("s3://frames/a.csv", storage_options=options, index=False)
    assert pd.read_csv("s3://frames/a.csv", storage_options=options)["a"].tolist() == [1, 2]
