"""Dask integration: client.map through HogCluster, and the dask backend on a LocalCluster.

Real ``distributed.LocalCluster``s (in-process and separate-process workers), real bundles,
real uv environments. Every test that starts a cluster is marked slow; what remains without
the mark reads tasks and drives ``HogTaskExecutor`` on a local executor.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import signal
import subprocess
import sys
import threading

import hogtest_deps as deps
import hogtest_dist as fns
import pytest
from conftest import alive, session_processes, wait_for

try:
    import dask
    from distributed import Client, LocalCluster, as_completed, wait
except ImportError:  # CI installs them (the test extra): there a missing one is a failure
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("dask and distributed are not installed (pip install 'hog-executor[dask]')",
                allow_module_level=True)

from hog_executor import BackendError, ConfigError, HogExecutor, RemoteProcessError
from hog_executor.distributed import HogCluster, HogTaskExecutor

NO_DASHBOARD = {"dashboard_address": ":0"}  # any free port: tests may run side by side


def _read_int(path):
    with open(path) as f:
        return int(f.read())


# -- reading tasks ----------------------------------------------------------------------------


def test_task_reading():
    from dask._task_spec import Alias, List, Task, TaskRef
    from dask.utils import apply

    from hog_executor.distributed.tasks import (
        is_data,
        is_simple_call,
        user_functions,
        value_of,
    )

    simple = Task("k", fns.add, TaskRef("a"), 2)
    assert is_simple_call(simple) and not is_data(simple)
    assert value_of(simple.args[0], {"a": 40}) == 40
    gathered = Task("k", fns.add, List(TaskRef("a"), TaskRef("b")), b=1)
    assert is_simple_call(gathered)
    assert value_of(gathered.args[0], {"a": 1, "b": 2}) == [1, 2]
    nested = Task("k", fns.add, Task(None, fns.square, 2), 3)
    assert not is_simple_call(nested)
    found = []
    user_functions(nested, found)
    assert found == [fns.add, fns.square]
    assert not is_simple_call(Task("k", apply, fns.add, [1, 2]))  # dask's own function
    assert not is_simple_call(Task("k", fns.add, [TaskRef("a")], 1))  # a ref in a literal
    assert is_data(List(TaskRef("a"), 3)) and is_data(Alias("x", "y"))
    assert not is_data(List(nested))


# -- HogCluster: client.map through HogExecutor -----------------------------------------------


@pytest.fixture(scope="module")
def hog_client(cache_dir):
    with HogCluster("local", max_workers=2, cache_dir=cache_dir,
                    cluster_options=NO_DASHBOARD) as cluster, Client(cluster) as client:
        yield client


@pytest.mark.slow
def test_cluster_threads_follow_the_endpoint(cache_dir):
    with HogCluster("local", max_workers=3, cache_dir=cache_dir,
                    cluster_options=NO_DASHBOARD) as cluster:
        assert cluster.concurrency == 3
        assert sum(w.state.nthreads for w in cluster.workers.values()) == 3


def test_bad_endpoint_config_fails_before_starting():
    with pytest.raises(ConfigError, match="no_such_key"):
        HogCluster("local", no_such_key=1)


@pytest.mark.slow
def test_map_gather_run_in_other_processes(hog_client):
    futures = hog_client.map(fns.square, range(10))
    assert hog_client.gather(futures) == [x * x for x in range(10)]
    pids = set(hog_client.gather(hog_client.map(fns.pid, range(4))))
    assert os.getpid() not in pids  # the in-process worker handed every task to a bundle


@pytest.mark.slow
def test_submit_scatter_and_dependencies(hog_client):
    data = hog_client.scatter(40)
    a = hog_client.submit(fns.add, data, 2)
    b = hog_client.submit(fns.add, a, a)
    assert b.result(timeout=120) == 84


@pytest.mark.slow
def test_as_completed_and_wait(hog_client):
    futures = hog_client.map(fns.slow_square, range(4), seconds=0.1)
    _, not_done = wait(futures, timeout=120)
    assert not not_done
    assert sorted(f.result() for f in as_completed(futures)) == [0, 1, 4, 9]


@pytest.mark.slow
def test_remote_exceptions_keep_their_type(hog_client):
    with pytest.raises(fns.CustomError, match="broken") as info:
        hog_client.submit(fns.fail, "broken").result(timeout=120)
    if sys.version_info >= (3, 11):
        assert any("Remote traceback" in note for note in info.value.__notes__)
    with pytest.raises(KeyError):
        hog_client.submit(fns.fail_key, "k").result(timeout=120)


@pytest.mark.slow
def test_retries_rerun_the_call(hog_client, tmp_path):
    counter = str(tmp_path / "count")
    assert hog_client.submit(fns.flaky, counter, retries=2).result(timeout=120) == 2


@pytest.mark.slow
def test_task_trees_run_with_dask_in_the_remote_environment(hog_client):
    # A nested call is one task the remote side evaluates with dask (added automatically).
    assert hog_client.get({"x": (fns.add, (fns.add, 1, 2), 3)}, "x") == 6


@pytest.mark.slow
def test_annotation_routes_tasks_to_hog(cache_dir):
    with HogCluster("local", max_workers=2, cache_dir=cache_dir, default=False,
                    cluster_options=NO_DASHBOARD) as cluster, Client(cluster) as client:
        plain = client.submit(fns.pid, "plain").result(timeout=120)
        with dask.annotate(executor="hog"):
            routed = client.submit(fns.pid, "hog").result(timeout=120)
        assert plain == os.getpid()  # ran on the in-process worker's thread
        assert routed != os.getpid()


@pytest.mark.slow
def test_batch_packs_waiting_tasks_into_shared_bundles(cache_dir):
    with HogCluster("local", max_workers=1, batch=8, cache_dir=cache_dir,
                    cluster_options=NO_DASHBOARD) as cluster, Client(cluster) as client:
        assert sum(w.state.nthreads for w in cluster.workers.values()) == 8
        futures = client.map(fns.pid, range(24))
        pids = client.gather(futures)
        assert len(pids) == 24
        assert len(set(pids)) < 24  # tasks shared processes
        assert client.gather(client.map(fns.square, range(24))) == [x * x for x in range(24)]
        with pytest.raises(fns.CustomError):
            client.submit(fns.fail, "in a batch").result(timeout=120)


@pytest.mark.slow
def test_cancelled_tasks_waiting_for_a_slot_never_run(cache_dir, tmp_path):
    with HogCluster("local", max_workers=1, batch=2, cache_dir=cache_dir,
                    cluster_options=NO_DASHBOARD) as cluster, Client(cluster) as client:
        first = client.submit(fns.record_and_sleep, str(tmp_path / "first"), 4)
        assert wait_for(lambda: (tmp_path / "first").exists(), timeout=120)
        # The worker has a second thread, so this task reaches the executor and waits there.
        second = client.submit(fns.record_and_sleep, str(tmp_path / "second"), 0)
        worker = next(iter(cluster.workers.values()))
        assert wait_for(lambda: len(worker.state.executing) == 2, timeout=60)
        client.cancel(second)
        assert first.result(timeout=120) == "slept"
        assert wait_for(lambda: not worker.state.executing, timeout=60)  # the slot is free
        assert not (tmp_path / "second").exists()
        assert client.submit(fns.square, 4).result(timeout=120) == 16


@pytest.mark.slow
def test_task_executor_on_a_plain_worker(cache_dir):
    from distributed import Scheduler, Worker

    async def run():
        ex = HogTaskExecutor("local", max_workers=1, cache_dir=cache_dir)
        async with Scheduler(dashboard_address=":0") as scheduler, \
                Worker(scheduler.address, nthreads=2, executor={"hog": ex},
                       plugins=[ex.worker_plugin()]), \
                Client(scheduler.address, asynchronous=True) as client:
            with dask.annotate(executor="hog"):
                futures = client.map(fns.pid, range(3))
            pids = await client.gather(futures)
            local = await client.submit(fns.pid, "here")
        return pids, local

    import asyncio

    pids, local = asyncio.run(run())
    assert local == os.getpid()
    assert os.getpid() not in pids


def test_task_executor_pickles_to_its_configuration(cache_dir):
    import pickle

    ex = HogTaskExecutor("local", max_workers=1, cache_dir=cache_dir)
    clone = pickle.loads(pickle.dumps(ex))
    assert isinstance(clone, HogTaskExecutor)
    assert clone.executor.endpoint.values["max_workers"] == 1
    clone.shutdown()
    ex.shutdown()


def _executor_workdir(dask_worker):
    hog = dask_worker.executors["hog"]._hog
    return (os.getpid(), hog.backend.workdir if hog is not None else None)


@pytest.mark.slow
def test_worker_processes_and_worker_loss_in_the_middle_of_a_map(cache_dir):
    with HogCluster("local", max_workers=2, n_workers=2, processes=True, cache_dir=cache_dir,
                    cluster_options=NO_DASHBOARD) as cluster, Client(cluster) as client:
        futures = client.map(fns.slow_square, range(8), seconds=0.4)
        assert wait_for(lambda: any(f.done() for f in futures), timeout=120)
        running = [v for v in client.run(_executor_workdir).values() if v[1]]
        victim, workdir = running[0]
        os.kill(victim, signal.SIGKILL)
        try:
            _, not_done = wait(futures, timeout=180)
            assert not not_done  # every future resolves
            assert client.gather(futures) == [x * x for x in range(8)]  # lost tasks ran again
        finally:  # a killed process cannot remove its executor's work directory
            # The bundles it had started end on their own.
            assert wait_for(lambda: not session_processes(workdir), timeout=60)
            shutil.rmtree(workdir, ignore_errors=True)
        with pytest.raises(fns.CustomError, match="across processes"):
            client.submit(fns.fail, "across processes").result(timeout=120)


# -- the dask backend: bundles on an existing cluster ----------------------------------------


@pytest.fixture(scope="module")
def dask_client():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      **NO_DASHBOARD) as cluster, Client(cluster) as client:
        yield client


@pytest.fixture
def dask_ex(dask_client, cache_dir):
    ex = HogExecutor("dask", client=dask_client, cache_dir=cache_dir)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True, terminate=True)


@pytest.mark.slow
def test_dask_backend_runs_calls_and_maps(dask_ex):
    assert dask_ex.backend.workers == 2
    f = dask_ex.submit(fns.square, 7)
    assert f.result(timeout=120) == 49
    assert dask_ex.submit(fns.pid).result(timeout=120) != os.getpid()
    assert list(dask_ex.map(fns.square, range(9))) == [x * x for x in range(9)]
    with pytest.raises(fns.CustomError, match="bad"):
        dask_ex.submit(fns.fail, "bad").result(timeout=120)


@pytest.mark.slow
def test_dask_backend_builds_the_scripts_environment(dask_ex):
    assert dask_ex.submit(deps.six_version).result(timeout=300) == "1.16.0"


@pytest.mark.slow
def test_dask_backend_cancels_queued_and_running_calls(dask_ex, tmp_path):
    # No worker has this resource: the task waits on the scheduler until cancelled.
    queued = dask_ex.options(resources={"HOG_TEST_NONE": 1}).submit(fns.square, 2)
    assert queued.cancel()
    assert queued.cancelled()
    marker = str(tmp_path / "pid")
    running = dask_ex.submit(fns.record_and_sleep, marker, 120)
    assert wait_for(lambda: os.path.exists(marker), timeout=120)
    pid = _read_int(marker)
    assert alive(pid)
    assert wait_for(running.running, timeout=30)  # the worker reported the start
    dask_ex.shutdown(wait=True, cancel_futures=True, terminate=True)
    assert running.cancelled()
    assert wait_for(lambda: not alive(pid), timeout=30)  # the bundle's process is stopped


@pytest.mark.slow
def test_dask_backend_config_errors(dask_client):
    with pytest.raises(ConfigError, match="address"):
        HogExecutor("dask")
    with pytest.raises(ConfigError, match="not both"):
        HogExecutor("dask", client=dask_client, address="tcp://127.0.0.1:1")
    with pytest.raises(ConfigError, match="resources"):
        HogExecutor("dask", client=dask_client, resources={"GPU": -1})
    with pytest.raises(ConfigError, match=r"distributed\.Client"):
        HogExecutor("dask", client="tcp://127.0.0.1:1")


@pytest.mark.slow
def test_dask_backend_by_address_with_worker_processes_and_worker_loss(cache_dir, tmp_path):
    # With no allowed failures, a task whose worker dies fails instead of running again.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                               **NO_DASHBOARD)
    with cluster:
        ex = HogExecutor("dask", address=cluster.scheduler_address, cache_dir=cache_dir)
        try:
            assert ex.submit(fns.square, 5).result(timeout=120) == 25
            markers = [str(tmp_path / f"pid{i}") for i in range(2)]
            futures = [ex.submit(fns.record_and_sleep, m, 120) for m in markers]
            assert wait_for(lambda: all(os.path.exists(m) for m in markers), timeout=120)
            pids = [_read_int(m) for m in markers]
            victim = next(iter(ex.backend.client.run(os.getpid).values()))
            os.kill(victim, signal.SIGKILL)
            for f in futures:  # every future resolves, with the worker loss named
                with pytest.raises(RemoteProcessError, match="died"):
                    f.result(timeout=120)
            if subprocess.run(["which", "setpriv"], capture_output=True).returncode == 0:
                assert wait_for(lambda: not any(alive(p) for p in pids), timeout=30)
        finally:
            ex.shutdown(wait=True, cancel_futures=True, terminate=True)


def test_importing_hog_executor_imports_no_dask():
    code = ("import sys, hog_executor, hog_executor.backends; "
            "hog_executor.backends.backend_class('dask'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_worker_side_functions_need_no_hog_executor(tmp_path):
    """What the dask backend ships to workers unpickles and runs where hog_executor is absent."""
    import pickle

    from hog_executor.backends.dask import backend as dask_backend
    from hog_executor.backends.dask import worker as dask_worker

    shipped = dask_backend._Shipped(dask_worker.run_bundle)
    blob = pickle.dumps(shipped)
    code = (
        "import pickle, sys\n"
        "sys.modules['hog_executor'] = None  # any import of it fails\n"
        "fn = pickle.loads(sys.stdin.buffer.read())\n"
        "hints = fn.__globals__['same_machine_hints']()\n"
        "print(fn.__name__, sorted(hints))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split()[0] == "run_bundle"
    assert "HOG_CLIENT_PYTHON" in proc.stdout.decode()


@pytest.mark.slow
def test_dask_task_cancelled_on_the_cluster_is_an_error_not_a_cancellation(dask_ex,
                                                                            dask_client):
    # Waits on the scheduler (no worker has the resource) until something cancels it.
    fut = dask_ex.options(resources={"HOG_TEST_NONE": 1}).submit(fns.square, 2)
    task = dask_ex.backend._tasks[fut.task_id]
    dask_client.cancel([task.dfuture])  # not through the executor: as another party would
    with pytest.raises(BackendError, match="not by this executor"):
        fut.result(timeout=60)
    assert not fut.cancelled()


async def _never_answers(job_ids, dask_worker=None):
    import asyncio

    await asyncio.sleep(90)


@pytest.mark.slow
def test_dask_backend_shutdown_does_not_wait_forever_for_the_workers(dask_client, cache_dir,
                                                                     monkeypatch):
    from hog_executor.backends.dask import backend as dask_backend

    monkeypatch.setattr(dask_backend, "KILL_TIMEOUT", 1.0)
    ex = HogExecutor("dask", client=dask_client, cache_dir=cache_dir)
    ex.backend._kill = dask_backend._Shipped(_never_answers)  # workers that never confirm
    queued = ex.options(resources={"HOG_TEST_NONE": 1}).submit(fns.square, 2)
    done = threading.Event()

    def stop():
        ex.shutdown(wait=True, cancel_futures=True, terminate=True)
        done.set()

    threading.Thread(target=stop, daemon=True).start()
    assert done.wait(60), "shutdown is still waiting for the workers"
    assert queued.cancelled()


# -- HogTaskExecutor: every task future settles ----------------------------------------------


def _simple(key, fn, *args):
    from dask._task_spec import Task

    return Task(key, fn, *args)


def test_task_executor_shutdown_settles_tasks_not_prepared_yet(cache_dir):
    from distributed.worker import _run_task_simple

    ex = HogTaskExecutor("local", max_workers=1, cache_dir=cache_dir)
    gate = threading.Event()
    ex._submitter().submit(gate.wait, 60)  # the thread preparing calls is busy
    outs = [ex.submit(_run_task_simple, _simple(f"k{i}", fns.square, i), {}, 0.0)
            for i in range(3)]
    ex.shutdown(wait=False)
    gate.set()
    assert wait_for(lambda: all(o.done() for o in outs), timeout=60)
    assert all(o.cancelled() for o in outs)
    with pytest.raises(RuntimeError):
        ex.submit(_run_task_simple, _simple("late", fns.square, 1), {}, 0.0)


def test_shared_task_executor_close_settles_waiting_and_running_tasks(cache_dir, tmp_path):
    from distributed.worker import _run_task_simple

    hog = HogExecutor("local", max_workers=1, cache_dir=cache_dir)
    tex = HogTaskExecutor("local", executor=hog, slots=1, cache_dir=cache_dir)
    marker = str(tmp_path / "pid")
    try:
        first = tex.submit(_run_task_simple, _simple("a", fns.record_and_sleep, marker, 60),
                           {}, 0.0)
        assert wait_for(lambda: os.path.exists(marker), timeout=300)
        second = tex.submit(_run_task_simple, _simple("b", fns.square, 3), {}, 0.0)
        tex.shutdown()  # one worker closing: the executor is shared, nothing stops
        assert not first.done() and not second.done()
        tex.close()  # the last one is gone
        assert wait_for(lambda: first.done() and second.done(), timeout=60)
        assert first.cancelled() and second.cancelled()
    finally:
        hog.shutdown(wait=True, cancel_futures=True, terminate=True)
    assert wait_for(lambda: not alive(_read_int(marker)), timeout=30)


def test_task_released_while_its_call_is_made_is_cancelled(cache_dir, tmp_path, monkeypatch):
    from distributed.worker import _run_task_simple

    hog = HogExecutor("local", max_workers=1, cache_dir=cache_dir)
    busy = hog.submit(fns.record_and_sleep, str(tmp_path / "busy"), 30)  # the only process slot
    tex = HogTaskExecutor("local", executor=hog, slots=2, cache_dir=cache_dir)
    from hog_executor.distributed import executor as task_executor

    real_submit = task_executor.submit_calls

    def submit_then_release(*args, **kwargs):
        calls = real_submit(*args, **kwargs)
        tex.cancel_task("late")  # the scheduler releases the task as its call is being made
        return calls

    monkeypatch.setattr(task_executor, "submit_calls", submit_then_release)
    marker = tmp_path / "late"
    try:
        out = tex.submit(_run_task_simple,
                         _simple("late", fns.record_and_sleep, str(marker), 0), {}, 0.0)
        msg = out.result(timeout=120)
        assert msg["op"] == "task-erred"
        assert isinstance(msg["actual_exception"], cf.CancelledError)
        assert out.call is not None and out.call.cancelled()  # the call does not run
    finally:
        busy.cancel()
        tex.close()
        hog.shutdown(wait=True, cancel_futures=True, terminate=True)
    assert not marker.exists()
