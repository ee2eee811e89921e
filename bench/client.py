"""A lean streaming S3 client for the large-transfer scenarios (GET and PUT).

The same client, with the same settings, talks to the backend directly and to the
proxy, so the two numbers compare.  It runs as a worker: one JSON command per line
on stdin, one JSON result per line on stdout (so process start-up is never timed):

    {"op": "get"|"put", "endpoint": "http://127.0.0.1:PORT", "bucket": "b",
     "keys": ["k1", ...], "size": BYTES, "timeout": SECONDS,
     "sign": {"access_key": .., "secret_key": .., "region": ..} | null}

Every key is transferred by its own concurrent stream (one connection each).  PUT
bodies are generated (a repeated 1 MiB block of random bytes, made once) and sent
with an explicit Content-Length; requests are signed with UNSIGNED-PAYLOAD by
inproxy's Signer when ``sign`` is given.  GET bodies are read with ``iter_any()``
and discarded (only counted).  The result holds the wall time of the whole batch,
the bytes moved and per-stream status; any non-2xx or short body is an error.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiohttp  # noqa: E402
from yarl import URL  # noqa: E402

from inproxy.s3.sigv4 import UNSIGNED_PAYLOAD, Signer  # noqa: E402

BLOCK = os.urandom(1 << 20)
SIGNER = Signer()


def _headers(method: str, endpoint: str, path: str, sign: dict | None, extra: dict) -> dict:
    host = endpoint.split("://", 1)[1].rstrip("/")
    headers = {"host": host, **extra}
    if sign:
        headers.update(SIGNER.sign(method, path, "", headers, UNSIGNED_PAYLOAD,
                                   access_key=sign["access_key"], secret_key=sign["secret_key"],
                                   region=sign.get("region", "us-east-1")))
    # aiohttp sets Host itself from the URL (same value).
    headers.pop("host")
    return headers


async def _body(size: int):
    view = memoryview(BLOCK)
    left = size
    while left > 0:
        n = min(left, len(BLOCK))
        yield view[:n] if n < len(BLOCK) else BLOCK
        left -= n


async def _one(session: aiohttp.ClientSession, cmd: dict, key: str) -> dict:
    endpoint, size, sign = cmd["endpoint"], int(cmd["size"]), cmd.get("sign")
    path = f"/{cmd['bucket']}/{key}"
    url = URL(endpoint + path, encoded=True)
    if cmd["op"] == "get":
        headers = _headers("GET", endpoint, path, sign, {})
        received = 0
        async with session.get(url, headers=headers) as resp:
            async for chunk in resp.content.iter_any():
                received += len(chunk)
            ok = 200 <= resp.status < 300 and received == size
            return {"status": resp.status, "bytes": received, "ok": ok}
    headers = _headers("PUT", endpoint, path, sign, {"content-length": str(size)})
    async with session.put(url, headers=headers, data=_body(size)) as resp:
        text = await resp.read()
        ok = 200 <= resp.status < 300
        out = {"status": resp.status, "bytes": size if ok else 0, "ok": ok}
        if not ok:
            out["body"] = text[:300].decode("utf-8", "replace")
        return out


async def run_command(cmd: dict) -> dict:
    keys = cmd["keys"]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=float(cmd.get("timeout", 300)))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                     skip_auto_headers=("User-Agent", "Accept-Encoding"),
                                     read_bufsize=1 << 18) as session:
        t0 = time.perf_counter()
        try:
            streams = await asyncio.gather(*(_one(session, cmd, k) for k in keys))
            error = None
        except Exception as exc:  # reported, never raised: the harness decides
            streams, error = [], f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - t0
    total = sum(s["bytes"] for s in streams)
    ok = error is None and all(s["ok"] for s in streams)
    if error is None and not ok:
        error = "; ".join(f"{s['status']} {s.get('body', '')}" for s in streams if not s["ok"])[:500]
    return {"ok": ok, "seconds": seconds, "bytes": total, "streams": len(keys),
            "mb_s": total / seconds / 1e6 if seconds > 0 else 0.0, "error": error}


async def worker() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True, "loop": type(loop).__module__.split(".")[0]}), flush=True)
    while True:
        line = await reader.readline()
        if not line:
            return
        cmd = json.loads(line)
        if cmd.get("op") == "quit":
            return
        result = await run_command(cmd)
        print(json.dumps(result), flush=True)


def main() -> int:
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    if hasattr(asyncio, "Runner"):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(worker())
    else:
        loop = factory() if factory else asyncio.new_event_loop()
        loop.run_until_complete(worker())
    return 0


if __name__ == "__main__":
    sys.exit(main())
