"""Where the proxy's CPU goes: py-spy (sampling, attached to the proxy process) and
cProfile summaries, reduced to a few tables that fit in a report.

py-spy's raw output is one line per distinct stack, ``frame;frame;...;leaf COUNT``,
each frame ``function (path:line)``.  From it:

* **self**: samples whose innermost Python frame is a function (C calls made by that
  function are counted in it, since py-spy is run without --native);
* **inclusive**: samples with the function anywhere on the stack;
* **areas**: every sample assigned to one area of the request path by the innermost
  frame that belongs to a known file (aiohttp server side, aiohttp client side,
  event loop, inproxy modules, ...), so the areas add up to 100%.

Multiply a share by the measured CPU microseconds per request to get microseconds per
request for that part.
"""

from __future__ import annotations

import collections
import os
import pstats
import re
import shutil
import subprocess

_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")

# (area, path fragment) checked in order against the innermost frame first, outwards.
AREAS = [
    ("inproxy: SigV4 verify of the client", "inproxy/auth/sigv4.py"),
    ("inproxy: SigV4 primitives (sign/verify)", "inproxy/s3/sigv4.py"),
    ("inproxy: S3 request parsing", "inproxy/s3/request.py"),
    ("inproxy: S3 request parsing", "inproxy/s3/operations.py"),
    ("inproxy: header filtering", "inproxy/s3/headers.py"),
    ("inproxy: pipeline", "inproxy/pipeline.py"),
    ("inproxy: pipeline", "inproxy/body.py"),
    ("inproxy: context/hooks/cache", "inproxy/context.py"),
    ("inproxy: context/hooks/cache", "inproxy/hooks.py"),
    ("inproxy: context/hooks/cache", "inproxy/secrets.py"),
    ("inproxy: context/hooks/cache", "inproxy/authorize.py"),
    ("inproxy: context/hooks/cache", "inproxy/decisions.py"),
    ("inproxy: context/hooks/cache", "inproxy/errors.py"),
    ("inproxy: context/hooks/cache", "inproxy/upstream.py"),
    ("inproxy: context/hooks/cache", "inproxy/backend.py"),
    ("aiohttp client (ClientSession upstream)", "aiohttp/client"),
    ("aiohttp client (ClientSession upstream)", "aiohttp/connector.py"),
    ("aiohttp client (ClientSession upstream)", "aiohttp/tracing.py"),
    ("aiohttp client (ClientSession upstream)", "aiohttp/cookiejar.py"),
    ("aiohttp client (ClientSession upstream)", "aiohttp/payload"),
    ("aiohttp client (ClientSession upstream)", "aiohttp/multipart.py"),
    ("aiohttp server (web.Server front)", "aiohttp/web_"),
    ("aiohttp server (web.Server front)", "aiohttp/base_protocol.py"),
    ("aiohttp http parser/writer/streams", "aiohttp/http"),
    ("aiohttp http parser/writer/streams", "aiohttp/streams.py"),
    ("aiohttp helpers", "aiohttp/helpers.py"),
    ("aiohttp helpers", "aiohttp/"),
    ("yarl/multidict", "yarl/"),
    ("yarl/multidict", "multidict/"),
    ("logging", "logging/"),
    ("asyncio event loop / transports", "asyncio/"),
    ("asyncio event loop / transports", "uvloop"),
    ("asyncio event loop / transports", "selectors.py"),
]

# Functions whose inclusive share is the cost of one phase of the proxy's request path.
PHASES = [
    ("Pipeline.handle (whole request in the handler)", "handle", "inproxy/pipeline.py"),
    ("  _check_header_size", "_check_header_size", "inproxy/pipeline.py"),
    ("  parse_s3_request", "parse_s3_request", "inproxy/s3/request.py"),
    ("  _authenticate (SigV4 verify / authenticator)", "_authenticate", "inproxy/pipeline.py"),
    ("  authorize_request (cached decision)", "authorize_request", "inproxy/authorize.py"),
    ("  _backend_credentials", "_backend_credentials", "inproxy/pipeline.py"),
    ("  _upstream_request (headers, key, query)", "_upstream_request", "inproxy/pipeline.py"),
    ("  _sign (re-sign for the backend)", "_sign", "inproxy/pipeline.py"),
    ("  _forward (ClientSession.request ...)", "_forward", "inproxy/pipeline.py"),
    ("    ClientSession._request", "_request", "aiohttp/client.py"),
    ("    _relay_response (StreamResponse, body copy)", "_relay_response", "inproxy/pipeline.py"),
    ("  _logging", "_logging", "inproxy/pipeline.py"),
    ("aiohttp RequestHandler.start (server loop around the handler)", "start", "aiohttp/web_protocol.py"),
    ("aiohttp data_received (C parser feeding)", "data_received", "aiohttp/web_protocol.py"),
]


