"""Scenario 4: SigV4 signing alone, microseconds per signature.

Signs the same S3 request (GET /bucket/key over http, path style, empty body: the
payload hash is the SHA-256 of nothing, which is what botocore uses over plain http;
host + x-amz-content-sha256 + x-amz-date signed) with

* inproxy's ``Signer.sign`` (signing key cached per day/region/service, as in the proxy),
* botocore's ``SigV4Auth.add_auth`` and ``S3SigV4Auth.add_auth``,

each timed two ways: the signing call alone, and "from scratch" including building
the request object / header dict the call needs.  It also checks that the library
and botocore produce the same Authorization header for the same timestamp.

    python -m bench.signing [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HOST = "127.0.0.1:9000"
PATH = "/bench/some/object-key.bin"
URL = f"http://{HOST}{PATH}"
AK, SK, REGION = "AKIDEXAMPLEBENCH", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-east-1"


def _time_per_call(fn, seconds: float, repeats: int = 5) -> dict:
    """Calibrate a batch size, then time ``repeats`` batches; µs per call (min and median)."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt > seconds / repeats / 4 or n > 1 << 22:
            break
        n *= 2
    per_batch = max(1, int(n * (seconds / repeats) / max(dt, 1e-9)))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(per_batch):
            fn()
        samples.append((time.perf_counter() - t0) / per_batch * 1e6)
    return {"us_min": min(samples), "us_median": statistics.median(samples), "calls": per_batch * repeats}


def run(seconds: float = 1.0) -> dict:
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from inproxy.s3.sigv4 import EMPTY_SHA256, Signer

    signer = Signer()
    creds = Credentials(AK, SK)
    v4 = SigV4Auth(creds, "s3", REGION)
    s3v4 = S3SigV4Auth(creds, "s3", REGION)

    def lib_sign_only(headers={"host": HOST}):
        return signer.sign("GET", PATH, "", headers, EMPTY_SHA256, access_key=AK, secret_key=SK,
                           region=REGION, query_is_canonical=True)

    def lib_from_scratch():
        headers = {"host": HOST}
        headers.update(signer.sign("GET", PATH, "", headers, EMPTY_SHA256, access_key=AK,
                                   secret_key=SK, region=REGION))
        return headers

    def new_request():
        return AWSRequest(method="GET", url=URL, headers={"x-amz-content-sha256": EMPTY_SHA256})

    reusable_v4, reusable_s3 = new_request(), new_request()

    def boto_v4_only():
        v4.add_auth(reusable_v4)

    def boto_s3_only():
        s3v4.add_auth(reusable_s3)

    def boto_v4_scratch():
        v4.add_auth(new_request())

    def boto_s3_scratch():
        s3v4.add_auth(new_request())

    # Same header for the same timestamp?
    req = new_request()
    s3v4.add_auth(req)
    amz_date = req.headers["X-Amz-Date"]
    when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    ours = signer.sign("GET", PATH, "", {"host": HOST}, EMPTY_SHA256, access_key=AK, secret_key=SK,
                       region=REGION, now=when)
    same = ours["authorization"] == req.headers["Authorization"]

    results = {
        "inproxy Signer.sign": _time_per_call(lib_sign_only, seconds),
        "inproxy Signer.sign (from scratch)": _time_per_call(lib_from_scratch, seconds),
        "botocore SigV4Auth.add_auth": _time_per_call(boto_v4_only, seconds),
        "botocore SigV4Auth (from scratch)": _time_per_call(boto_v4_scratch, seconds),
        "botocore S3SigV4Auth.add_auth": _time_per_call(boto_s3_only, seconds),
        "botocore S3SigV4Auth (from scratch)": _time_per_call(boto_s3_scratch, seconds),
    }
    # Minimum over batches: on a busy machine noise only ever adds time.
    lib = results["inproxy Signer.sign (from scratch)"]["us_min"]
    speedup = {
        "vs SigV4Auth": results["botocore SigV4Auth (from scratch)"]["us_min"] / lib,
        "vs S3SigV4Auth": results["botocore S3SigV4Auth (from scratch)"]["us_min"] / lib,
    }
    return {"timings": results, "speedup_from_scratch": speedup, "same_authorization_header": same}


def format_table(res: dict) -> str:
    lines = ["SigV4 signing alone (one GET, empty payload hash), microseconds per signature",
             f"  {'signer':40s} {'median us':>10s} {'min us':>8s}"]
    for name, t in res["timings"].items():
        lines.append(f"  {name:40s} {t['us_median']:10.2f} {t['us_min']:8.2f}")
    sp = res["speedup_from_scratch"]
    lines.append(f"  speed-up of inproxy's Signer (from scratch, min of batches): {sp['vs SigV4Auth']:.1f}x SigV4Auth, "
                 f"{sp['vs S3SigV4Auth']:.1f}x S3SigV4Auth (target >= 5x); "
                 f"same Authorization header as botocore: {res['same_authorization_header']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=1.0, help="time budget per signer")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    res = run(args.seconds)
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
