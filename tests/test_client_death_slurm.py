"""The client's death on Slurm: Ctrl-C and SIGTERM of a client in the middle of a ``map`` cancel
its running and queued jobs and remove its job directory (key included); SIGKILL leaves the jobs
alone, for a rerun with the result cache to reattach to them.

Clients are processes of their own; jobs are looked up with ``squeue``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import SCRIPTS, wait_for

ACTIVE = "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED"

CLIENT = """
import faulthandler, signal, sys, time
faulthandler.register(signal.SIGUSR2, all_threads=True)  # the test's view of a hang
sys.path.insert(0, {scripts!r})
import hogtest_basic as basic
from hog_executor import HogExecutor

with HogExecutor("slurm", partition={partition!r}, shared_dir={shared!r},
                 cache_dir={cache_dir!r}, poll_interval=0.2) as ex:
    futures = [ex.submit(basic.sleep, 600, i) for i in range(3)]
    print(ex.backend.directory, flush=True)
    while not all(ex.backend.slurm_id(f.task_id) for f in futures):
        time.sleep(0.05)
    for f in futures:
        print(ex.backend.slurm_id(f.task_id), flush=True)
    for f in futures:
        f.result()
"""


def _active(job_ids: list[str], states: str = ACTIVE) -> list[str]:
    """Those of ``job_ids`` that Slurm has in one of ``states`` (queued or running)."""
    proc = subprocess.run(["squeue", "--noheader", f"--states={states}", "--format=%i",
                           f"--jobs={','.join(job_ids)}"],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 and "Invalid job id" in proc.stderr:
        return []  # every job has left the controller's memory
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def _start(tmp_path: Path, cache_dir: str, partition: str) -> tuple[subprocess.Popen[str],
                                                                    str, list[str]]:
    code = CLIENT.format(scripts=str(SCRIPTS), partition=partition,
                         shared=str(tmp_path / "shared"), cache_dir=cache_dir)
    client = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    directory = client.stdout.readline().strip()  # type: ignore[union-attr]
    job_ids = [client.stdout.readline().strip() for _ in range(3)]  # type: ignore[union-attr]
    assert directory and all(job_ids), client.stderr.read()  # type: ignore[union-attr]
    assert wait_for(lambda: len(_active(job_ids, "RUNNING")) == 3, timeout=120), \
        _active(job_ids)
    return client, directory, job_ids


def _exits(client: subprocess.Popen[str], timeout: float = 60) -> None:
    """Wait for ``client`` to exit; if it does not, fail with what each of its threads was
    doing."""
    try:
        client.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(client.pid, signal.SIGUSR2)
        wait_for(lambda: False, timeout=2)
        client.kill()
        _, stderr = client.communicate(timeout=30)
        pytest.fail(f"the client did not exit within {timeout:g} s; its threads:\n{stderr}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_client_cancels_its_jobs(slurm_cluster, tmp_path, cache_dir, sig):
    client, directory, job_ids = _start(tmp_path, cache_dir, slurm_cluster.partition)
    try:
        assert os.path.exists(os.path.join(directory, "key"))
        os.kill(client.pid, sig)
        _exits(client)  # it does not wait for the 600 s jobs
        assert client.returncode != 0
        assert wait_for(lambda: not _active(job_ids), timeout=60), _active(job_ids)
        left = [str(p) for p in Path(directory).rglob("*")] if os.path.exists(directory) else []
        assert not os.path.exists(directory), (left, client.stderr.read())  # key, job files
    finally:
        client.kill()
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=30)


@pytest.mark.slow
def test_a_killed_client_leaves_its_jobs_for_a_rerun(slurm_cluster, tmp_path, cache_dir):
    client, directory, job_ids = _start(tmp_path, cache_dir, slurm_cluster.partition)
    try:
        os.kill(client.pid, signal.SIGKILL)
        client.wait(timeout=30)
        assert sorted(_active(job_ids)) == sorted(job_ids)  # nothing ran at its exit
        assert os.path.exists(os.path.join(directory, "key"))
    finally:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=30)
    assert wait_for(lambda: not _active(job_ids), timeout=60)
