"""What runs on a Dask worker for the ``dask`` backend: stdlib only.

These functions travel to the workers by value, together with `..processes`, `..runners`,
`..outputs` and `hog_executor.runner` (see the backend's ``_Shipped``), so a worker needs
nothing but ``distributed`` and bash: no hog-executor installation. A one-shot bundle runs
as ``bash`` in its own session; the worker object keeps a `~..processes.BundleProcesses`
so that `kill_bundles` can stop them. Jobs with a runner key run on the worker's warm
runners (`WorkerRunners`), under the same keying rules as on the local backend.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..outputs import CallOutput, Output
from ..processes import BundleProcesses, same_machine_hints
from ..runners import WarmSlot

#: Attribute of the distributed Worker holding the `BundleProcesses` of its bundles.
PROCESSES_ATTR = "_hog_bundle_processes"
#: Attribute of the distributed Worker holding its `WorkerRunners`.
RUNNERS_ATTR = "_hog_warm_runners"

logger = logging.getLogger(__name__)


def _processes(worker: Any) -> BundleProcesses:
    processes: BundleProcesses = worker.__dict__.setdefault(PROCESSES_ATTR, BundleProcesses())
    return processes


def _announcer(worker: Any, topic: str, job_id: str) -> Any:
    """Logs ``{"job": job_id}`` under ``topic``: the client learns that the job started."""

    def announce() -> None:
        try:
            worker.log_event(topic, {"job": job_id})
        except Exception:  # the call runs all the same; the client sees it start at its end
            logger.warning("could not tell the client that job %s started", job_id,
                           exc_info=True)

    return announce


def run_bundle(job_id: str, bundle: str, topic: str) -> tuple[int, bytes, bytes]:
    """Run one bundle with bash on this worker; return ``(returncode, stdout, stderr)``.

    Logs ``{"job": job_id}`` under ``topic`` when the bundle starts, so the client knows. The
    bundle gets SIGTERM (and stops its call) if this worker dies, where ``setpriv`` exists.
    """
    import os
    import shutil
    import tempfile

    from distributed import get_worker

    worker = get_worker()

    announce = _announcer(worker, topic, job_id)
    workdir = tempfile.mkdtemp(prefix="hog-dask-", dir=worker.local_directory)
    try:
        env = {**os.environ, **same_machine_hints(), "HOG_WORK_DIR": workdir}
        return _processes(worker).run(job_id, bundle, os.path.join(workdir, "bundle.sh"), env,
                                      on_start=announce, die_with_parent=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def kill_bundles(job_ids: list[str], dask_worker: Any = None) -> int:
    """Stop the bundles of ``job_ids`` on this worker (their whole sessions); count them.

    Ids not running yet are remembered, so a bundle that was about to start does not.
    """
    if dask_worker is None:
        from distributed import get_worker

        dask_worker = get_worker()
    processes = _processes(dask_worker)
    runners: WorkerRunners | None = dask_worker.__dict__.get(RUNNERS_ATTR)
    warm = sum(runners.stop(job_id) for job_id in job_ids) if runners is not None else 0
    return warm + sum(processes.stop(job_id, remember=True) for job_id in job_ids)


class _WarmJob:
    """What a `WarmSlot` needs of a job, rebuilt on the worker from plain values."""

    def __init__(self, job_id: str, bundle: str, payload: bytes, calls: int,
                 walltime: float | None, runner_key: str, on_start: Any) -> None:
        self.id = job_id
        self.bundle = bundle
        self.payload = payload
        self.calls = calls
        self.walltime = walltime
        self.runner_key = runner_key
        self.on_start = on_start
        self.answers: list[tuple[Any, ...]] = []

    def on_call(self, call: CallOutput) -> None:
        failure = call.failure
        self.answers.append((call.index, call.outcome, call.stdout, call.stderr, call.started,
                             call.finished, None if failure is None else
                             (failure.returncode, failure.stdout, failure.stderr),
                             call.worker, call.startup))


class WorkerRunners:
    """A Dask worker's warm runners: idle slots by runner key, busy ones by job id.

    At most ``capacity`` runners (the worker's threads); a job whose key has no idle runner
    takes an empty slot, else the slot idle longest (its runner is replaced). Runners idle
    longer than their ``idle_timeout`` leave at the next job, or at the latest when the
    reaper thread looks (every `REAP_INTERVAL` seconds).
    """

    REAP_INTERVAL = 10.0

    def __init__(self, worker: Any) -> None:
        import os
        import tempfile

        self.capacity = max(1, int(getattr(worker.state, "nthreads", 0) or
                                   getattr(worker, "nthreads", 1) or 1))
        self.workdir = tempfile.mkdtemp(prefix="hog-dask-warm-", dir=worker.local_directory)
        self.env = {**os.environ, **same_machine_hints(), "HOG_WORK_DIR": self.workdir}
        self.lock = threading.Lock()
        self.idle: list[WarmSlot] = []
        self.busy: dict[str, WarmSlot] = {}
        self.idle_timeout = 300.0
        reaper = threading.Thread(target=self._reap_forever, name="hog-warm-reaper",
                                  daemon=True)
        reaper.start()

    def take(self, key: str, max_calls: int | None) -> WarmSlot:
        with self.lock:
            for slot in self.idle:
                if slot.key == key and slot.max_calls == max_calls:
                    self.idle.remove(slot)
                    return slot
            victim = None
            if len(self.idle) + len(self.busy) >= self.capacity and self.idle:
                victim = min(self.idle, key=lambda s: (s.key is not None, s.idle_since))
                self.idle.remove(victim)
        if victim is not None:
            victim.close()
        return WarmSlot(lambda: self.workdir, lambda: self.env, max_calls)

    def give_back(self, slot: WarmSlot) -> None:
        slot.idle_since = time.monotonic()
        with self.lock:
            self.idle.append(slot)

    def stop(self, job_id: str) -> bool:
        with self.lock:
            slot = self.busy.get(job_id)
        if slot is None:
            return False
        slot.stop_job()
        return True

    def reap(self) -> None:
        now = time.monotonic()
        with self.lock:
            old = [s for s in self.idle if now - s.idle_since > self.idle_timeout]
            for slot in old:
                self.idle.remove(slot)
        for slot in old:
            slot.close()

    def _reap_forever(self) -> None:
        while True:
            time.sleep(self.REAP_INTERVAL)
            self.reap()


def _runners(worker: Any) -> WorkerRunners:
    # dict.setdefault is atomic: one lock per worker (this module travels by value, so it
    # holds no lock of its own).
    with worker.__dict__.setdefault(RUNNERS_ATTR + "_lock", threading.Lock()):
        runners: WorkerRunners | None = worker.__dict__.get(RUNNERS_ATTR)
        if runners is None:
            runners = worker.__dict__[RUNNERS_ATTR] = WorkerRunners(worker)
        return runners


def run_warm(job_id: str, bundle: str, payload: bytes, calls: int, walltime: float | None,
             runner_key: str, max_calls: int | None, idle_timeout: float | None,
             topic: str) -> tuple[list[tuple[Any, ...]], tuple[int, bytes, bytes, bool]]:
    """Run a job on one of this worker's warm runners.

    Returns each call's answer (index, outcome, stdout, stderr, started, finished, failure)
    and how the job ended (returncode, stdout, stderr, streamed).
    """
    from distributed import get_worker

    worker = get_worker()
    runners = _runners(worker)
    if idle_timeout:
        runners.idle_timeout = idle_timeout
    runners.reap()

    announce = _announcer(worker, topic, job_id)
    job = _WarmJob(job_id, bundle, payload, calls, walltime, runner_key, announce)
    slot = runners.take(runner_key, max_calls)
    slot.stopping = False
    with runners.lock:
        runners.busy[job_id] = slot
    try:
        output: Output = slot.run(job)  # type: ignore[arg-type]
    finally:
        with runners.lock:
            runners.busy.pop(job_id, None)
        slot.job = None
        runners.give_back(slot)
    return job.answers, (output.returncode, output.stdout, output.stderr, output.streamed)
