"""Futures as arguments: local, dask and Slurm (real cluster), and Dask graphs queued at once."""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import hogtest_basic as basic
import pytest

from hog_executor import HogExecutor
from hog_executor.dependencies import MAX_DEPTH, DependentFuture, has_futures
from hog_executor.errors import DependencyError, SerializationError
from hog_executor.futures import HogFuture


def _chain(ex: HogExecutor) -> tuple[Any, ...]:
    """The same small graph of futures as arguments, on any backend; its results."""
    f = ex.submit(basic.add, 1, 2)
    g = ex.submit(basic.add, f, 10)
    h = ex.submit(basic.identity, [f, {"g": g}, (g, 5)])
    squares = list(ex.map(basic.square, [f, g, 4]))
    return (g.result(300), h.result(300), squares)


EXPECTED = (13, [3, {"g": 13}, (13, 5)], [9, 169, 16])


# -- finding futures -------------------------------------------------------------------------

def test_scan_finds_futures_in_containers_only_within_reach() -> None:
    f: HogFuture[Any] = HogFuture()
    assert not has_futures([((1, "a", b"x", None, [1, 2], {"k": 3}), {"z": 1.5})])
    assert has_futures([((f,), {})])
    assert has_futures([((), {"x": {"y": [f]}})])
    assert has_futures([(({1: (f,)},), {})])
    assert has_futures([(({frozenset({1}), 2}, [[f]]), {})])
    deep: Any = f
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    assert not has_futures([((deep,), {})])


def test_scan_is_cheap_without_futures() -> None:
    calls = [((i, "s", 2.0), {}) for i in range(100_000)]
    t0 = time.perf_counter()
    assert not has_futures(calls)
    assert time.perf_counter() - t0 < 0.5  # well under 5 µs a call, even on a loaded machine


# -- local ------------------------------------------------------------------------------------

def test_local_chain_lists_dicts_tuples_and_map(executor: HogExecutor) -> None:
    assert _chain(executor) == EXPECTED


def test_local_failed_upstream_never_runs_its_dependents(executor: HogExecutor) -> None:
    bad = executor.submit(basic.fail_value, "boom")
    g = executor.submit(basic.add, bad, 1)
    h = executor.submit(basic.identity, {"x": g})
    for fut in (g, h):
        exc = fut.exception(timeout=120)
        assert isinstance(exc, DependencyError)
        assert isinstance(exc.__cause__, ValueError) and str(exc.__cause__) == "boom"
    assert isinstance(g, DependentFuture) and g.inner is None  # never submitted
    # Submitted after the failure: fails at once, without a job.
    late = executor.submit(basic.add, bad, 2)
    assert late.done() and isinstance(late.exception(), DependencyError)


@pytest.mark.slow
def test_local_cancelled_upstream(executor: HogExecutor) -> None:
    blockers = [executor.submit(basic.sleep, 2) for _ in range(2)]  # both workers busy
    f = executor.submit(basic.add, 1, 1)
    g = executor.submit(basic.add, f, 1)
    assert f.cancel()
    exc = g.exception(timeout=120)
    assert isinstance(exc, DependencyError)
    assert isinstance(exc.__cause__, cf.CancelledError)
    cf.wait(blockers)


@pytest.mark.slow
def test_cancel_a_waiting_dependent(executor: HogExecutor) -> None:
    f = executor.submit(basic.sleep, 1)
    g = executor.submit(basic.add, f, 1)
    assert g.cancel() and g.cancelled()
    f.result(timeout=120)
    time.sleep(0.2)
    assert g.cancelled() and isinstance(g, DependentFuture) and g.inner is None


