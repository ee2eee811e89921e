"""Every script in examples/ runs to completion (so the examples cannot rot).

Each example is a self-contained program (its own local S3 server and proxy); they run as
subprocesses, a few at a time, started together when the first of these tests asks.  An
example declares what it needs in a comment (``# requires: polars`` for modules,
``# requires-tool: rclone`` for programs); its test skips when that is missing.
``examples/test_*.py`` are pytest files and run under pytest.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 240  # seconds per example: generous, the machine is shared
PARALLEL = 3

SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith(("test_", "_")))
PYTEST_FILES = sorted(EXAMPLES.glob("test_*.py"))


def _requirements(path: Path) -> tuple[list[str], list[str]]:
    text = path.read_text(encoding="utf-8")
    modules = [m for line in re.findall(r"^# requires: (.+)$", text, re.M) for m in re.split(r"[,\s]+", line) if m]
    tools = [t for line in re.findall(r"^# requires-tool: (.+)$", text, re.M) for t in re.split(r"[,\s]+", line) if t]
    return modules, tools


def _missing(path: Path) -> str | None:
    modules, tools = _requirements(path)
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"module {module} is not installed"
    for tool in tools:
        if not (Path(sys.executable).parent / tool).is_file() and shutil.which(tool) is None:
            return f"program {tool} is not installed"
    return None


def _command(path: Path) -> list[str]:
    if path.name.startswith("test_"):
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)]
    return [sys.executable, str(path)]


def _run(path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", AWS_EC2_METADATA_DISABLED="true")
    try:
        return subprocess.run(_command(path), cwd=EXAMPLES.parent, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(exc.cmd, -1, exc.stdout or "", f"timed out after {TIMEOUT} s")


# The proxy's log line when the example's own backend refused connections (ECONNREFUSED).
_BACKEND_REFUSED = "UpstreamConnectError(111"


def _run_with_one_retry(path: Path) -> subprocess.CompletedProcess:
    """Run an example; once more if its private SeaweedFS stopped listening.  Examples start
    their servers in parallel, and a port found free can be taken before weed binds it; that
    is the machine's race, not the example's failure (a broken example fails both times)."""
    done = _run(path)
    if done.returncode != 0 and _BACKEND_REFUSED in done.stderr:
        done = _run(path)
    return done


@pytest.fixture(scope="module")
def example_runs():
    """All runnable examples, started together in a small pool: {name: Future}."""
    pool = ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="example")
    runs: dict[str, Future] = {}
    for path in [*SCRIPTS, *PYTEST_FILES]:
        if _missing(path) is None:
            runs[path.name] = pool.submit(_run_with_one_retry, path)
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("path", [*SCRIPTS, *PYTEST_FILES], ids=lambda p: p.name)
def test_example_runs(path: Path, example_runs):
    missing = _missing(path)
    if missing:
        pytest.skip(missing)
    done = example_runs[path.name].result()
    assert done.returncode == 0, (f"{path.name} exited {done.returncode}\n--- stdout ---\n{done.stdout[-3000:]}"
                                  f"\n--- stderr ---\n{done.stderr[-5000:]}")
    assert done.stdout.strip(), f"{path.name} printed nothing"


def test_every_example_is_covered():
    assert SCRIPTS, "no examples found"
    names = {p.name for p in SCRIPTS}
    for expected in ("boto3_example.py", "awscli_example.py", "pandas_s3fs_example.py", "pyarrow_example.py",
                     "polars_example.py", "duckdb_example.py", "rclone_example.py", "s5cmd_example.py",
                     "aiohttp_app.py", "notebook_quickstart.py"):
        assert expected in names
    assert [p.name for p in PYTEST_FILES] == ["test_example_fixture.py"]
