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