def test_futures_of_another_executor_are_refused(executor: HogExecutor, cache_dir: str) -> None:
    with HogExecutor("local", max_workers=1, cache_dir=cache_dir) as other:
        f = other.submit(basic.add, 1, 1)
        with pytest.raises(ValueError, match="another executor"):
            executor.submit(basic.add, f, 1)
        f.result(timeout=120)
    view = executor.options(walltime=60)  # a view shares the executor: accepted
    f = executor.submit(basic.add, 1, 1)
    assert view.submit(basic.add, f, 1).result(timeout=120) == 3


def test_future_beyond_the_scan_is_refused_clearly(executor: HogExecutor) -> None:
    f = executor.submit(basic.add, 1, 1)
    deep: Any = f
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(SerializationError, match="HogFuture is a dependency only"):
        executor.submit(basic.identity, deep)
    f.result(timeout=120)


@pytest.mark.slow
def test_shutdown_waits_for_waiting_dependents(cache_dir: str) -> None:
    ex = HogExecutor("local", max_workers=1, cache_dir=cache_dir)
    f = ex.submit(basic.sleep, 1, 1)
    g = ex.submit(basic.add, f, 1)
    ex.shutdown(wait=True)
    assert g.result(timeout=0) == 2


# -- dask (distributed) ----------------------------------------------------------------------

@pytest.mark.slow
def test_dask_backend_gives_the_same_results(cache_dir: str) -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                                  dashboard_address=None) as cluster, \
            HogExecutor("dask", address=cluster.scheduler_address, cache_dir=cache_dir) as ex:
        assert _chain(ex) == EXPECTED
        bad = ex.submit(basic.fail_value, "boom")
        exc = ex.submit(basic.add, bad, 1).exception(timeout=300)
        assert isinstance(exc, DependencyError) and isinstance(exc.__cause__, ValueError)


# -- Slurm ------------------------------------------------------------------------------------

ACTIVE = "PENDING,RUNNING,CONFIGURING,COMPLETING"


@pytest.fixture
def sex(slurm_cluster: Any, tmp_path: Path, cache_dir: str):
    ex = HogExecutor("slurm", partition=slurm_cluster.partition,
                     shared_dir=str(tmp_path / "shared"), cache_dir=cache_dir,
                     poll_interval=0.2)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True, terminate=True)


def _queue(ids: list[str]) -> dict[str, tuple[str, str]]:
    proc = subprocess.run(["squeue", "--noheader", "--array", "--states=all",
                           "--jobs=" + ",".join(ids * 2), "--format=%i|%T|%r"],
                          capture_output=True, text=True, check=True, timeout=30)
    out = {}
    for line in proc.stdout.splitlines():
        job, state, reason = line.split("|")
        out[job] = (state, reason)
    return out


@pytest.mark.slow
def test_slurm_chain_is_queued_at_once(sex: HogExecutor) -> None:
    f = sex.submit(basic.add, 2, 3)
    g = sex.submit(basic.add, f, 10)
    h = sex.submit(basic.identity, {"f": f, "g": [g]})
    backend: Any = sex.backend
    ids = [backend.slurm_id(x.task_id) for x in (f, g, h)]
    assert all(ids), ids
    queue = _queue(ids)  # right after the submits: nothing can have finished
    assert set(queue) == set(ids)
    pending = [queue[i] for i in ids[1:]]
    assert pending == [("PENDING", "Dependency")] * 2
    assert queue[ids[0]][0] in ("PENDING", "RUNNING", "CONFIGURING")
    assert g.result(timeout=300) == 15
    assert h.result(timeout=300) == {"f": 5, "g": [15]}


