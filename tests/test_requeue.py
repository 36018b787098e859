"""Requeues, checkpoint continuations and ``hog cancel`` against a real Slurm cluster.

Slurm requeues a job with ``scontrol requeue`` here (as it would on preemption or a node
failure); a requeued job waits for a begin time two minutes away, which the tests bring
forward with ``scontrol update starttime=now``. The warning that a call's time is nearly up
comes from ``scancel --signal=USR1 --batch`` (what ``--signal=B:USR1@N`` sends) or from the
bundle's own timer (``signal_lead``). The continuation tests without Slurm use the local
backend.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import hogtest_requeue as rq
import pytest
from conftest import ROOT, SCRIPTS, wait_for

from hog_executor import Continue, HogExecutor, RemoteProcessError, RequeueLimitExceeded
from hog_executor.backends.slurm import SlurmBackend
from hog_executor.backends.slurm.clients import hog_jobs


@pytest.fixture
def slurm(slurm_cluster) -> str:
    return str(slurm_cluster.partition)


@pytest.fixture
def ex(slurm: str, tmp_path: Path, cache_dir: str):
    executor = HogExecutor("slurm", partition=slurm, shared_dir=str(tmp_path / "shared"),
                           cache_dir=cache_dir, poll_interval=0.2)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True, terminate=True)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _scontrol(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)


def _state(slurm_id: str) -> str:
    proc = subprocess.run(["squeue", "--noheader", "--array", "--states=all",
                           f"--jobs={slurm_id.split('_')[0]}", "--format=%i %T"],
                          capture_output=True, text=True, timeout=60)
    for line in proc.stdout.splitlines():
        job, _, state = line.partition(" ")
        if job == slurm_id:
            return state
    return ""


def _requeue(slurm_id: str) -> None:
    """Requeue ``slurm_id`` and start it again now (not after the usual begin-time delay)."""
    proc = _scontrol("requeue", slurm_id)
    assert proc.returncode == 0, proc.stderr
    # The job goes through COMPLETING before it waits again; its begin time is then moved.
    assert wait_for(lambda: _state(slurm_id) == "PENDING"
                    and _scontrol("update", f"jobid={slurm_id}", "starttime=now").returncode
                    == 0, timeout=120, interval=0.5), _state(slurm_id)


def _slurm_id(executor: HogExecutor, future) -> str:
    backend = executor.backend
    assert isinstance(backend, SlurmBackend)
    slurm_id = backend.slurm_id(future.job_id)
    assert slurm_id
    return slurm_id


def _warn(slurm_id: str) -> None:
    """Send the job script SIGUSR1, as ``--signal=B:USR1@N`` does before the time limit."""
    proc = subprocess.run(["scancel", "--signal=USR1", "--batch", slurm_id],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# -- requeues ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_requeued_array_task_runs_again_and_its_future_gets_the_value(ex, tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    results = ex.map(rq.twice, [str(calls)] * 3, range(3), chunksize=1)  # one job array
    assert wait_for(lambda: all(_lines(calls / str(x)) for x in range(3)), timeout=300)
    # The task running call 1 is requeued while it runs: Slurm runs it from the start again.
    slurm_id, restarts = _lines(calls / "1")[0].split()
    assert "_" in slurm_id and restarts == "0"  # an array task, on its first run
    _requeue(slurm_id)
    assert wait_for(lambda: len(_lines(calls / "1")) == 2, timeout=300), _state(slurm_id)
    assert _lines(calls / "1")[1] == f"{slurm_id} 1"
    (calls / "go").touch()
    assert list(results) == [0, 2, 4]  # followed through the requeue, not failed
    assert [len(_lines(calls / str(x))) for x in range(3)] == [1, 2, 1]


# -- continuations -------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_call_warned_twice_continues_twice_and_its_future_gets_the_last_value(ex, tmp_path):
    path = tmp_path / "steps"
    future = ex.options(max_requeues=2).submit(rq.step, str(path), 0, 2)
    for n in range(3):
        # Run n has started (it wrote its line): warn the Slurm job that runs it.
        assert wait_for(lambda n=n: len(_lines(path)) == n + 1, timeout=300), _lines(path)
        backend = ex.backend
        assert isinstance(backend, SlurmBackend)
        assert not future.done()
        ids = backend.slurm_ids()
        assert len(ids) == 1  # the continuation runs as a job of its own
        _warn(ids[0])
    assert future.result(timeout=300) == ("done", 2)
    assert _lines(path) == ["0", "1", "2"]
    assert future.continuations == 2


@pytest.mark.slow
def test_a_continuation_past_max_requeues_is_an_error(ex, tmp_path):
    path = tmp_path / "steps"
    # The bundle warns the call itself signal_lead seconds before its walltime.
    future = ex.options(max_requeues=1, walltime=40, signal_lead=35).submit(
        rq.step_raising, str(path), 0)
    with pytest.raises(RequeueLimitExceeded, match="max_requeues=1") as info:
        future.result(timeout=600)
    assert info.value.max_requeues == 1
    assert _lines(path) == ["0", "1"]  # the first continuation ran, the second was refused


@pytest.mark.slow
def test_a_call_queued_behind_a_continuing_call_fails_rather_than_get_the_continuation(ex):
    upstream = ex.submit(rq.countdown, 1)
    dependent = ex.submit(rq.echo, upstream)  # waits in the queue for the first job only
    assert upstream.result(timeout=300) == "liftoff" and upstream.continuations == 1
    with pytest.raises(RemoteProcessError, match="CANCELLED"):
        dependent.result(timeout=300)


def test_continuations_on_the_local_backend(executor):
    assert executor.submit(rq.countdown, 3).result(timeout=300) == "liftoff"
    future = executor.options(max_requeues=2).submit(rq.countdown, 3)
    with pytest.raises(RequeueLimitExceeded, match="after 2 continuations"):
        future.result(timeout=300)
    assert executor.options(max_requeues=0).submit(rq.countdown, 0).result(timeout=300) \
        == "liftoff"


def test_the_bundle_warns_a_call_before_its_walltime(executor, tmp_path):
    path = tmp_path / "warned"
    view = executor.options(walltime=30, fresh_process=True, env={"HOG_SIGNAL_LEAD": "25"})
    assert view.submit(rq.warned_in_time, str(path)).result(timeout=300) is True
    assert _lines(path) == ["warned=True"]


def test_continue_pickles_with_its_arguments():
    import pickle

    cont = pickle.loads(pickle.dumps(Continue(rq.step, "p", 1, last=3)))
    assert cont.fn is rq.step and cont.call_args == ("p", 1) and cont.call_kwargs == {"last": 3}
    with pytest.raises(TypeError):
        Continue(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(("lead", "walltime", "after"), [
    ("25", "30", 5.0), ("30", "30", None), ("0", "30", None), ("25", "0", None),
    ("x", "30", None), ("25", "", None),
])
def test_when_the_runner_warns_the_call_itself(lead, walltime, after):
    from hog_executor.checkpoint import warn_after

    assert warn_after(lead, walltime) == after


def test_time_is_up_is_false_on_the_client():
    import hog_executor

    assert hog_executor.time_is_up() is False
    assert not hog_executor.stopping.is_set()


# -- hog cancel ------------------------------------------------------------------------------

CLIENT = """
import sys, time
sys.path.insert(0, {scripts!r})
import hogtest_requeue as rq
from hog_executor import HogExecutor

