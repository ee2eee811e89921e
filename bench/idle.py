"""Memory per idle keep-alive client connection of a proxy process (scenario ``idle``).

For one proxy process: warm it up, read its RSS (VmRSS) and open fds, open N client
connections that each send ONE small GET (in batches, so the proxy's upstream pool
stays small) and read the complete answer, leave them idle, read RSS and fds again;
then close them and check the proxy still answers.  The client is raw asyncio streams
in the harness process (no HTTP library: its own cost stays out of the way).  Several
proxies are measured at once (``measure_all``): the readings are per process, and
sharing the settle time keeps ``--quick`` short.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
from urllib.parse import urlsplit

from bench import procfs

BATCH = 50         # requests in flight at once while opening the connections
TIMEOUT = 10.0     # seconds for one connect + request + complete answer
SETTLE = 1.0       # seconds idle before the "after" readings
SAMPLES = 5        # RSS readings (0.1 s apart) of which the median is taken


def raise_nofile_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard one; processes spawned afterwards inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def nofile_soft(pid: int) -> int | None:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                value = line.split()[3]
                return None if value == "unlimited" else int(value)
    return None


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _rss_kib(pid: int) -> tuple[float, list[int]]:
    samples = []
    for i in range(SAMPLES):
        if i:
            await asyncio.sleep(0.1)
        samples.append(procfs.status_kib(pid, "VmRSS"))
    return statistics.median(samples), samples


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
    """One GET on a kept-alive connection, answer read to its last byte (length or chunked)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip().lower() for k, _, v in (ln.partition(b":") for ln in lines[1:] if ln)}
    if b"content-length" in headers:
        await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding") == b"chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the empty line
            pass
    else:
        raise RuntimeError(f"answer without a length: {head[:200]!r}")
    if status != 200:
        raise RuntimeError(f"status {status}")
    if headers.get(b"connection") == b"close":
        raise RuntimeError("the proxy closes the connection after the answer (no keep-alive)")


async def _connect_and_get(host: str, port: int, request: bytes):
    async def go():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            await _exchange(reader, writer, request)
        except BaseException:
            writer.close()
            raise
        return reader, writer
    return await asyncio.wait_for(go(), TIMEOUT)


async def measure(out: dict, pid: int, url: str, n: int, warmup: int = 20) -> None:
    """The idle-connection figures of the process ``pid`` serving ``url`` (a 1 KiB GET), into
    ``out`` (so that what was measured before a failure is kept)."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    request = (f"GET {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1\r\n"
               f"Host: {parts.netloc}\r\n\r\n").encode()
    out.update(connections=n, nofile_soft=nofile_soft(pid))
    # Each idle client holds one fd in the proxy, two in the raw proxy (its upstream connection).
    need = fd_count(pid) + 2 * n + 64
    if out["nofile_soft"] is not None and out["nofile_soft"] < need:
        raise RuntimeError(f"the proxy may open {out['nofile_soft']} files, needs ~{need}")
    # Warm-up on one connection (lazy imports, first-request caches), closed before measuring.
    reader, writer = await _connect_and_get(host, port, request)
    try:
        for _ in range(warmup - 1):
            await asyncio.wait_for(_exchange(reader, writer, request), TIMEOUT)
    finally:
        writer.close()
    await asyncio.sleep(0.3)
    out["rss_before_kib"], out["rss_before_samples"] = await _rss_kib(pid)
    out["fds_before"] = fd_count(pid)
    conns: list = []
    try:
        for start in range(0, n, BATCH):
            conns += await asyncio.gather(*(_connect_and_get(host, port, request)
                                            for _ in range(min(BATCH, n - start))))
        await asyncio.sleep(SETTLE)
        out["rss_after_kib"], out["rss_after_samples"] = await _rss_kib(pid)
        out["fds_after"] = fd_count(pid)
        # A reader sees EOF without reading: the proxy closed an idle connection early.
        out["closed_by_proxy"] = sum(r.at_eof() for r, _ in conns)
    finally:
        for _, w in conns:
            w.close()
    out["kib_per_conn"] = (out["rss_after_kib"] - out["rss_before_kib"]) / n
    out["fds_per_conn"] = (out["fds_after"] - out["fds_before"]) / n
    if out["closed_by_proxy"]:
        raise RuntimeError(f"{out['closed_by_proxy']} of {n} idle connections closed by the proxy")
    await asyncio.sleep(0.2)
    _, writer = await _connect_and_get(host, port, request)  # still answers once they are gone
    writer.close()
    out["fds_after_close"] = fd_count(pid)


async def _guarded(pid: int, url: str, n: int) -> dict:
    out: dict = {"ok": True, "error": None}
    try:
        await asyncio.wait_for(measure(out, pid, url, n), 60 + n * 0.05)
    except Exception as exc:  # fail the row, not the run
        out.update(ok=False, error=f"{type(exc).__name__}: {exc or 'timed out'}")
    return out


def measure_all(targets: dict[str, tuple[int, str]], n: int) -> dict[str, dict]:
    """``{name: (pid, url)}`` -> ``{name: figures}``, all proxies at once."""
    async def run():
        names = list(targets)
        rows = await asyncio.gather(*(_guarded(*targets[k], n) for k in names))
        return dict(zip(names, rows))
    return asyncio.run(run())
