"""Retries of infrastructure failures on the cluster backends: a Slurm job whose process was
killed, and a Dask task whose worker died, run again and succeed; ``attempts`` says so."""

from __future__ import annotations

import os
import signal

import hogtest_basic as basic
import hogtest_warm as warm
import pytest
from conftest import wait_for

from hog_executor import HogExecutor, RemoteProcessError

pytestmark = pytest.mark.slow


def test_a_slurm_job_killed_by_a_signal_runs_again(slurm_cluster, tmp_path, cache_dir):
    with HogExecutor("slurm", partition=slurm_cluster.partition,
                     shared_dir=str(tmp_path / "shared"), cache_dir=cache_dir,
                     poll_interval=0.2, retries=1) as ex:
        futures = ex.map(warm.die_once, [1, 2, 3], [{2}] * 3, [str(tmp_path)] * 3,
                         chunksize=1)
        assert list(futures) == [1, 2, 3]
        again = ex.submit(warm.die_once, 4, {4}, str(tmp_path))
        assert again.result(timeout=300) == 4 and again.attempts == 2
        assert (tmp_path / "died-2").exists()
    with HogExecutor("slurm", partition=slurm_cluster.partition,
                     shared_dir=str(tmp_path / "shared"), cache_dir=cache_dir,
                     poll_interval=0.2) as ex:
        once = ex.submit(warm.die_once, 5, {5}, str(tmp_path))
        with pytest.raises(RemoteProcessError):
            once.result(timeout=300)  # no retries asked for
        assert once.attempts == 1


def _worker_pid(client) -> int:
    (pid,) = client.run(os.getpid).values()
    return int(pid)


def test_a_call_whose_dask_worker_died_runs_again(tmp_path, cache_dir):
    distributed = pytest.importorskip("distributed")
    import dask

    started = tmp_path / "started"
    # The scheduler gives up on a task at the first worker death, so hog-executor sees it.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                     dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        first = _worker_pid(client)
        with HogExecutor("dask", address=cluster.scheduler_address, cache_dir=cache_dir,
                         retries=1) as ex:
            f = ex.submit(basic.sleep_once, 60, str(started), "done")
            assert wait_for(started.exists, timeout=300), "the call did not start"
            os.kill(first, signal.SIGKILL)  # the nanny starts a new worker
            assert f.result(timeout=300) == "done"
            assert f.attempts == 2
        assert _worker_pid(client) != first
