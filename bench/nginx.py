"""A private nginx (Debian package) serving a directory laid out as /bucket/key.

It is the static origin of the benchmark: it ignores S3 auth entirely, so what the
proxy adds on top of it is the proxy's own cost.  GET/HEAD are served from files
(sendfile); PUT is accepted by the WebDAV module (``dav_methods PUT``), written
into the same tree.  One worker process, keep-alive without a request limit,
127.0.0.1 only, no access log; everything (config, pid, logs, temp files) lives in
its own directory.

``Nginx(proxy_to=URL)`` is the same nginx as a reverse proxy instead (variant
``nginx/proxy`` of the harness, a calibration point: what a proxy in C costs here):
``proxy_pass`` to URL over an upstream with ``keepalive 32``, HTTP/1.1, request bodies
streamed (``proxy_request_buffering off``), responses buffered as nginx does by default.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    client_max_body_size 0;
    client_body_temp_path {root}/.tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
{upstream}    server {{
        listen 127.0.0.1:{port} reuseport;
        root {root};
        location / {{
{location}
        }}
    }}
}}
"""
ORIGIN = """\
            dav_methods PUT;
            create_full_put_path on;"""
PROXY_UPSTREAM = """\
    upstream origin {{
        server {backend};
        keepalive 32;
    }}
"""
PROXY = """\
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;"""


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def _free_port() -> int:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


class Nginx:
    """``with Nginx(root) as n: n.endpoint_url``; objects go in ``root/bucket/key``."""

    def __init__(self, root: str | os.PathLike | None = None, binary: str | None = None,
                 proxy_to: str | None = None) -> None:
        self.binary = binary or find_nginx()
        self.proxy_to = proxy_to  # "http://host:port": a reverse proxy, not an origin
        self._given_root = root
        self.root: Path | None = None
        self.work: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 10.0) -> "Nginx":
        if not self.binary:
            raise RuntimeError("nginx not found: apt-get install -y nginx-light")
        self.work = Path(tempfile.mkdtemp(prefix="inproxy-bench-nginx-"))
        self.root = Path(self._given_root) if self._given_root else self.work / "root"
        for d in (self.root / ".tmp" / "body", self.work / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        # As root, nginx's workers would drop to 'nobody' and could not use these 0700 dirs.
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.work / "nginx.conf"
        if self.proxy_to:
            backend = self.proxy_to.split("://", 1)[-1].rstrip("/")
            upstream, location = PROXY_UPSTREAM.format(backend=backend), PROXY
        else:
            upstream, location = "", ORIGIN
        conf.write_text(CONFIG.format(user=user, work=self.work, root=self.root, port=self.port,
                                      upstream=upstream, location=location))
        self.proc = subprocess.Popen([self.binary, "-p", str(self.work), "-c", str(conf)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.work / "stderr.log", "wb"), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.work / 'stderr.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("nginx did not start listening")

    def put_file(self, bucket: str, key: str, size: int, *, sparse: bool = False) -> None:
        """Lay out an object: random bytes, or a sparse file of zeros (no disk, no memory)."""
        path = self.root / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            if sparse:
                f.truncate(size)
            else:
                f.write(os.urandom(size))

    def worker_pids(self) -> list[int]:
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def worker_pid(self, timeout: float = 10.0) -> int:
        """The (single) worker's pid, once the master has forked it: where the work is done."""
        deadline = time.monotonic() + timeout
        while not (pids := self.worker_pids()):
            if time.monotonic() > deadline or self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("nginx has no worker process")
            time.sleep(0.02)
        return pids[0]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # fast shutdown of the master (ours) and its worker
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None

    def __enter__(self) -> "Nginx":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
