"""The main demo: an in-process S3 backend, inproxy in front of it, a boto3 round trip through it.

Run: python examples/demo.py   (needs nothing running beforehand)
"""

from __future__ import annotations

import asyncio
import os

import boto3
from botocore.config import Config

from inproxy import AccessRequest, Backend, ProxyServer
from inproxy.testing.servers import MotoServer

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def only_reports(access: AccessRequest) -> bool:
    """The application's policy: alice may use the 'reports' bucket, nothing else."""
    return access.identity.name == "alice" and access.bucket == "reports"


async def main() -> None:
    with MotoServer() as backend:  # any S3 service; moto runs in-process for the demo
        info = backend.info
        boto3.client("s3", **info.client_kwargs()).create_bucket(Bucket="prod-reports-2931")
        reports = Backend(endpoint=info.endpoint_url, region=info.region, bucket="prod-reports-2931",
                          credentials={"access_key": info.access_key, "secret_key": info.secret_key})
        async with ProxyServer(backends={"reports": reports}, authorizer=only_reports) as proxy:
            creds = proxy.issue_credentials("alice", ttl=900)  # keys only this proxy accepts
            s3 = boto3.client("s3", endpoint_url=proxy.endpoint_url, region_name="us-east-1",
                              aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
                              aws_session_token=creds.session_token,
                              config=Config(s3={"addressing_style": "path"}))
            print(f"proxy listening on {proxy.endpoint_url}")
            # boto3 blocks: run it in a thread so the proxy's loop (this one) keeps serving.
            await asyncio.to_thread(s3.put_object, Bucket="reports", Key="2026/q4 summary.txt", Body=b"hello, S3")
            obj = await asyncio.to_thread(s3.get_object, Bucket="reports", Key="2026/q4 summary.txt")
            body = await asyncio.to_thread(obj["Body"].read)  # the body streams from the proxy too
            print("read back through the proxy:", body.decode())
            listing = await asyncio.to_thread(s3.list_objects_v2, Bucket="reports")
            print("keys:", [o["Key"] for o in listing.get("Contents", [])])
            try:
                await asyncio.to_thread(s3.list_objects_v2, Bucket="secrets")
            except s3.exceptions.ClientError as err:
                print("other buckets are refused:", err.response["Error"]["Code"])


if __name__ == "__main__":
    asyncio.run(main())
