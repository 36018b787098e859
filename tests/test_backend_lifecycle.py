"""Backend life cycle on this machine: cancelling a call as it starts, and executors dropped
without a shutdown. Real bundles, real processes, real uv environments."""

from __future__ import annotations

import gc
import os
import tempfile
import threading

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
    # The backend's future is running while the process is not started yet: a cancel then
    # must stop the call, not lose it. The backend's test hook holds the job in that window.
    ex = HogExecutor("local", max_workers=1, cache_dir=cache_dir)
    try:
        assert ex.submit(_touch, str(tmp_path / "warm"), b"").result(timeout=300) == 0
        backend = ex.backend
        assert isinstance(backend, LocalBackend)
        taken, release = threading.Event(), threading.Event()

        def hold(job):
            taken.set()
            release.wait(60)

        backend.starting_hook = hold
        marker = tmp_path / "ran"
        fut = ex.submit(_touch, str(marker), b"")
        job_future = fut._results.job.future
        assert taken.wait(60), "the job was never taken"
        assert job_future.running()
        assert fut.cancel()
        release.set()
        assert wait_for(job_future.done, timeout=60)
        assert fut.cancelled()
        assert b"stopped before start" in job_future.result().stderr
        assert not marker.exists(), "a call reported cancelled ran anyway"
    finally:
        ex.shutdown(wait=True, cancel_futures=True, terminate=True)


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


@pytest.mark.slow  # idle worker threads exit after local.IDLE_EXIT seconds
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
