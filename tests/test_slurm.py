"""The slurm backend against a real Slurm cluster (``tests/services/slurm-start.sh`` starts one).

Without a cluster answering ``sinfo`` these tests are skipped with the reason; in CI
(``CI=true``) they fail instead, so a missing cluster can never pass unnoticed. The partition
is ``$HOG_TEST_SLURM_PARTITION``, else the cluster's default partition.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import hogtest_basic as basic
import pytest
from conftest import wait_for

from hog_executor import BackendError, HogExecutor, RemoteProcessError, WalltimeExceeded
from hog_executor.backends.slurm import SlurmBackend
from hog_executor.backends.slurm import backend as slurm_backend
from hog_executor.backends.slurm import states as slurm_states
from hog_executor.backends.slurm.watcher import watcher
from hog_executor.errors import RemoteTraceback
from hog_executor.runner import EXIT_WRAPPER_FAILED

ACTIVE = "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED"


#: The partition of the cluster the tests use (set by `_need_cluster`).
PARTITION: str = ""


@pytest.fixture(autouse=True)
def _need_cluster(slurm_cluster) -> None:
    """Every test here needs the cluster: the running one, or one the tests start (see the
    `slurm_cluster` fixture: otherwise they skip with how to run them, and fail in CI)."""
    global PARTITION
    PARTITION = slurm_cluster.partition


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    return tmp_path / "shared"


@pytest.fixture
def ex(shared: Path, cache_dir: str):
    executor = HogExecutor("slurm", partition=PARTITION, shared_dir=str(shared),
                           cache_dir=cache_dir, poll_interval=0.2)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True, terminate=True)


def _backend(executor: HogExecutor) -> SlurmBackend:
    backend = executor.backend
    assert isinstance(backend, SlurmBackend)
    return backend


def _wait_running(*futures: cf.Future[object], timeout: float = 120) -> None:
    assert wait_for(lambda: all(f.running() or f.done() for f in futures), timeout=timeout,
                    interval=0.1), "the jobs did not start"
    for f in futures:
        assert not f.done(), f.exception()


def _squeue(*ids: str, states: str = "all") -> list[str]:
    arrays = {i.split("_")[0] for i in ids}
    jobs = ",".join(sorted(arrays) * (2 if len(arrays) == 1 else 1))
    proc = subprocess.run(["squeue", "--noheader", "--array", f"--states={states}",
                           f"--jobs={jobs}", "--format=%i %T"],
                          capture_output=True, text=True, check=True, timeout=30)
    return proc.stdout.split("\n")[:-1]


@pytest.mark.slow
def test_submit_returns_value_and_output(ex, shared):
    f = ex.submit(basic.echo, 7)
    assert f.result(timeout=300) == 7
    assert f.stdout.strip() == "echo 7"
    assert "err 7" in f.stderr
    assert ex.submit(basic.add, 1, 2, c=3).result(timeout=120) == 6
    p = ex.submit(basic.make_point, 3, 4).result(timeout=120)
    assert type(p) is basic.Point
    ex.shutdown()
    assert list(shared.iterdir()) == []  # nothing left of successful calls, not even the key


@pytest.mark.slow
def test_map_is_one_job_array(shared, cache_dir, tmp_path, monkeypatch):
    log = _sbatch_log(tmp_path, monkeypatch)
    with HogExecutor("slurm", partition=PARTITION, shared_dir=str(shared), cache_dir=cache_dir,
                     poll_interval=0.2, max_parallel=4) as ex:
        assert list(ex.map(basic.square, range(12), chunksize=1)) == [x * x for x in range(12)]
        lines = log.read_text().splitlines()
        assert lines[0] == "#SBATCH --array=0-11%4"
        assert len(lines) == 2 and lines[1].startswith("job ")
        job_id = lines[1].split()[1]
        tasks = _squeue(job_id)
        assert sorted(tasks) == sorted(f"{job_id}_{i} COMPLETED" for i in range(12))
        # A chunked map: fewer tasks, still one array.
        assert list(ex.map(basic.add, range(10), range(10), chunksize=3)) == \
            [2 * x for x in range(10)]
        lines = log.read_text().splitlines()
        assert lines[2] == "#SBATCH --array=0-3%4" and len(lines) == 4
        # More tasks than one array may hold: as few arrays as the limit allows.
        monkeypatch.setattr(slurm_backend, "ARRAY_LIMIT", 4)
        assert list(ex.map(basic.identity, range(6), chunksize=1)) == list(range(6))
        lines = log.read_text().splitlines()[4:]
        assert [ln for ln in lines if ln.startswith("#SBATCH")] == \
            ["#SBATCH --array=0-3%4", "#SBATCH --array=0-1%4"]


@pytest.mark.slow
def test_exceptions_keep_type_and_process_errors_carry_logs(ex):
    with pytest.raises(basic.CustomError, match="bad input") as info:
        ex.submit(basic.fail_custom, "bad input").result(timeout=120)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "raise CustomError(msg)" in info.value.__cause__.tb
    with pytest.raises(ValueError, match="plain"):
        ex.submit(basic.fail_value, "plain").result(timeout=120)
    with pytest.raises(RemoteProcessError) as exit_info:
        ex.submit(basic.exit_with, 3).result(timeout=120)
    err = exit_info.value
    assert err.returncode == 3 and err.state is None  # the job itself completed
    assert "exited with status 3" in str(err) and "logs: " in str(err)
    out_log = str(err).split("logs: ", 1)[1].split(",")[0]
    assert os.path.isfile(out_log)  # the files of failed calls are kept for inspection


@pytest.mark.slow
def test_walltime_bundle_and_slurm_time_limit(ex):
    # Slurm's TIMEOUT: Slurm checks time limits every ~30 s, so start that one first.
    slow = ex.options(walltime=300).submit(basic.sleep, 120)
    _wait_running(slow)
    slurm_id = _backend(ex).slurm_id(slow.task_id)
    assert slurm_id is not None
    subprocess.run(["scontrol", "update", f"JobId={slurm_id}", "TimeLimit=0"], check=True,
                   timeout=30)
    # The bundle's own walltime (the common case): exit 124, the job itself completed.
    with pytest.raises(WalltimeExceeded) as info:
        ex.options(walltime=2).submit(basic.sleep, 60).result(timeout=120)
    assert info.value.returncode == 124 and info.value.walltime == 2
    with pytest.raises(WalltimeExceeded) as info:
        slow.result(timeout=120)
    assert info.value.state == "TIMEOUT"
    assert info.value.returncode == 124
    assert "DUE TO TIME LIMIT" in info.value.stderr
    assert isinstance(info.value, TimeoutError)


@pytest.mark.slow
def test_external_scancel_is_a_clear_error(ex):
    f = ex.submit(basic.sleep, 60)
    _wait_running(f)
    backend = _backend(ex)
    slurm_id = backend.slurm_id(f.task_id)
    assert slurm_id is not None
    # Job files are private to the user.
    directory = Path(backend.directory or "")
    job_dir = next(p for p in directory.iterdir()
                   if p.is_dir() and p.name != slurm_backend.RESULTS_DIR)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(job_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "key").stat().st_mode) == 0o600
    for path in [*job_dir.glob("task-0.*"), job_dir / "slurm-0.log"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    subprocess.run(["scancel", slurm_id], check=True, timeout=30)
    with pytest.raises(RemoteProcessError) as info:
        f.result(timeout=120)
    err = info.value
    assert not isinstance(err, WalltimeExceeded)
    assert err.state == "CANCELLED"
    assert "ended in state CANCELLED" in str(err)
    assert "cancelled outside hog-executor" in str(err)
    assert str(job_dir / "slurm-0.log") in str(err)


@pytest.mark.slow
def test_job_failing_before_the_bundle_runs(shared, cache_dir):
    ex = HogExecutor("slurm", partition=PARTITION, shared_dir=str(shared), cache_dir=cache_dir,
                     poll_interval=0.2, sbatch_flags=["--hold"])
    try:
        f = ex.submit(basic.square, 2)
        backend = _backend(ex)
        slurm_id = backend.slurm_id(f.task_id)
        assert slurm_id is not None and backend.directory is not None
        job_dir = next(Path(backend.directory).glob("s*"))
        (job_dir / "task-0.sh").unlink()  # as on a compute node that does not see shared_dir
        subprocess.run(["scontrol", "release", slurm_id], check=True, timeout=30)
        with pytest.raises(RemoteProcessError) as info:
            f.result(timeout=120)
        err = info.value
        assert err.state == "FAILED" and err.returncode == EXIT_WRAPPER_FAILED
        assert "ended in state FAILED" in str(err)
        assert "do compute nodes see shared_dir?" in str(err)  # the Slurm log's tail
    finally:
        ex.shutdown(wait=True, cancel_futures=True, terminate=True)


@pytest.mark.slow
def test_shutdown_with_cancel_leaves_no_job(shared, cache_dir):
    ex = HogExecutor("slurm", partition=PARTITION, shared_dir=str(shared), cache_dir=cache_dir,
                     poll_interval=0.2, max_parallel=2)
    single = ex.submit(basic.sleep, 120)
    results = ex.map(basic.sleep, [120] * 4, chunksize=1)  # 2 running, 2 pending
    _wait_running(single)
    ids = _backend(ex).slurm_ids()
    assert len(ids) == 5
    assert any(line.endswith(" PENDING") for line in _squeue(*ids))
    ex.shutdown(wait=True, cancel_futures=True, terminate=True)
    assert single.cancelled()
    with pytest.raises(cf.CancelledError):
        next(results)
    assert _squeue(*ids, states=ACTIVE) == []
    assert list(shared.iterdir()) == []


@pytest.mark.slow
def test_tampered_result_file_is_rejected(ex, monkeypatch):
    original = SlurmBackend._read_result

    def tamper_then_read(self, job):  # someone rewrites the output before the client reads
        if os.path.exists(job.hmac):
            Path(job.out).write_bytes(Path(job.out).read_bytes().replace(b"echo", b"ECHO"))
        return original(self, job)

    monkeypatch.setattr(SlurmBackend, "_read_result", tamper_then_read)
    with pytest.raises(BackendError, match="failed authentication"):
        ex.submit(basic.echo, 1).result(timeout=120)


@pytest.mark.slow
def test_forged_result_with_another_key_is_rejected(ex, monkeypatch):
    from hog_executor.backends.slurm.sbatch import result_digest

    original = SlurmBackend._read_result

    def forge_then_read(self, job):  # a result written by someone without the key
        if os.path.exists(job.hmac):
            out, err = b"forged", b""
            Path(job.out).write_bytes(out)
            Path(job.err).write_bytes(err)
            Path(job.rc).write_text("0\n")
            Path(job.hmac).write_text(
                result_digest(os.urandom(32), job.submission.id, job.index, 0, out, err))
        return original(self, job)

    monkeypatch.setattr(SlurmBackend, "_read_result", forge_then_read)
    with pytest.raises(BackendError, match="failed authentication"):
        ex.submit(basic.square, 3).result(timeout=120)


@pytest.mark.slow
def test_vanished_job_fails_within_a_bounded_time(ex, monkeypatch):
    monkeypatch.setattr(slurm_states, "VANISH_GRACE", 1.0)
    f = ex.submit(basic.sleep, 3)
    slurm_id = _backend(ex).slurm_id(f.task_id)
    assert slurm_id is not None
    # The controller forgets the job (as after MinJobAge, or a controller reset).
    monkeypatch.setattr(watcher(), "_query", lambda ids: {})
    try:
        with pytest.raises(BackendError, match="disappeared from the Slurm queue"):
            f.result(timeout=60)
    finally:
        subprocess.run(["scancel", slurm_id], timeout=30)


def test_bad_partition_is_a_backend_error_at_submit(shared, cache_dir):
    ex = HogExecutor("slurm", partition="no_such_partition", shared_dir=str(shared),
                     cache_dir=cache_dir)
    with pytest.raises(BackendError, match=r"(?i)invalid partition"):
        ex.submit(basic.square, 2)
    ex.shutdown()
    assert list(shared.iterdir()) == []  # nothing is left of a refused submission


@pytest.mark.slow
def test_scheduler_keys_change_per_call(ex):
    """``options()`` reaches sbatch: a bad partition for one view, the right one for the rest."""
    with pytest.raises(BackendError, match=r"(?i)invalid partition"):
        ex.options(partition="no_such_partition").submit(basic.square, 2)
    view = ex.options(cpus_per_task=1, sbatch_flags=["--comment=per-call"])
    fut = view.submit(basic.square, 3)
    slurm_id = _backend(ex).slurm_id(fut.task_id)
    assert fut.result(timeout=120) == 9
    assert slurm_id
    shown = subprocess.run(["scontrol", "show", "job", slurm_id], capture_output=True,
                           text=True, timeout=30).stdout
    assert "Comment=per-call" in shown
    assert ex.submit(basic.square, 4).result(timeout=120) == 16
    with pytest.raises(Exception, match="max_parallel"):
        ex.options(max_parallel=2)


@pytest.mark.slow
def test_sbatch_timeout_cancels_the_job_it_may_have_queued(shared, cache_dir, tmp_path,
                                                          monkeypatch):
    # An sbatch that queues the job, then does not answer: as a controller too slow to reply.
    real = shutil.which("sbatch")
    assert real
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ids = tmp_path / "queued"
    shim = bin_dir / "sbatch"
    shim.write_text(f'#!/bin/bash\nout=$("{real}" "$@") || exit $?\necho "$out" > "{ids}"\n'
                    "exec sleep 120\n")
    shim.chmod(0o700)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(slurm_backend, "COMMAND_TIMEOUT", 5.0)
    # Held: the job would wait in the queue forever if nobody cancelled it.
    ex = HogExecutor("slurm", partition=PARTITION, shared_dir=str(shared), cache_dir=cache_dir,
                     sbatch_flags=["--hold"])
    try:
        with pytest.raises(BackendError, match="did not answer"):
            ex.submit(basic.square, 2)
        job_id = ids.read_text().strip().split(";")[0]
        assert job_id.isdigit()
        assert wait_for(lambda: not _squeue(job_id, states=ACTIVE), timeout=60, interval=0.2), \
            f"job {job_id} is still in the queue"
    finally:
        ex.shutdown()
        if ids.exists():  # never leave the held job behind, whatever failed
            subprocess.run(["scancel", ids.read_text().strip().split(";")[0]], timeout=30)
    assert list(shared.iterdir()) == []


@pytest.mark.slow
def test_an_executor_dropped_without_shutdown_removes_its_directory(shared, cache_dir):
    ex = HogExecutor("slurm", partition=PARTITION, shared_dir=str(shared), cache_dir=cache_dir,
                     poll_interval=0.2)
    assert list(ex.map(basic.square, range(3), chunksize=1)) == [0, 1, 4]
    directory = _backend(ex).directory
    assert directory and os.path.isdir(directory)
    assert os.path.exists(os.path.join(directory, "key"))
    del ex

    def gone() -> bool:  # the watcher forgets the jobs just after they settle
        gc.collect()
        return not os.path.exists(directory)

    assert wait_for(gone, timeout=60, interval=0.1), f"{directory} is still there"
    assert list(shared.iterdir()) == []


SLURM_EXIT_SCRIPT = '''# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
import sys


def square(x):
    return x * x


if __name__ == "__main__":
    from hog_executor import HogExecutor

    ex = HogExecutor("slurm", partition=sys.argv[1], shared_dir=sys.argv[2],
                     cache_dir=sys.argv[3], poll_interval=0.2)
    print(ex.submit(square, 7).result(timeout=120))
    # no shutdown: the interpreter exits
'''


@pytest.mark.slow
def test_exit_without_shutdown_leaves_no_job_files(shared, cache_dir, tmp_path):
    script = tmp_path / "slurm_exit.py"
    script.write_text(SLURM_EXIT_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), PARTITION, str(shared), cache_dir],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["49"]
    assert [p for p in shared.rglob("*") if p.is_file()] == []  # no key, no job files


def _sbatch_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put an sbatch on PATH that logs each script's --array line and the job id, then runs
    the real one; the log's path."""
    real = shutil.which("sbatch")
    log = tmp_path / "sbatch.log"
    shim = tmp_path / "bin" / "sbatch"
    shim.parent.mkdir()
    shim.write_text(
        "#!/bin/bash\n"
        f'grep -h "^#SBATCH --array" "${{@: -1}}" >> {log}\n'
        f"out=$({real} \"$@\"); rc=$?\n"
        f'echo "job $out" >> {log}\n'
        'echo "$out"; exit $rc\n'
    )
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}:{os.environ['PATH']}")
    return log


