"""Cancellation and shutdown: every future resolves, no process or temp dir is left behind."""

from __future__ import annotations

import concurrent.futures as cf
import os
import time

import hogtest_basic as basic
import pytest
from conftest import alive, session_processes, wait_for

from hog_executor import HogExecutor


@pytest.fixture
def serial(cache_dir):
    """A local executor with one process slot: a second call waits for the first."""
    with HogExecutor("local", max_workers=1, cache_dir=cache_dir) as ex:
        yield ex


def test_cancel_pending_call(serial):
    blocker = serial.submit(basic.sleep, 1, "done")  # holds the only slot
    queued = serial.submit(basic.square, 3)
    assert queued.cancel()
    assert queued.cancel()  # cancelling twice is fine
    assert queued.cancelled()
    with pytest.raises(cf.CancelledError):
        queued.result()
    assert blocker.result() == "done"
    done, _ = cf.wait([queued, blocker], timeout=5)
    assert queued in done


def test_cancel_after_start_is_refused_like_the_stdlib(serial):
    f = serial.submit(basic.sleep, 1, "ok")
    assert wait_for(f.running)
    assert not f.cancel()
    assert f.result() == "ok"


def test_shutdown_cancel_futures_stops_running_and_pending_work(cache_dir, tmp_path):
    pidfile = tmp_path / "pids"
    ex = HogExecutor("local", max_workers=2, cache_dir=cache_dir)
    workdir = ex.backend.workdir
    running = [ex.submit(basic.sleep_with_child, 120, str(pidfile)) for _ in range(2)]
    pending = [ex.submit(basic.sleep, 120) for _ in range(3)]
    assert wait_for(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 4)
    start = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True, terminate=True)
    assert time.monotonic() - start < 30
    for f in running + pending:
        assert f.done()
        assert f.cancelled()
    for pid in map(int, pidfile.read_text().split()):
        assert wait_for(lambda pid=pid: not alive(pid), 10), f"process {pid} survived"
    assert not os.path.exists(workdir)
    assert session_processes(workdir) == []


def test_shutdown_waits_for_running_work(cache_dir):
    ex = HogExecutor("local", max_workers=2, cache_dir=cache_dir)
    futures = [ex.submit(basic.sleep, 0.5, i) for i in range(4)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 1, 2, 3]
    assert not os.path.exists(ex.backend.workdir)


def test_shutdown_without_wait_returns_at_once(cache_dir):
    ex = HogExecutor("local", max_workers=1, cache_dir=cache_dir)
    f = ex.submit(basic.sleep, 1, "late")
    start = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - start < 1
    assert f.result(timeout=60) == "late"
    assert wait_for(lambda: not os.path.exists(ex.backend.workdir), 30)


@pytest.mark.slow
def test_closing_a_map_iterator_cancels_what_is_left(cache_dir):
    with HogExecutor("local", max_workers=1, cache_dir=cache_dir) as ex:
        results = ex.map(basic.sleep, [0, 2, 60, 60], chunksize=1)
        futures = list(ex.backend._queue)  # the jobs not yet started
        assert next(results) is None
        start = time.monotonic()
        results.close()
    assert time.monotonic() - start < 30  # the running call finishes, queued ones never start
    assert any(job.future.cancelled() for job in futures)


def test_context_manager_shuts_down(cache_dir):
    with HogExecutor("local", cache_dir=cache_dir) as ex:
        f = ex.submit(basic.square, 5)
    assert f.done() and f.result() == 25
    with pytest.raises(RuntimeError):
        ex.submit(basic.square, 1)


def test_call_temp_dirs_are_removed(executor):
    fresh = executor.options(fresh_process=True)  # a process of its own: gone with the call
    fresh.submit(basic.square, 5).result()
    with pytest.raises(ValueError):
        fresh.submit(basic.fail_value, "x").result()
    assert [n for n in os.listdir(executor.backend.workdir) if n.startswith("hog-call.")] == []
    executor.submit(basic.square, 5).result()  # a warm runner keeps its directory while it lives
    workdir = executor.backend.workdir
    assert [n for n in os.listdir(workdir) if n.startswith("hog-call.")]
    executor.shutdown(wait=True)
    assert not os.path.exists(workdir)


EXIT_SCRIPT = '''# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
import sys
from pathlib import Path


def mark(i, blob, where):
    Path(where, f"mark-{i}").write_text(str(len(blob)))


if __name__ == "__main__":
    from hog_executor import HogExecutor

    ex = HogExecutor("local", max_workers=1, cache_dir=sys.argv[2])
    for i in range(3):
        ex.submit(mark, i, b"x" * 2_000_000, sys.argv[1])  # over proxy_threshold: the store
    # no shutdown: the interpreter exits with calls queued
'''


@pytest.mark.slow  # a second interpreter, the store and three calls of 2 MB
def test_calls_queued_at_exit_run_and_their_store_is_removed(cache_dir, tmp_path):
    pytest.importorskip("proxystore")
    import subprocess
    import sys

    script = tmp_path / "exit_script.py"
    script.write_text(EXIT_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.run([sys.executable, str(script), str(out), cache_dir], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["mark-0", "mark-1", "mark-2"]
    left = [p.name for p in tmp.iterdir() if not p.name.startswith("uv-")]  # uv's own locks
    assert left == []  # no store, work or call directory left


def test_the_interrupt_line_says_what_was_stopped():
    from hog_executor.backends.lifecycle import interrupt_message

    assert interrupt_message("interrupted", 4, 0) == \
        "hog-executor: interrupted; stopped 4 running calls"
    assert interrupt_message("terminated by SIGTERM", 1, 1) == \
        "hog-executor: terminated by SIGTERM; stopped 1 running call, cancelled 1 queued call"
    assert interrupt_message("interrupted", 0, 0) == \
        "hog-executor: interrupted; no call was running"