ex = HogExecutor("slurm", partition={partition!r}, shared_dir={shared!r},
                 cache_dir={cache!r}, poll_interval=0.2)
f = ex.submit(rq.twice, {calls!r}, {x})
while not f.running():
    time.sleep(0.1)
print(ex.backend.slurm_id(f.job_id), flush=True)
time.sleep(3600)
"""


def _client(partition: str, tmp_path: Path, cache_dir: str, x: int
            ) -> tuple[subprocess.Popen[str], str]:
    code = CLIENT.format(scripts=str(SCRIPTS), partition=partition,
                         shared=str(tmp_path / f"shared{x}"), cache=cache_dir,
                         calls=str(tmp_path / "calls"), x=x)
    env = {**os.environ, "HOG_EXECUTOR_REQUIREMENT": f"-e {ROOT}"}
    client = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert client.stdout is not None
    slurm_id = client.stdout.readline().strip()
    if not slurm_id:
        client.kill()
        pytest.fail(client.communicate()[1])
    return client, slurm_id


def _hog(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hog_executor", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_hog_cancel_cancels_the_jobs_of_a_killed_client_only(slurm, tmp_path, cache_dir):
    (tmp_path / "calls").mkdir()
    dead, dead_id = _client(slurm, tmp_path, cache_dir, 1)
    live, live_id = _client(slurm, tmp_path, cache_dir, 2)
    try:
        dead.kill()  # SIGKILL: nothing at exit; its job stays in the queue on purpose
        dead.wait(timeout=60)
        assert _state(dead_id) == "RUNNING"
        listed = _hog("cancel", "--list")
        assert listed.returncode == 0, listed.stderr
        assert dead_id in listed.stdout and live_id not in listed.stdout
        assert f"pid={dead.pid}" in listed.stdout or str(dead.pid) in listed.stdout
        # Without --yes nothing is cancelled: it says what would be.
        dry = _hog("cancel")
        assert dry.returncode == 0 and "--yes" in dry.stdout and dead_id in dry.stdout
        assert _state(dead_id) == "RUNNING"
        done = _hog("cancel", "--yes")
        assert done.returncode == 0, done.stderr
        assert wait_for(lambda: _state(dead_id) in ("", "CANCELLED", "COMPLETING"),
                        timeout=120), _state(dead_id)
        assert _state(live_id) == "RUNNING"  # the live client's job is left alone
        assert live_id in _hog("cancel", "--list", "--all").stdout
        assert dead_id not in [j.slurm_id for j in hog_jobs()
                               if j.state in ("RUNNING", "PENDING")]
    finally:
        for client in (dead, live):
            if client.poll() is None:
                client.send_signal(signal.SIGKILL)
                client.wait(timeout=60)
        subprocess.run(["scancel", dead_id, live_id], capture_output=True, timeout=60)


@pytest.mark.slow
def test_the_checkpoint_example_runs(cache_dir):
    example = Path(__file__).resolve().parent.parent / "examples" / "checkpoint.py"
    proc = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HOG_CACHE_DIR": cache_dir})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    assert out.startswith("counted to 150 in ") and out != "counted to 150 in 1 calls", out
