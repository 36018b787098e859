"""Shared fixtures: an isolated env cache, the checkout as the remote hog-executor."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"

# Remote environments install hog-executor from this checkout, not from the package index.
os.environ.setdefault("HOG_EXECUTOR_REQUIREMENT", f"-e {ROOT}")
# No user-level config file leaks into the tests.
os.environ["HOG_CONFIG_FILE"] = str(ROOT / "tests" / "no-such-config.toml")
sys.path.insert(0, str(SCRIPTS))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One environment cache for the session: environments are built once."""
    return str(tmp_path_factory.mktemp("hog-cache"))


@pytest.fixture
def executor(cache_dir: str):
    from hog_executor import HogExecutor

    ex = HogExecutor("local", max_workers=2, cache_dir=cache_dir)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def session_processes(marker: str) -> list[int]:
    """PIDs of live processes whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
