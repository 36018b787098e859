"""The journal: a new client takes over the calls of a client that is gone.

Clients are processes of their own, killed with SIGKILL (nothing of theirs runs at exit).
The Slurm case counts sbatch runs with a logging ``sbatch`` first on ``PATH``; the Globus
Compute case counts the batches the stand-in service received.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SCRIPTS, wait_for
from test_cache import APP, run_app, runs

JOURNAL_APP = SCRIPTS / "hogtest_journal_app.py"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), **extra}


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_local_call_lost_with_its_client_runs_again_with_a_warning(
        tmp_path: Path, cache_dir: str) -> None:
    root, log = tmp_path / "results", tmp_path / "log"
    Path(str(log) + ".slow").write_text("")  # the first client's call hangs
    proc = subprocess.Popen([sys.executable, str(APP), str(root), cache_dir, str(log), "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path))
    try:
        assert wait_for(lambda: runs(log) == 1, timeout=120), "the call did not start"
    finally:
        _kill(proc)
    journals = list((root / "journal").glob("*.jsonl"))
    assert len(journals) == 1
    os.unlink(str(log) + ".slow")
    out, stderr = run_app(APP, root, cache_dir, log, n=1)
    assert out == {"values": [1], "cached": [False], "jobs": 1}
    assert "lost with that client" in stderr and f"process {proc.pid}" in stderr
    assert runs(log) == 2
    assert not list((root / "journal").glob("*.jsonl"))  # taken over, then done


ACTIVE = "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING"


@pytest.fixture
def sbatch_log(tmp_path: Path, slurm_cluster: Any) -> tuple[Path, Path]:
    """A logging ``sbatch`` first on PATH, on the tests' cluster (see `slurm_cluster`)."""
    real = shutil.which("sbatch")
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    shim = bin_dir / "sbatch"
    shim.write_text(f'#!/bin/bash\necho "$*" >> {log}\nexec {real} "$@"\n')
    shim.chmod(0o755)
    return bin_dir, log


