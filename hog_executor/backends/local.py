"""The ``local`` backend: bundles run as bash subprocesses on this machine.

Jobs with a ``runner_key`` run on warm runners (`hog_executor.backends.runners`): at most
``max_workers`` slots, each a thread holding at most one runner process. A slot takes the
first queued job of its runner's key; a job no idle runner can serve goes to an empty slot,
else to the slot idle longest, whose runner is stopped first. A runner idle for
``idle_timeout`` seconds leaves. Jobs without a key (``fresh_process``) run as one bash
process each.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

from ..config import Endpoint, Key, parse_walltime, positive_int
from ..errors import BackendError
from . import Backend, Job, Output
from .lifecycle import mark_running, resolve, run_finalizer, stop_at_exit
from .processes import KILL_GRACE, BundleProcesses, same_machine_hints
from .runners import WarmSlot

__all__ = ["KILL_GRACE", "LocalBackend", "same_machine_hints"]

#: Seconds an idle worker thread waits for work before it exits (a new submit starts
#: threads again); idle threads must not keep a backend nobody uses alive.
IDLE_EXIT = 2.0
#: Default seconds an idle warm runner waits for a call before it leaves.
IDLE_TIMEOUT = 300.0


class LocalBackend(Backend):
    """Runs each bundle with ``bash`` in its own session, ``max_workers`` at a time.

    Cancelling a running job stops its whole session (SIGTERM, then SIGKILL after
    `KILL_GRACE` seconds), so nothing the call started is left behind. The private work
    directory is created at the first submit and removed at shutdown, or when the backend is
    garbage-collected without one; removed meanwhile (a ``/tmp`` cleaner), it is created again
    before the next bundle or runner starts. At interpreter exit, queued jobs run to the end.
    """

    drains_at_exit: ClassVar[bool] = True
    keys: ClassVar[Mapping[str, Key]] = {
        k.name: k for k in [
            Key("max_workers", "bundles (warm runners) running at once (default: CPU count)",
                positive_int, per_call=False),
            Key("idle_timeout", f"seconds an idle warm runner waits for a call before it "
                f"leaves (default {IDLE_TIMEOUT:g})", parse_walltime, per_call=False),
            Key("max_calls_per_process", "calls a warm runner serves before it is replaced "
                "(default: no limit)", positive_int, per_call=False),
        ]
    }
    #: Test hook: called with each job on its worker thread once the job's future is running
    #: and before its process starts (a test holds the job there to cancel it).
    starting_hook: Callable[[Job], object] | None = None

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        self._workers = endpoint.values.get("max_workers") or os.cpu_count() or 1
        self._lock = threading.Condition()
        self._queue: deque[Job] = deque()
        self._processes = BundleProcesses()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._idle_timeout = float(endpoint.values.get("idle_timeout") or IDLE_TIMEOUT)
        self._max_calls: int | None = endpoint.values.get("max_calls_per_process")
        self._slots: list[WarmSlot] = []  # one per thread
        self._warm: dict[str, WarmSlot] = {}  # job id -> the slot running it
        self._workdir: str | None = None
        self._env: dict[str, str] = {}
        self._cleanup: weakref.finalize[..., LocalBackend] | None = None
        stop_at_exit(self)

    @property
    def workers(self) -> int:
        return int(self._workers)

    @property
    def workdir(self) -> str:
        """The private directory holding bundles and call temp dirs (removed at shutdown).

        Created on first use (the first submit).

        Raises:
            BackendError: the directory cannot be created, or the backend was shut down
                before it was.
        """
        with self._lock:
            if self._workdir is None:
                if self._closed:
                    raise BackendError("the local backend was shut down before any submit: "
                                       "it has no work directory")
                try:
                    workdir = tempfile.mkdtemp(prefix="hog-local-")
                except OSError as exc:
                    raise BackendError(
                        f"cannot create the local backend's work directory: {exc}"
                    ) from None
                # The finalizer must not reference self: it runs once self is gone.
                self._cleanup = weakref.finalize(self, shutil.rmtree, workdir, True)
                self._cleanup.atexit = False  # the at-exit shutdown removes it, jobs done
                self._env = {**os.environ, **same_machine_hints(), "HOG_WORK_DIR": workdir}
                self._workdir = workdir
            return self._workdir

    def _ready_workdir(self) -> str:
        """The work directory, created again (``0700``) if it was removed since: a bundle or
        a runner starts in it now.

        Raises:
            BackendError: it cannot be created, or something else (not a private directory
                of this user) took its place.
        """
        workdir = self.workdir
        _ensure_private_dir(workdir)
        return workdir

    def _remove_workdir(self) -> None:
        with self._lock:
            cleanup = self._cleanup
        run_finalizer(cleanup)

    def submit(self, jobs: Sequence[Job]) -> None:
        with self._lock:
            self._ensure_open()
            self._ready_workdir()  # created here, so errors reach the caller
            self._queue.extend(jobs)
            # A new slot for each queued job that no idle slot can take without replacing
            # its runner, as far as max_workers allows (an idle runner takes one job).
            idle = [s for s in self._slots if s.job is None]
            unserved = len(_unserved(self._queue, idle))
            spare = sum(1 for s in idle if s.key is None)
            wanted = min(self.workers, len(self._threads) + max(0, unserved - spare))
            while len(self._threads) < wanted:
                slot = WarmSlot(self._ready_workdir, lambda: self._env, self._max_calls)
                t = threading.Thread(target=self._work, args=(slot,), daemon=True,
                                     name=f"hog-local-{len(self._threads)}")
                self._threads.append(t)
                self._slots.append(slot)
                t.start()
            self._lock.notify_all()  # a job may suit one idle slot and not another

    def _pick(self, slot: WarmSlot) -> Job | None:
        """The queued job ``slot`` should run now (called with the lock held)."""
        queue = self._queue
        if not queue:
            return None
        key = slot.key
        if key is not None:
            for i, job in enumerate(queue):
                if job.runner_key == key:
                    del queue[i]
                    return job
        idle = [s for s in self._slots if s.job is None]
        for i in _unserved(queue, idle):  # the others: an idle runner of their key takes them
            # An empty slot first, then the one idle longest (its runner is replaced).
            free = [s for s in idle if s.key is None or s.key not in
                    {j.runner_key for j in queue}]
            if free and min(free, key=lambda s: (s.key is not None, s.idle_since)) is slot:
                job = queue[i]
                del queue[i]
                return job
            return None
        return None

    def _next(self, slot: WarmSlot) -> Job | None:
        """The slot's next job, its future marked running; None: this thread exits."""
        with self._lock:
            while True:
                job = self._pick(slot)
                while job is None:
                    if self._closed and not self._queue:
                        self._leave(slot)
                        return None
                    self._idle += 1
                    timeout = self._idle_timeout if slot.key is not None else IDLE_EXIT
                    woken = self._lock.wait(timeout)
                    self._idle -= 1
                    job = self._pick(slot)
                    if job is None and not woken and not self._queue:
                        self._leave(slot)
                        return None
                slot.job = job
                slot.stopping = False
                if job.runner_key is not None:
                    self._warm[job.id] = slot
                else:  # expected before it is running: a cancel that finds it can stop it
                    self._processes.expect(job.id)
                if mark_running(job.future):
                    return job
                self._done(slot, job)

    def _leave(self, slot: WarmSlot) -> None:
        """This slot's thread exits (lock held); its runner is let go outside the lock."""
        self._threads.remove(threading.current_thread())
        self._slots.remove(slot)

    def _done(self, slot: WarmSlot, job: Job) -> None:
        """``slot`` has finished ``job`` (lock held)."""
        self._warm.pop(job.id, None)
        if job.runner_key is None:
            self._processes.forget(job.id)
        slot.job = None
        slot.idle_since = time.monotonic()

    def _work(self, slot: WarmSlot) -> None:
        try:
            while (job := self._next(slot)) is not None:
                try:
                    if self.starting_hook is not None:
                        self.starting_hook(job)
                    output = self._run(slot, job)
                except BaseException as exc:
                    resolve(job.future, error=BackendError(
                        f"local backend could not run task {job.id}: {exc}"))
                else:
                    resolve(job.future, output)
                finally:
                    with self._lock:
                        self._done(slot, job)
                        self._lock.notify_all()  # its runner may serve a queued job now
                    del job  # while the slot waits, nothing may keep the job's calls alive
        finally:
            slot.close()

    def _run(self, slot: WarmSlot, job: Job) -> Output:
        if job.runner_key is not None:
            return slot.run(job)
        slot.close()  # a one-shot bundle takes the slot's process
        rc, out, err = self._processes.run(
            job.id, job.bundle, os.path.join(self._ready_workdir(), f"{job.id}.sh"), self._env,
            on_start=job.on_start, die_with_parent=True,
        )
        return Output(rc, out, err)

    def cancel(self, job: Job) -> bool:
        if resolve(job.future, cancel=True):
            return True
        with self._lock:
            slot = self._warm.get(job.id)
        if slot is not None:
            slot.stop_job()
            return True
        return self._processes.stop(job.id)

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        with self._lock:
            already = self._closed
            self._closed = True
            dropped = list(self._queue) if cancel else []
            if cancel:
                self._queue.clear()
            self._lock.notify_all()
            threads = list(self._threads)
        if cancel:
            self._processes.stop_all()
            with self._lock:
                busy = list(self._warm.values())
            for slot in busy:
                slot.stop_job()
            for job in dropped:
                resolve(job.future, cancel=True)
        if wait:
            for t in threads:
                if t is not threading.current_thread():
                    t.join()
            self._remove_workdir()
        elif not already:
            threading.Thread(target=self._cleanup_when_idle, args=(threads,),
                             daemon=True).start()

    def _cleanup_when_idle(self, threads: list[threading.Thread]) -> None:
        for t in threads:
            t.join()
        self._remove_workdir()


def _unserved(queue: Sequence[Job], idle: Sequence[WarmSlot]) -> list[int]:
    """Indexes of the queued jobs that no idle runner of their key will take, each idle
    runner taking the first queued job of its key that another has not taken."""
    free: dict[str, int] = {}
    for s in idle:
        if s.key is not None:
            free[s.key] = free.get(s.key, 0) + 1
    unserved = []
    for i, job in enumerate(queue):
        if job.runner_key is not None and free.get(job.runner_key, 0) > 0:
            free[job.runner_key] -= 1
        else:
            unserved.append(i)
    return unserved


def _ensure_private_dir(path: str) -> None:
    """Create the directory ``path`` (``0700``) again if it is gone; check that it is this
    user's private directory.

    Raises:
        BackendError: it cannot be created, or something else is in its place.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            os.mkdir(path, 0o700)
            return
        except FileExistsError:  # created meanwhile: checked below
            st = os.lstat(path)
        except OSError as exc:
            raise BackendError(f"the local backend's work directory {path} was removed and "
                               f"cannot be created again: {exc}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise BackendError(f"the local backend's work directory {path} was replaced by "
                           "something that is not a private directory of this user; it is "
                           "not used")