@pytest.mark.slow
def test_map_larger_than_one_array_allows_is_split(shared, cache_dir, tmp_path, monkeypatch):
    log = _sbatch_log(tmp_path, monkeypatch)
    read = []
    real_limits = slurm_backend.cluster_limits

    def limits() -> slurm_backend.ClusterLimits:
        read.append(1)
        return real_limits()

    monkeypatch.setattr(slurm_backend, "cluster_limits", limits)
    with HogExecutor("slurm", partition=PARTITION, shared_dir=str(shared), cache_dir=cache_dir,
                     poll_interval=0.2, max_array_size=3) as ex:
        assert list(ex.map(basic.square, range(7), chunksize=1)) == [x * x for x in range(7)]
        lines = log.read_text().splitlines()
        assert [ln for ln in lines if ln.startswith("#SBATCH")] == \
            ["#SBATCH --array=0-2", "#SBATCH --array=0-2"]  # and one plain job for the last
        assert sum(ln.startswith("job ") for ln in lines) == 3
        assert _backend(ex)._limits is not None
        assert _backend(ex)._limits.max_array_size  # the real cluster's MaxArraySize
        assert list(ex.map(basic.square, range(2), chunksize=1)) == [0, 1]
    assert len(read) == 1  # once per endpoint


@pytest.mark.slow
def test_the_clusters_max_array_size_splits_a_map(shared, cache_dir, tmp_path, monkeypatch):
    # As a cluster whose slurm.conf says MaxArraySize=2 would answer scontrol show config.
    monkeypatch.setattr(slurm_backend, "cluster_limits",
                        lambda: slurm_backend.ClusterLimits(max_array_size=2, max_job_count=None))
    log = _sbatch_log(tmp_path, monkeypatch)
    with HogExecutor("slurm", partition=PARTITION, shared_dir=str(shared), cache_dir=cache_dir,
                     poll_interval=0.2, max_parallel=2) as ex:
        assert list(ex.map(basic.square, range(5), chunksize=1)) == [x * x for x in range(5)]
    lines = log.read_text().splitlines()
    assert [ln for ln in lines if ln.startswith("#SBATCH")] == \
        ["#SBATCH --array=0-1%2", "#SBATCH --array=0-1%2"]
    assert sum(ln.startswith("job ") for ln in lines) == 3
