"""Backend life cycle on this machine: cancelling a call as it starts, and executors dropped
without a shutdown. Real bundles, real processes, real uv environments."""

from __future__ import annotations

import gc
import os
import tempfile

import hogtest_basic as basic
import pytest
from conftest import wait_for

from hog_executor import HogExecutor
from hog_executor.backends.local import LocalBackend


def _touch(path, data):
    with open(path, "w") as f:
        f.write(str(len(data)))
    return len(data)


def test_a_call_cancelled_while_its_process_starts_never_runs(cache_dir, tmp_path):
    # A large inline argument makes the bundle slow to write: the backend's future is running
    # while the process is not started yet. A cancel then must stop the call, not lose it.
    big = b"x" * 6_000_000
    ex = HogExecutor("local", max_workers=1, proxy_threshold="100MB", cache_dir=cache_dir)
    try:
        assert ex.submit(_touch, str(tmp_path / "warm"), b"").result(timeout=300) == 0
        hits = 0
        for attempt in range(10):
            if hits == 2:
                break
            marker = tmp_path / f"ran-{attempt}"
            fut = ex.submit(_touch, str(marker), big)
            job_future = fut._results.job.future
            while not (job_future.running() or job_future.done()):
                pass
            if not fut.cancel():
                fut.result(timeout=300)  # it had started: it runs to the end
                continue
            hits += 1
            assert wait_for(job_future.done, timeout=300)
            assert fut.cancelled()
            assert not marker.exists(), "a call reported cancelled ran anyway"
        assert hits, "no cancel arrived before the process started"
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The temp root the local backend creates its work directory in."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_an_unused_local_executor_creates_no_directory(private_tmp, cache_dir):
    ex = HogExecutor("local", cache_dir=cache_dir)
    assert not list(private_tmp.glob("hog-local-*"))
    del ex
    gc.collect()
    assert not list(private_tmp.glob("hog-local-*"))


def test_a_local_executor_dropped_without_shutdown_removes_its_directory(private_tmp,
                                                                          cache_dir):
    ex = HogExecutor("local", max_workers=2, cache_dir=cache_dir)
    assert ex.submit(basic.square, 3).result(timeout=300) == 9
    backend = ex.backend
    assert isinstance(backend, LocalBackend)
    workdir = backend.workdir
    assert os.path.isdir(workdir)
    del ex, backend

    def gone() -> bool:
        gc.collect()  # idle worker threads exit, then nothing holds the backend
        return not os.path.exists(workdir)

    assert wait_for(gone, timeout=60, interval=0.2)
