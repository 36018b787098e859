"""Warm runners on the local endpoint: real runner processes serving many calls."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import sys
import textwrap
import threading

import hogtest_basic as basic
import hogtest_warm as warm
import pytest
from conftest import alive, wait_for

from hog_executor import HogExecutor, RemoteProcessError, WalltimeExceeded
from hog_executor.executor import submit_calls


@pytest.fixture
def make(cache_dir):
    made = []

    def make(**config):
        ex = HogExecutor("local", cache_dir=cache_dir, **{"max_workers": 2, **config})
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True, terminate=True)


def test_a_warm_runner_is_reused_for_calls_of_one_key(make):
    ex = make(max_workers=1)
    pids = [ex.submit(warm.pid).result(timeout=120) for _ in range(5)]
    assert len(set(pids)) == 1
    assert alive(pids[0])  # still up, waiting for the next call
    # remembered state: the same process, module globals persist (as in a process pool)
    assert ex.submit(warm.remember, 1).result(timeout=60) == [1]
    assert ex.submit(warm.remember, 2).result(timeout=60) == [1, 2]


def test_runners_are_not_shared_across_keys(make):
    ex = make(max_workers=2)
    a = ex.submit(warm.pid).result(timeout=120)
    other = ex.options(env={"HOG_TEST_WARM": "1"})  # another process-level setting
    b = other.submit(warm.pid).result(timeout=120)
    assert a != b
    assert ex.submit(warm.pid).result(timeout=60) == a
    assert other.submit(warm.pid).result(timeout=60) == b
    assert other.submit(basic.getenv, "HOG_TEST_WARM").result(timeout=60) == "1"
    assert ex.submit(basic.getenv, "HOG_TEST_WARM").result(timeout=60) is None


def test_the_runner_idle_longest_makes_room_for_another_key(make):
    ex = make(max_workers=1)
    a = ex.submit(warm.pid).result(timeout=120)
    b = ex.options(env={"HOG_TEST_WARM": "2"}).submit(warm.pid).result(timeout=120)
    assert a != b
    assert wait_for(lambda: not alive(a), timeout=30)  # one slot: the idle runner stopped


def test_max_calls_per_process(make):
    ex = make(max_workers=1, max_calls_per_process=3)
    pids = [ex.submit(warm.pid).result(timeout=120) for _ in range(7)]
    assert pids[0] == pids[1] == pids[2] != pids[3]
    assert pids[3] == pids[4] == pids[5] != pids[6]
    # inside one chunk too: the rest of the chunk moves to a new runner
    chunked = list(make(max_workers=1, max_calls_per_process=3).map(warm.pid, range(7),
                                                                     chunksize=7))
    assert [len(set(chunked[i:i + 3])) for i in (0, 3)] == [1, 1]
    assert len(set(chunked)) == 3


def test_idle_timeout_ends_the_runner(make):
    ex = make(max_workers=1, idle_timeout=1)
    p = ex.submit(warm.pid).result(timeout=120)
    assert wait_for(lambda: not alive(p), timeout=30)
    assert ex.submit(warm.pid).result(timeout=120) != p


def test_fresh_process_gives_every_call_its_own_process(make):
    ex = make(max_workers=1, fresh_process=True)
    pids = {ex.submit(warm.pid).result(timeout=120) for _ in range(3)}
    assert len(pids) == 3
    warm_ex = make(max_workers=1)
    per_call = warm_ex.options(fresh_process=True)
    assert len({per_call.submit(warm.pid).result(timeout=120) for _ in range(2)}) == 2


@pytest.mark.slow
def test_each_call_keeps_its_own_output_under_many_threads(make):
    ex = make(max_workers=2)
    ex.submit(warm.pid).result(timeout=300)  # the environment is built (its log goes first)
    futures: list[cf.Future] = []
    lock = threading.Lock()

    def submit_many(base):
        mine = [ex.submit(warm.shout, base + i) for i in range(500)]
        with lock:
            futures.extend(mine)

    threads = [threading.Thread(target=submit_many, args=(t * 1000,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(futures) == 4000
    for f in futures:
        x = f.result(timeout=300)
        assert f.stdout == f"out {x}\nfd {x}\n"
        assert f.stderr == f"err {x}\n"


@pytest.mark.slow
def test_map_chunk_futures_resolve_one_by_one(make):
    ex = make(max_workers=1)
    ex.submit(warm.pid).result(timeout=120)  # warm
    futures = [ex.submit(warm.pid_after, s) for s in (0, 3)]
    first, second = futures
    first.result(timeout=60)
    assert not second.done()  # the chunk's first call is answered before the second ends
    second.result(timeout=60)
    calls = list(ex.map(warm.shout, range(6), chunksize=6))
    assert calls == list(range(6))


@pytest.mark.slow
def test_walltime_fails_only_its_own_call(make):
    ex = make(max_workers=1)
    pid = ex.submit(warm.pid).result(timeout=120)
    slow = ex.options(walltime=1).submit(warm.nap, 30)  # same script: same runner key
    queued = [ex.submit(warm.pid) for _ in range(3)]
    with pytest.raises(WalltimeExceeded):
        slow.result(timeout=60)
    after = {f.result(timeout=60) for f in queued}
    assert not alive(pid)
    assert len(after) == 1 and pid not in after
    # inside a chunk: only the slow call fails
    chunk = submit_calls(ex.options(walltime=2), basic.sleep,
                         [((0, 1), {}), ((30, 2), {}), ((0, 3), {})], chunksize=3)
    assert len({f.job_id for f in chunk}) == 1
    assert chunk[0].result(timeout=60) == 1
    with pytest.raises(WalltimeExceeded):
        chunk[1].result(timeout=60)
    assert chunk[2].result(timeout=60) == 3


def test_a_killed_runner_fails_its_call_alone(make):
    ex = make(max_workers=2)
    futures = [ex.submit(warm.die_on, i, 3) for i in range(8)]
    for i, f in enumerate(futures):
        if i == 3:
            with pytest.raises(RemoteProcessError, match="SIGKILL"):
                f.result(timeout=120)
        else:
            assert f.result(timeout=120) == i


@pytest.mark.slow
def test_runners_killed_in_a_big_map_lose_no_call(make):
    ex = make(max_workers=2)
    ex.submit(warm.pid).result(timeout=120)
    doomed = {7, 500, 901}  # die_on kills its runner when x equals its second argument
    futures = submit_calls(ex, warm.die_on,
                           [((i, i if i in doomed else -1), {}) for i in range(1000)],
                           chunksize=100)
    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result(timeout=300))
        except RemoteProcessError:
            outcomes.append(None)
    failed = [i for i, v in enumerate(outcomes) if v is None]
    assert set(failed) == doomed
    assert all(v == i for i, v in enumerate(outcomes) if v is not None)


def _runner_pids(ex):
    return [s.runner.proc.pid for s in ex.backend._slots if s.runner is not None]


@pytest.mark.parametrize("cancel", [False, True])
def test_shutdown_leaves_no_runner(make, cancel):
    ex = make(max_workers=2)
    pids = {ex.submit(warm.pid).result(timeout=120) for _ in range(2)}
    running = ex.submit(basic.sleep, 30) if cancel else None
    ex.shutdown(wait=True, cancel_futures=cancel)
    assert all(wait_for(lambda p=p: not alive(p), timeout=30) for p in pids)
    if running is not None:
        assert running.cancelled() or running.done()


def test_an_edited_script_gets_a_new_runner(make, tmp_path):
    import importlib.util

    path = tmp_path / "edited.py"
    source = textwrap.dedent("""\
        # /// script
        # dependencies = []
        # ///
        import os
        def f():
            return ("VERSION", os.getpid())
    """)
    def load(version):  # the client runs the script as it is now, as a new process would
        path.write_text(source.replace("VERSION", version))
        spec = importlib.util.spec_from_file_location("hogtest_edited", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["hogtest_edited"] = mod
        spec.loader.exec_module(mod)
        return mod

    try:
        f = load("one").f
        v1, p1 = make(max_workers=1, script=str(path)).submit(f).result(timeout=120)
        f = load("two").f
        v2, p2 = make(max_workers=1, script=str(path)).submit(f).result(timeout=120)
    finally:
        sys.modules.pop("hogtest_edited", None)
    assert (v1, v2) == ("one", "two") and p1 != p2


def test_cancel_of_a_running_call_stops_its_runner(make):
    ex = make(max_workers=1)
    pid = ex.submit(warm.pid).result(timeout=120)
    f = ex.submit(basic.sleep, 30)
    assert wait_for(f.running, timeout=60)
    assert f.stop()
    assert wait_for(lambda: not alive(pid), timeout=30)
    assert wait_for(f.done, timeout=30) and f.cancelled()
    assert ex.submit(warm.pid).result(timeout=120) != pid


def test_sigkill_of_the_client_ends_its_runners(tmp_path, cache_dir):
    import subprocess

    code = textwrap.dedent(f"""
        import sys
        import time
        sys.path.insert(0, {str(os.path.dirname(warm.__file__))!r})
        import hogtest_warm as warm
        from hog_executor import HogExecutor
        ex = HogExecutor("local", max_workers=1, cache_dir={cache_dir!r})
        print(ex.submit(warm.pid).result(timeout=120), flush=True)
        time.sleep(600)
    """)
    client = subprocess.Popen([sys.executable, "-c", code],
                              stdout=subprocess.PIPE, text=True)
    try:
        pid = int(client.stdout.readline())
        assert alive(pid)
        os.kill(client.pid, signal.SIGKILL)
        client.wait()
        assert wait_for(lambda: not alive(pid), timeout=30)
    finally:
        client.kill()
