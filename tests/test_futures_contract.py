"""The concurrent.futures contract, as CPython's own executor tests check it."""

from __future__ import annotations

import gc
import weakref

import hogtest_warm as warm
import pytest
from conftest import wait_for


def test_map_does_not_keep_results_alive(executor):
    for obj in executor.map(warm.make_dummy, range(10)):
        ref = weakref.ref(obj)
        del obj
        assert wait_for(lambda ref=ref: (gc.collect(), ref())[1] is None, timeout=30)


def test_a_submitted_bound_method_does_not_keep_its_object_alive(executor):
    holder = warm.Holder()
    ref = weakref.ref(holder)
    assert executor.submit(holder.method, 1).result(timeout=120) == 2
    del holder
    assert wait_for(lambda: (gc.collect(), ref())[1] is None, timeout=30)


def test_map_buffersize_submits_lazily(executor):
    consumed = []

    def numbers():
        for i in range(20):
            consumed.append(i)
            yield i

    it = executor.map(warm.pid, numbers(), buffersize=3)
    assert len(consumed) == 3  # no more than buffersize calls ahead
    next(it)
    assert len(consumed) == 4
    assert len(list(it)) == 19
    with pytest.raises(ValueError):
        executor.map(warm.pid, range(3), buffersize=0)


def test_submit_after_shutdown_raises_runtime_error(cache_dir):
    from hog_executor import HogExecutor

    ex = HogExecutor("local", max_workers=1, cache_dir=cache_dir)
    ex.shutdown()
    with pytest.raises(RuntimeError, match=r"^cannot schedule new futures after shutdown$"):
        ex.submit(warm.pid)
    with pytest.raises(RuntimeError, match=r"^cannot schedule new futures after shutdown$"):
        ex.map(warm.pid, range(2))


def test_shutdown_cancel_futures_lets_running_calls_finish(cache_dir):
    from hog_executor import HogExecutor

    ex = HogExecutor("local", max_workers=1, cache_dir=cache_dir)
    ex.submit(warm.pid).result(timeout=120)
    running = ex.submit(warm.nap, 1, "finished")
    assert wait_for(running.running, timeout=60)
    queued = [ex.submit(warm.nap, 0, i) for i in range(5)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert running.result(timeout=0) == "finished"  # as the standard library does
    assert all(f.cancelled() for f in queued)


def test_shutdown_terminate_stops_running_calls(cache_dir):
    from conftest import alive

    from hog_executor import HogExecutor

    ex = HogExecutor("local", max_workers=1, cache_dir=cache_dir)
    pid = ex.submit(warm.pid).result(timeout=120)
    running = ex.submit(warm.nap, 60)
    assert wait_for(running.running, timeout=60)
    ex.shutdown(wait=True, cancel_futures=True, terminate=True)
    assert running.cancelled()
    assert wait_for(lambda: not alive(pid), timeout=30)


def test_keyboard_interrupt_in_a_with_block_stops_the_work(cache_dir):
    from conftest import alive

    from hog_executor import HogExecutor

    futures = []
    pid = None
    with pytest.raises(KeyboardInterrupt), \
            HogExecutor("local", max_workers=1, cache_dir=cache_dir) as ex:
        pid = ex.submit(warm.pid).result(timeout=120)
        futures = [ex.submit(warm.nap, 60) for _ in range(3)]
        assert wait_for(futures[0].running, timeout=60)
        raise KeyboardInterrupt
    assert all(f.cancelled() for f in futures)
    assert wait_for(lambda: not alive(pid), timeout=30)
