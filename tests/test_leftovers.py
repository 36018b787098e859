"""A call ends when its function returns: what it left running never holds its result back,
and is stopped with it (warm runners and one-shot bundles)."""

from __future__ import annotations

import hogtest_warm as warm
import pytest
from conftest import alive, wait_for

from hog_executor import HogExecutor, WalltimeExceeded


@pytest.fixture(params=["warm", "fresh"])
def ex(request, cache_dir):
    ex = HogExecutor("local", max_workers=1, cache_dir=cache_dir,
                     fresh_process=request.param == "fresh")
    ex.submit(warm.pid).result(timeout=300)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True, terminate=True)


@pytest.mark.parametrize("kind", ["child", "session", "daemon"])
def test_processes_a_call_leaves_behind_end_with_it(ex, kind):
    f = ex.submit(warm.spawn, kind)
    pid = f.result(timeout=30)  # far less than the child's 60 s: nothing waits for it
    assert wait_for(lambda: not alive(pid), timeout=30), f"{kind} {pid} outlived its call"
    assert ex.submit(warm.pid).result(timeout=30)  # the slot is free


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["session", "daemon"])
def test_walltime_stops_what_the_call_started(ex, kind, tmp_path):
    f = ex.options(walltime=2).submit(warm.spawn, kind, 30)
    with pytest.raises(WalltimeExceeded):
        f.result(timeout=60)
    # the spawned sleep's pid is not returned: find it as a `sleep 60` of ours
    from conftest import session_processes

    assert wait_for(lambda: not [p for p in session_processes("sleep 60")], timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["session", "daemon"])
def test_shutdown_that_stops_running_calls_stops_what_they_started(ex, kind):
    from conftest import session_processes

    f = ex.submit(warm.spawn, kind, 30)
    assert wait_for(lambda: bool(session_processes("sleep 60")), timeout=60)
    ex.shutdown(wait=True, cancel_futures=True, terminate=True)
    assert f.cancelled() or f.exception(timeout=30) is not None
    assert wait_for(lambda: not session_processes("sleep 60"), timeout=30), \
        session_processes("sleep 60")
