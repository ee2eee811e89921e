"""The benchmark's "raw proxy + S3" (``bench/raw_proxy.py --auth raw-s3``) does the S3 work it
claims to: it verifies presigned GETs and re-signs them so that a backend that checks SigV4
(SeaweedFS) accepts them.  The floor is the harness's yardstick for what a Python proxy doing
this work cannot go below; a floor that skipped the work would flatter nothing but itself."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from util import new_bucket, s3_client

ROOT = Path(__file__).resolve().parent.parent
CLIENT_KEY, CLIENT_SECRET = "floor-client", "floor-client-secret"


@pytest.fixture(scope="module")
def floor(seaweed):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "raw_proxy.py"), "--backend", seaweed.endpoint_url,
         "--auth", "raw-s3", "--client-key", CLIENT_KEY, "--client-secret", CLIENT_SECRET,
         "--backend-key", seaweed.access_key, "--backend-secret", seaweed.secret_key,
         "--region", seaweed.region],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["auth"] == "raw-s3"
        yield f"http://127.0.0.1:{ready['port']}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def stored(seaweed):
    bucket = new_bucket(seaweed, "floor")
    s3_client(seaweed.endpoint_url, seaweed.access_key, seaweed.secret_key,
              region=seaweed.region).put_object(Bucket=bucket, Key="small", Body=b"floor" * 200)
    return bucket


def _presigned(endpoint: str, bucket: str, secret: str = CLIENT_SECRET, key: str = CLIENT_KEY) -> str:
    return s3_client(endpoint, key, secret).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "small"}, ExpiresIn=600)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_verified_and_re_signed_get_reaches_the_object(floor, stored):
    # SeaweedFS answers 200 only to a correct signature with its own keys: the re-signing.
    assert _get(_presigned(floor, stored)) == (200, b"floor" * 200)


@pytest.mark.parametrize("wrong", ["secret", "key", "signature"])
def test_a_wrong_signature_is_refused(floor, stored, wrong):
    if wrong == "secret":
        url = _presigned(floor, stored, secret="not-" + CLIENT_SECRET)
    elif wrong == "key":
        url = _presigned(floor, stored, key="unknown-key")
    else:
        url = _presigned(floor, stored)
        last = url[-1]
        url = url[:-1] + ("0" if last != "0" else "1")
    assert _get(url)[0] == 403
