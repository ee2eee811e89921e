"""Run wrk against one URL for a bounded time and return its summary as a dict."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk_report.lua")


def find_wrk() -> str | None:
    return shutil.which("wrk")


def run_wrk(url: str, *, connections: int, seconds: int, threads: int = 1,
            timeout_s: int = 5) -> dict:
    """``wrk -t threads -c connections -d seconds`` on one URL (keep-alive).

    The returned dict has requests, duration_us, bytes, errors{...}, latency_us{p50,p90,p99,max,mean},
    plus ``rps``.  wrk's own timeout is ``timeout_s`` per request and the whole run is
    killed if it overstays its duration by 30 s.
    """
    wrk = find_wrk()
    if not wrk:
        raise RuntimeError("wrk not found: apt-get install -y wrk")
    threads = max(1, min(threads, connections))
    cmd = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{int(seconds)}s",
           "--timeout", f"{timeout_s}s", "-s", SCRIPT, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            data = json.loads(line[len("BENCHJSON "):])
            data["rps"] = data["requests"] / (data["duration_us"] / 1e6) if data["duration_us"] else 0.0
            data["error_count"] = sum(data["errors"].values())
            return data
    raise RuntimeError(f"wrk failed (exit {out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
