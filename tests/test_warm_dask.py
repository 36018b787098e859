"""Warm runners on the dask backend and in HogCluster: the local backend's guarantees."""

from __future__ import annotations

import hogtest_basic as basic
import hogtest_warm as warm
import pytest
from conftest import alive, wait_for

from hog_executor import HogExecutor, RemoteProcessError, WalltimeExceeded

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow
NO_DASHBOARD = {"dashboard_address": ":0"}


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                                  **NO_DASHBOARD) as cluster:
        yield cluster


@pytest.fixture
def dex(cluster, cache_dir):
    ex = HogExecutor("dask", address=cluster.scheduler_address, cache_dir=cache_dir)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True, terminate=True)


def test_a_workers_runner_is_reused_and_not_shared_across_keys(dex):
    pids = {dex.submit(warm.pid).result(timeout=300) for _ in range(4)}
    assert len(pids) == 1
    (pid,) = pids
    assert alive(pid)
    other = dex.options(env={"HOG_TEST_WARM": "dask"})
    assert other.submit(warm.pid).result(timeout=300) != pid
    assert other.submit(basic.getenv, "HOG_TEST_WARM").result(timeout=120) == "dask"
    assert dex.submit(warm.remember, 1).result(timeout=120)[-1] == 1  # module state persists


def test_each_call_of_a_chunk_keeps_its_output(dex):
    futures = [dex.submit(warm.shout, i) for i in range(20)]
    for i, f in enumerate(futures):
        assert f.result(timeout=300) == i
        assert f.stdout == f"out {i}\nfd {i}\n" and f.stderr.endswith(f"err {i}\n")


def test_walltime_and_a_killed_runner_fail_only_their_call(dex):
    from hog_executor.executor import submit_calls

    chunk = submit_calls(dex.options(walltime=2), basic.sleep,
                         [((0, 1), {}), ((30, 2), {}), ((0, 3), {})], chunksize=3)
    assert chunk[0].result(timeout=300) == 1
    with pytest.raises(WalltimeExceeded):
        chunk[1].result(timeout=120)
    assert chunk[2].result(timeout=120) == 3
    killed = submit_calls(dex, warm.die_on, [((i, 1), {}) for i in range(3)], chunksize=3)
    assert killed[0].result(timeout=300) == 0
    with pytest.raises(RemoteProcessError):
        killed[1].result(timeout=120)
    assert killed[2].result(timeout=120) == 2


def test_fresh_process_on_the_dask_backend(dex):
    fresh = dex.options(fresh_process=True)
    assert len({fresh.submit(warm.pid).result(timeout=300) for _ in range(2)}) == 2


def test_closing_the_worker_ends_its_runners(cache_dir):
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  **NO_DASHBOARD) as cluster:
        ex = HogExecutor("dask", address=cluster.scheduler_address, cache_dir=cache_dir)
        pid = ex.submit(warm.pid).result(timeout=300)
        assert alive(pid)
        ex.shutdown()
    assert wait_for(lambda: not alive(pid), timeout=60)


def test_hog_cluster_tasks_share_warm_runners(cache_dir):
    from distributed import Client

    from hog_executor.distributed import HogCluster

    with HogCluster("local", max_workers=1, cache_dir=cache_dir,
                    cluster_options=NO_DASHBOARD) as cluster, \
            Client(cluster) as client:
        pids = client.gather(client.map(warm.pid, range(6), pure=False))
        assert len(set(pids)) == 1
        again = client.submit(warm.pid, "again", pure=False).result(timeout=300)
        assert again == pids[0]
