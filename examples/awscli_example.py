"""The aws cli (v1, PyPI awscli) through inproxy, configured by environment variables.

Run: python examples/awscli_example.py   (pip install -e '.[test,clients]')
"""
# requires: awscli

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from inproxy import AllowAll, ProxyServer, clients

from _local import local_backend  # a private S3 server for the example to run against


def aws(*args: str, env: dict[str, str]) -> str:
    # `python -m awscli` is the `aws` command of the Python running this script.
    return subprocess.run([sys.executable, "-m", "awscli", *args], env=env, check=True,
                          capture_output=True, text=True, timeout=120).stdout


def main() -> None:
    with local_backend() as backend, \
            ProxyServer.run_in_thread(backends=backend, authorizer=AllowAll()) as proxy, \
            tempfile.TemporaryDirectory() as tmp:
        # AWS_ENDPOINT_URL, keys, AWS_SESSION_TOKEN, region, AWS_EC2_METADATA_DISABLED...
        env = clients.subprocess_env(proxy, identity="alice")
        aws("s3api", "create-bucket", "--bucket", "examples", env=env)
        local = Path(tmp) / "report 2026.txt"
        local.write_text("quarterly numbers\n")
        aws("s3", "cp", str(local), "s3://examples/reports/report 2026.txt", env=env)
        print(aws("s3", "ls", "s3://examples/", "--recursive", env=env), end="")
        aws("s3api", "get-object", "--bucket", "examples", "--key", "reports/report 2026.txt",
            "--range", "bytes=0-8", str(Path(tmp) / "part"), env=env)
        print("range read:", (Path(tmp) / "part").read_text())
        aws("s3", "rm", "s3://examples/", "--recursive", env=env)


if __name__ == "__main__":
    main()