def find_py_spy() -> str | None:
    import sys

    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.access(here, os.X_OK) else shutil.which("py-spy")


def record(pid: int, seconds: int, out: str, rate: int = 250) -> subprocess.Popen:
    """Start ``py-spy record`` on a process (returns at once; wait() on the result)."""
    spy = find_py_spy()
    if not spy:
        raise RuntimeError("py-spy not found: pip install py-spy")
    return subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(seconds), "-r", str(rate),
                             "-f", "raw", "-o", out, "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _parse_frame(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame)
    if not m:
        return frame, ""
    return m.group("func"), m.group("path")


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("lib/python3."):
                path = path.split("/", 1)[1] if "/" in path else path
            break
    if "/inproxy/" in path:
        path = "inproxy/" + path.split("/inproxy/", 1)[1]
    return path


def summarize_raw(path: str, top: int = 20) -> dict:
    """Self, inclusive and area shares from a py-spy raw file."""
    selfc: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    areas: collections.Counter = collections.Counter()
    phases: collections.Counter = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                continue
            frames = [_parse_frame(fr) for fr in stack.split(";")]
            frames = [(func, _short(p)) for func, p in frames]
            total += n
            leaf = frames[-1]
            selfc[f"{leaf[0]} ({leaf[1]})"] += n
            for name in {f"{fn} ({p})" for fn, p in frames}:
                incl[name] += n
            area = "other"
            for fn, p in reversed(frames):
                hit = next((a for a, frag in AREAS if frag in p), None)
                if hit:
                    area = hit
                    break
            areas[area] += n
            seen = set()
            for label, fn_name, frag in PHASES:
                if label not in seen and any((fn == fn_name or fn.endswith("." + fn_name)) and frag in p
                                             for fn, p in frames):
                    phases[label] += n
                    seen.add(label)
    share = (lambda c: c / total) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "self": [(name, share(c)) for name, c in selfc.most_common(top)],
        "inclusive": [(name, share(c)) for name, c in incl.most_common(top)],
        "areas": [(name, share(c)) for name, c in areas.most_common()],
        "phases": [(label, share(phases[label])) for label, _, _ in PHASES],
    }


def summarize_cprofile(path: str, top: int = 20) -> dict:
    stats = pstats.Stats(path)
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((f"{func} ({_short(filename)}:{line})", nc, tt, ct))
    total = sum(r[2] for r in rows) or 1.0
    # Requests = calls of a plain function called once per request (cProfile counts every
    # resumption of a coroutine as a call, so coroutine call counts are not request counts).
    requests = sum(nc for (filename, _, func), (_, nc, *_rest) in stats.stats.items()  # type: ignore[attr-defined]
                   if func == "parse_s3_request" and filename.endswith("inproxy/s3/request.py"))
    by_tt = sorted(rows, key=lambda r: r[2], reverse=True)[:top]
    by_ct = sorted(rows, key=lambda r: r[3], reverse=True)[:top]
    return {"total_s": total, "requests": requests,
            "tottime": [(n, calls, tt / total) for n, calls, tt, _ in by_tt],
            "cumtime": [(n, calls, ct / total) for n, calls, _, ct in by_ct]}


def format_summary(s: dict, us_per_request: float | None, top: int = 15) -> str:
    def us(frac: float) -> str:
        return f"{frac * us_per_request:7.1f} us" if us_per_request else ""
    out = [f"py-spy samples: {s['samples']}" +
           (f"; proxy CPU per request during the profile: {us_per_request:.1f} us" if us_per_request else "")]
    out.append("  by area (innermost known frame; adds up to 100%):")
    for name, frac in s["areas"]:
        out.append(f"    {frac * 100:5.1f}%  {us(frac)}  {name}")
    out.append("  phases of the request (inclusive):")
    for name, frac in s["phases"]:
        if not frac:
            continue
        out.append(f"    {frac * 100:5.1f}%  {us(frac)}  {name}")
    out.append(f"  top {top} functions by self time:")
    for name, frac in s["self"][:top]:
        out.append(f"    {frac * 100:5.1f}%  {us(frac)}  {name}")
    return "\n".join(out)