def _app(tmp_path: Path, cache_dir: str, sbatch_log: tuple[Path, Path], partition: str,
         n: int) -> tuple[list[str], dict[str, str], Path]:
    """The journal app's command line for ``n`` calls, its environment (the logging sbatch
    first on PATH) and the sbatch log."""
    bin_dir, log = sbatch_log
    root, shared = tmp_path / "results", tmp_path / "shared"
    env = _env(tmp_path, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return ([sys.executable, str(JOURNAL_APP), str(root), cache_dir, str(shared), partition,
             str(n)], env, log)


def _queued() -> list[str]:
    """This user's Slurm jobs (array tasks) still queued or running."""
    return subprocess.run(["squeue", "--noheader", "--array", f"--user={os.getuid()}",
                           f"--states={ACTIVE}", "--format=%i"], capture_output=True,
                          text=True, timeout=30).stdout.split()


@pytest.mark.slow
def test_a_new_client_attaches_to_the_slurm_array_of_a_killed_one(
        tmp_path: Path, cache_dir: str, sbatch_log: tuple[Path, Path],
        slurm_cluster: Any) -> None:
    args, env, log = _app(tmp_path, cache_dir, sbatch_log, slurm_cluster.partition, 50)
    # The array starts 25 s after it is queued: the first client is killed while it waits.
    first = subprocess.Popen([*args, "--begin=now+25"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "submitted"
    finally:
        _kill(first)
    sent = log.read_text().splitlines()
    assert len(sent) == 1  # one job array
    queued = _queued()
    assert queued, "the array is no longer queued"
    second = subprocess.run([*args], capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout.splitlines()[-1]) == {"values": [3 * i for i in range(50)]}
    assert len(log.read_text().splitlines()) == 1, "the new client ran sbatch"
    assert "following Slurm job" in second.stderr
    # Every result is now a hit, still without sbatch.
    third = subprocess.run([*args], capture_output=True, text=True, timeout=600, env=env)
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout.splitlines()[-1]) == {"values": [3 * i for i in range(50)]}
    assert len(log.read_text().splitlines()) == 1


@pytest.mark.slow
def test_a_client_that_exits_after_submitting_leaves_its_graph_to_finish(
        tmp_path: Path, cache_dir: str, sbatch_log: tuple[Path, Path],
        slurm_cluster: Any) -> None:
    args, env, log = _app(tmp_path, cache_dir, sbatch_log, slurm_cluster.partition, 8)
    first = subprocess.run([*args, "--leave", "--begin=now+5"], capture_output=True,
                           text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    assert "submitted" in first.stdout
    queued = _queued()
    assert queued, "the client's exit cancelled its jobs"
    second = subprocess.run([*args], capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout.splitlines()[-1]) == {"values": [3 * i for i in range(8)]}
    assert len(log.read_text().splitlines()) == 1, "the new client ran sbatch"


# -- Globus Compute ---------------------------------------------------------------------------
#
# The stand-in service (tests/globus_loopback.py) runs in this process next to a real endpoint
# engine and outlives the clients, which reach it over a Unix socket.

GLOBUS_APP = SCRIPTS / "hogtest_globus_journal_app.py"
GLOBUS_ENDPOINT = str(uuid.uuid4())
FOLLOWING = "following Globus Compute task"


@pytest.fixture(scope="module")
def globus_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real endpoint engine (``ProcessPoolEngine``), as in tests/test_globus.py."""
    try:
        from globus_compute_endpoint import engines
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"needs globus-compute-endpoint (pip install -e '.[test]'): {exc}")
    from hog_executor.backends.local import same_machine_hints

    saved = dict(os.environ)
    os.environ.update(same_machine_hints())
    engine = engines.ProcessPoolEngine(max_workers=2,
                                       mp_context=multiprocessing.get_context("spawn"))
    engine.start(endpoint_id=uuid.UUID(GLOBUS_ENDPOINT),
                 run_dir=str(tmp_path_factory.mktemp("endpoint")))
    yield engine
    engine.shutdown(block=True)
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def globus_service(globus_engine: Any) -> Iterator[tuple[Any, dict[str, str]]]:
    """A fresh stand-in service on the module's engine, and the environment naming it."""
    from globus_loopback import LoopbackService, serve

    service = LoopbackService(globus_engine, GLOBUS_ENDPOINT)
    with serve(service) as env:
        yield service, env


class _GlobusApp:
    """Runs the Globus journal app: every client with the same calls and gate."""

    def __init__(self, tmp_path: Path, cache_dir: str, service_env: dict[str, str],
                 n: int) -> None:
        self.tmp_path = tmp_path
        self.gate = tmp_path / "gate"
        self.gate.write_text("")
        self.n = n
        self.args = [sys.executable, str(GLOBUS_APP), str(tmp_path / "results"), cache_dir,
                     GLOBUS_ENDPOINT, str(self.gate), str(n)]
        self.env = _env(tmp_path, **service_env)
        self.clients: list[subprocess.Popen[str]] = []

    def start(self, *flags: str) -> tuple[subprocess.Popen[str], Path]:
        """A client, its stdout piped, its stderr in the returned file."""
        err = self.tmp_path / f"client-{len(self.clients) + 1}.err"
        with open(err, "w") as stderr:
            proc = subprocess.Popen([*self.args, *flags], stdout=subprocess.PIPE,
                                    stderr=stderr, text=True, env=self.env)
        self.clients.append(proc)
        return proc, err

    def close(self) -> None:
        """Open the gate (the module's engine runs on) and end the clients still running."""
        self.gate.unlink(missing_ok=True)
        for proc in self.clients:
            if proc.poll() is None:
                _kill(proc)

    def submit_and_kill(self) -> int:
        """A client that sends the calls, waits until their task ids are journaled, and is
        killed; its process id."""
        proc, err = self.start("--wait-journal")
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "submitted", err.read_text()
        finally:
            _kill(proc)
        return proc.pid

    def finish(self, proc: subprocess.Popen[str], err: Path) -> tuple[list[int], str]:
        """The values a client printed, and its stderr."""
        out, _ = proc.communicate(timeout=300)
        stderr = err.read_text()
        assert proc.returncode == 0, stderr
        return json.loads(out.splitlines()[-1])["values"], stderr

    def run(self) -> tuple[list[int], str]:
        return self.finish(*self.start())

    @property
    def expected(self) -> list[int]:
        return [3 * i for i in range(self.n)]


@pytest.fixture
def globus_app(tmp_path: Path, cache_dir: str, globus_service: tuple[Any, dict[str, str]]
               ) -> Iterator[Callable[[int], _GlobusApp]]:
    """Makes the journal app for ``n`` calls on this test's service; closed at the end."""
    apps: list[_GlobusApp] = []

    def make(n: int) -> _GlobusApp:
        apps.append(_GlobusApp(tmp_path, cache_dir, globus_service[1], n))
        return apps[-1]

    yield make
    for app in apps:
        app.close()


@pytest.mark.timeout(600)
def test_a_new_client_follows_the_globus_tasks_of_a_killed_one(
        tmp_path: Path, globus_service: tuple[Any, dict[str, str]],
        globus_app: Callable[[int], _GlobusApp]) -> None:
    service = globus_service[0]
    app = globus_app(6)
    first = app.submit_and_kill()
    batches = service.batch_count()
    assert batches >= 1 and len(service.task_ids()) == 6
    # The second client follows the tasks while they still wait for the gate.
    second, err = app.start()
    assert second.stdout is not None
    assert second.stdout.readline().strip() == "submitted", err.read_text()
    assert err.read_text().count(FOLLOWING) == 6
    assert f"client process {first} " in err.read_text()
    assert service.finished() == 0  # followed while queued or running
    app.gate.unlink()
    values, stderr = app.finish(second, err)
    assert values == app.expected
    assert service.batch_count() == batches, "the new client sent tasks"
    assert "lost with that client" not in stderr
    assert not list((tmp_path / "results" / "journal").glob("*.jsonl"))  # all done
    # Every result is now a hit.
    values, stderr = app.run()
    assert values == app.expected
    assert service.batch_count() == batches
    assert FOLLOWING not in stderr


@pytest.mark.timeout(600)
def test_globus_tasks_that_finished_while_no_client_watched_are_collected(
        tmp_path: Path, globus_service: tuple[Any, dict[str, str]],
        globus_app: Callable[[int], _GlobusApp]) -> None:
    service = globus_service[0]
    app = globus_app(6)
    app.submit_and_kill()
    batches = service.batch_count()
    app.gate.unlink()
    assert wait_for(lambda: service.finished() == 6, timeout=300)
    values, stderr = app.run()
    assert values == app.expected
    assert stderr.count(FOLLOWING) == 6
    assert service.batch_count() == batches, "the new client sent tasks"


@pytest.mark.timeout(600)
def test_a_globus_task_the_service_no_longer_knows_is_lost_and_runs_again(
        tmp_path: Path, globus_service: tuple[Any, dict[str, str]],
        globus_app: Callable[[int], _GlobusApp]) -> None:
    service = globus_service[0]
    app = globus_app(6)
    first = app.submit_and_kill()
    sent = len(service.batches)
    service.forget(service.task_ids()[:2])
    app.gate.unlink()
    values, stderr = app.run()
    assert values == app.expected
    assert stderr.count(FOLLOWING) == 4
    assert stderr.count("lost with that client") == 2, stderr
    assert "does not list task" in stderr and f"process {first} " in stderr
    assert sum(service.batches[sent:]) == 2  # only the lost calls ran again


@pytest.mark.timeout(600)
def test_a_globus_job_whose_client_died_before_its_task_id_came_is_lost_and_runs_again(
        tmp_path: Path, globus_service: tuple[Any, dict[str, str]],
        globus_app: Callable[[int], _GlobusApp]) -> None:
    service = globus_service[0]
    app = globus_app(3)
    app.gate.unlink()
    service.hold_batches()
    try:
        proc, err = app.start()  # its jobs are journaled before they are sent
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "submitted", err.read_text()
            assert wait_for(lambda: service.held() == 3, timeout=120)  # sent, no answer
        finally:
            _kill(proc)
    finally:
        service.hold_batches(False)  # the batch the client sent still runs
    values, stderr = app.run()
    assert values == app.expected
    assert stderr.count("it died before its Globus Compute task id was written") == 3, stderr
    assert FOLLOWING not in stderr
    assert wait_for(lambda: sum(service.batches) == 6, timeout=120)


def _attachable() -> Any:
    """A job with nothing to send, as the journal attaches one."""
    from hog_executor.backends import Job

    return Job(id=uuid.uuid4().hex, head="", payload=b"", tail="")


@pytest.mark.timeout(600)
def test_the_globus_backend_follows_cancels_and_refuses_tasks_by_their_record(
        tmp_path: Path, cache_dir: str, globus_engine: Any) -> None:
    import globus_compute_sdk
    import hogtest_globus_journal_app as gapp
    from globus_loopback import LoopbackService, ServiceClient

    from hog_executor import BackendError, HogExecutor

    service = LoopbackService(globus_engine, GLOBUS_ENDPOINT)
    gate = tmp_path / "gate"
    gate.write_text("")
    made: list[tuple[HogExecutor, Any]] = []

    def executor() -> HogExecutor:
        sdk = globus_compute_sdk.Executor(client=ServiceClient(service))
        ex = HogExecutor(GLOBUS_ENDPOINT, script=GLOBUS_APP, cache_dir=cache_dir,
                         globus_executor=sdk)
        made.append((ex, sdk))
        return ex

    try:
        sender = executor()
        f, other = (sender.submit(gapp.gated, x, str(gate)) for x in (5, 6))
        assert wait_for(lambda: f.task_id != f.job_id and other.task_id != other.job_id,
                        timeout=120)
        record = sender.backend.job_record(f.job_id)  # type: ignore[attr-defined]
        assert record is not None
        assert record["task_id"] == f.task_id and record["endpoint"] == GLOBUS_ENDPOINT
        group = record["task_group_id"]

        follower = executor()
        backend: Any = follower.backend
        with pytest.raises(BackendError, match="not to this executor's endpoint"):
            backend.attach(_attachable(), {**record, "endpoint": str(uuid.uuid4())})
        with pytest.raises(BackendError, match=f"does not list task .* in task group {group}"):
            backend.attach(_attachable(), {**record, "task_id": str(uuid.uuid4())})
        cancelled = _attachable()
        backend.attach(cancelled, record)
        assert backend.cancel(cancelled) and cancelled.future.cancelled()
        with pytest.raises(BackendError, match="does not list task"):  # handed out once
            backend.attach(_attachable(), record)
        # The group's other task, which nobody followed, is watched until the shutdown
        # (the SDK's watcher would hold the process at exit until it finished).
        watcher = made[-1][1].client.watcher
        assert other.task_id in watcher.get_open_futures()
        follower.shutdown(wait=True)  # nothing left to wait for
        assert other.task_id not in watcher.get_open_futures()
        with pytest.raises(BackendError, match="shut down"):
            backend.attach(_attachable(), record)

        dropped = _attachable()
        stopping: Any = executor().backend
        stopping.attach(dropped, record)
        stopping.shutdown(wait=True, cancel=True)
        assert dropped.future.cancelled()

        followed = _attachable()
        executor().backend.attach(followed, record)  # type: ignore[attr-defined]
        assert not followed.future.done()  # the task still waits for the gate
        gate.unlink()
        output = followed.future.result(timeout=120)
        assert output.returncode == 0
        assert f.result(timeout=120) == 15 and other.result(timeout=120) == 18
        assert sum(service.batches) == 2  # following sent nothing
    finally:
        gate.unlink(missing_ok=True)  # the engine's workers are shared by the module
        for ex, sdk in made:
            ex.shutdown(wait=True, cancel_futures=True, terminate=True)
            sdk.shutdown(wait=False, cancel_futures=True)
