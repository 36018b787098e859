"""The journal: a new client takes over the calls of a client that is gone.

Clients are processes of their own, killed with SIGKILL (nothing of theirs runs at exit).
The Slurm case counts sbatch runs with a logging ``sbatch`` first on ``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import SCRIPTS, wait_for
from test_cache import APP, run_app, runs

JOURNAL_APP = SCRIPTS / "hogtest_journal_app.py"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), **extra}


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_local_call_lost_with_its_client_runs_again_with_a_warning(
        tmp_path: Path, cache_dir: str) -> None:
    root, log = tmp_path / "results", tmp_path / "log"
    Path(str(log) + ".slow").write_text("")  # the first client's call hangs
    proc = subprocess.Popen([sys.executable, str(APP), str(root), cache_dir, str(log), "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path))
    try:
        assert wait_for(lambda: runs(log) == 1, timeout=120), "the call did not start"
    finally:
        _kill(proc)
    journals = list((root / "journal").glob("*.jsonl"))
    assert len(journals) == 1
    os.unlink(str(log) + ".slow")
    out, stderr = run_app(APP, root, cache_dir, log, n=1)
    assert out == {"values": [1], "cached": [False], "jobs": 1}
    assert "lost with that client" in stderr and f"process {proc.pid}" in stderr
    assert runs(log) == 2
    assert not list((root / "journal").glob("*.jsonl"))  # taken over, then done


ACTIVE = "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING"


@pytest.fixture
def sbatch_log(tmp_path: Path, slurm_cluster: Any) -> tuple[Path, Path]:
    """A logging ``sbatch`` first on PATH, on the tests' cluster (see `slurm_cluster`)."""
    real = shutil.which("sbatch")
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    shim = bin_dir / "sbatch"
    shim.write_text(f'#!/bin/bash\necho "$*" >> {log}\nexec {real} "$@"\n')
    shim.chmod(0o755)
    return bin_dir, log


def _app(tmp_path: Path, cache_dir: str, sbatch_log: tuple[Path, Path], partition: str,
         n: int) -> tuple[list[str], dict[str, str], Path]:
    """The journal app's command line for ``n`` calls, its environment (the logging sbatch
    first on PATH) and the sbatch log."""
    bin_dir, log = sbatch_log
    root, shared = tmp_path / "results", tmp_path / "shared"
    env = _env(tmp_path, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return ([sys.executable, str(JOURNAL_APP), str(root), cache_dir, str(shared), partition,
             str(n)], env, log)


def _queued() -> list[str]:
    """This user's Slurm jobs (array tasks) still queued or running."""
    return subprocess.run(["squeue", "--noheader", "--array", f"--user={os.getuid()}",
                           f"--states={ACTIVE}", "--format=%i"], capture_output=True,
                          text=True, timeout=30).stdout.split()


@pytest.mark.slow
def test_a_new_client_attaches_to_the_slurm_array_of_a_killed_one(
        tmp_path: Path, cache_dir: str, sbatch_log: tuple[Path, Path],
        slurm_cluster: Any) -> None:
    args, env, log = _app(tmp_path, cache_dir, sbatch_log, slurm_cluster.partition, 50)
    # The array starts 25 s after it is queued: the first client is killed while it waits.
    first = subprocess.Popen([*args, "--begin=now+25"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "submitted"
    finally:
        _kill(first)
    sent = log.read_text().splitlines()
    assert len(sent) == 1  # one job array
    queued = _queued()
    assert queued, "the array is no longer queued"
    second = subprocess.run([*args], capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout.splitlines()[-1]) == {"values": [3 * i for i in range(50)]}
    assert len(log.read_text().splitlines()) == 1, "the new client ran sbatch"
    assert "following Slurm job" in second.stderr
    # Every result is now a hit, still without sbatch.
    third = subprocess.run([*args], capture_output=True, text=True, timeout=600, env=env)
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout.splitlines()[-1]) == {"values": [3 * i for i in range(50)]}
    assert len(log.read_text().splitlines()) == 1


@pytest.mark.slow
def test_a_client_that_exits_after_submitting_leaves_its_graph_to_finish(
        tmp_path: Path, cache_dir: str, sbatch_log: tuple[Path, Path],
        slurm_cluster: Any) -> None:
    args, env, log = _app(tmp_path, cache_dir, sbatch_log, slurm_cluster.partition, 8)
    first = subprocess.run([*args, "--leave", "--begin=now+5"], capture_output=True,
                           text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    assert "submitted" in first.stdout
    queued = _queued()
    assert queued, "the client's exit cancelled its jobs"
    second = subprocess.run([*args], capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout.splitlines()[-1]) == {"values": [3 * i for i in range(8)]}
    assert len(log.read_text().splitlines()) == 1, "the new client ran sbatch"
