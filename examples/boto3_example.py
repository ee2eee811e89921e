"""boto3 through inproxy: a client, the transfer manager, a presigned URL.

Run: python examples/boto3_example.py   (pip install -e '.[test,clients]'; nothing else running)
"""
# requires: boto3

from __future__ import annotations

import tempfile
import urllib.request
from pathlib import Path

from inproxy import AllowAll, ProxyServer, clients

from _local import local_backend  # a private S3 server for the example to run against


def main() -> None:
    with local_backend() as backend, \
            ProxyServer.run_in_thread(backends=backend, authorizer=AllowAll()) as proxy:
        # Credentials the proxy issues for the application's user (key, secret, session token).
        s3 = clients.boto3_client(proxy, identity="alice", ttl=900)
        s3.create_bucket(Bucket="examples")
        s3.put_object(Bucket="examples", Key="notes/hello world.txt", Body=b"hello through inproxy")
        part = s3.get_object(Bucket="examples", Key="notes/hello world.txt", Range="bytes=0-4")
        print("range read:", part["Body"].read())

        with tempfile.TemporaryDirectory() as tmp:
            big = Path(tmp) / "big.bin"
            big.write_bytes(b"\0" * (20 * 1024 * 1024))
            s3.upload_file(str(big), "examples", "data/big file.bin")  # multipart above 8 MiB
        listing = s3.list_objects_v2(Bucket="examples")
        print("keys:", [(o["Key"], o["Size"]) for o in listing["Contents"]])

        url = s3.generate_presigned_url("get_object", ExpiresIn=300,
                                        Params={"Bucket": "examples", "Key": "notes/hello world.txt"})
        with urllib.request.urlopen(url, timeout=30) as answer:
            print("presigned GET:", answer.read())

        # A boto3 Session whose S3 clients and resources go to the proxy.
        session = clients.boto3_session(proxy, identity="alice")
        for obj in session.resource("s3").Bucket("examples").objects.all():
            obj.delete()
        print("after delete:", session.client("s3").list_objects_v2(Bucket="examples")["KeyCount"])


if __name__ == "__main__":
    main()
