"""Pilot workers through dask-jobqueue: the ``dask`` backend on a ``SLURMCluster``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hogtest_basic as basic
import pytest
from conftest import wait_for

from hog_executor import HogExecutor

dask_jobqueue = pytest.importorskip("dask_jobqueue")
distributed = pytest.importorskip("distributed")


def _jobs(name: str) -> list[str]:
    proc = subprocess.run(["squeue", "--noheader", f"--name={name}", "--format=%i %T"],
                          capture_output=True, text=True, check=True, timeout=30)
    return proc.stdout.splitlines()


@pytest.mark.slow
def test_pilot_workers_run_200_calls_then_scale_down(slurm_cluster: Any, tmp_path: Path,
                                                     cache_dir: str) -> None:
    name = f"hog-pilot-{int(time.time())}"
    with dask_jobqueue.SLURMCluster(
        cores=1, processes=1, memory="1GB", queue=slurm_cluster.partition,
        python=sys.executable, job_name=name, walltime="00:20:00",
        log_directory=str(tmp_path / "logs"), scheduler_options={"dashboard_address": None},
    ) as cluster, distributed.Client(cluster) as client:
        cluster.scale(2)
        client.wait_for_workers(2, timeout=180)
        assert len(_jobs(name)) == 2  # two pilot jobs hold the workers
        with HogExecutor("dask", client=client, cache_dir=cache_dir) as ex:
            assert list(ex.map(basic.square, range(200), chunksize=1)) == \
                [x * x for x in range(200)]
            f = ex.submit(basic.add, 1, 2)
            assert ex.submit(basic.add, f, 1).result(timeout=120) == 4  # futures as arguments
        cluster.scale(0)
        assert wait_for(lambda: not _jobs(name), timeout=120, interval=1), _jobs(name)