@pytest.mark.slow
def test_slurm_failed_upstream_drops_its_dependents(sex: HogExecutor) -> None:
    bad = sex.submit(basic.fail_value, "boom")
    g = sex.submit(basic.add, bad, 1)
    h = sex.submit(basic.identity, [g])
    backend: Any = sex.backend
    ids = [backend.slurm_id(x.task_id) for x in (bad, g, h)]
    for fut in (g, h):
        exc = fut.exception(timeout=300)
        assert isinstance(exc, DependencyError), exc
        assert isinstance(exc.__cause__, ValueError) and str(exc.__cause__) == "boom"
        assert fut.stdout in (None, "")  # never ran: printed nothing
    with pytest.raises(ValueError, match="boom"):
        bad.result()
    states = _queue(ids)
    # Slurm: the upstream job failed, its dependents were cancelled (never started).
    if states:  # still known to the controller (MinJobAge)
        assert states.get(ids[0], ("FAILED",))[0] == "FAILED"
        for job in ids[1:]:
            assert states.get(job, ("CANCELLED",))[0] == "CANCELLED"


@pytest.mark.slow
def test_slurm_cancelled_upstream(sex: HogExecutor) -> None:
    f = sex.options(sbatch_flags=["--begin=now+60"]).submit(basic.add, 1, 1)  # stays queued
    g = sex.submit(basic.add, f, 1)
    assert f.cancel()
    exc = g.exception(timeout=300)
    assert isinstance(exc, DependencyError) and isinstance(exc.__cause__, cf.CancelledError)


@pytest.mark.slow
def test_slurm_results_match_local(sex: HogExecutor) -> None:
    assert _chain(sex) == EXPECTED


def _sbatch_shim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ``sbatch`` first on PATH that logs each call (time, job id) and runs the real one."""
    real = shutil.which("sbatch")
    assert real
    log = tmp_path / "sbatch.log"
    shim = tmp_path / "bin" / "sbatch"
    shim.parent.mkdir()
    shim.write_text(
        "#!/bin/bash\n"
        f"out=$({real} \"$@\"); rc=$?\n"
        f'echo "$(date +%s.%N) $out" >> {log}\n'
        'echo "$out"; exit $rc\n'
    )
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}:{os.environ['PATH']}")
    return log


def _pipeline(dask: Any, n: int) -> list[Any]:
    s1 = [dask.delayed(basic.add)(i, 1) for i in range(n)]
    s2 = [dask.delayed(basic.add)(s1[i], s1[(i + 1) % n]) for i in range(n)]
    return [dask.delayed(basic.add)(s2[i], s2[(i + 1) % n]) for i in range(n)]


@pytest.mark.slow
def test_dask_pipeline_on_slurm_is_one_sbatch_per_wave(slurm_cluster: Any, tmp_path: Path,
                                                        cache_dir: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    dask = pytest.importorskip("dask")
    log = _sbatch_shim(tmp_path, monkeypatch)
    with HogExecutor("slurm", partition=slurm_cluster.partition,
                     shared_dir=str(tmp_path / "shared"), cache_dir=cache_dir,
                     poll_interval=0.2) as ex:
        finished: list[float] = []
        real_submit = ex.backend.submit

        def note_first_end(jobs: Any) -> None:
            real_submit(jobs)
            for job in jobs:
                job.future.add_done_callback(lambda _: finished.append(time.time()))

        monkeypatch.setattr(ex.backend, "submit", note_first_end)
        (got,) = dask.compute(_pipeline(dask, 4), scheduler=ex)
    (want,) = dask.compute(_pipeline(dask, 4), scheduler="sync")
    assert got == want
    calls = log.read_text().splitlines()
    assert len(calls) == 3, calls  # three waves, one sbatch (a job array) each
    last_sbatch = max(float(line.split()[0]) for line in calls)
    assert last_sbatch < min(finished)  # every wave queued before any job finished
    jobs = [line.split()[1] for line in calls]
    assert len(set(jobs)) == 3


@pytest.mark.slow
def test_dask_pipeline_on_slurm_raises_the_original_error(sex: HogExecutor) -> None:
    dask = pytest.importorskip("dask")
    a = dask.delayed(basic.add)(1, 2)
    b = dask.delayed(basic.fail_value)(a)
    c = dask.delayed(basic.add)(b, 1)
    with pytest.raises(ValueError, match=r"^3$"):
        dask.compute(c, scheduler=sex)
