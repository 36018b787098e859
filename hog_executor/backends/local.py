"""The ``local`` backend: bundles run as bash subprocesses on this machine."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

from ..config import Endpoint, Key, positive_int
from ..errors import BackendError
from . import Backend, Job, Output
from .lifecycle import mark_running, resolve, run_finalizer, stop_at_exit
from .processes import KILL_GRACE, BundleProcesses, same_machine_hints

__all__ = ["KILL_GRACE", "LocalBackend", "same_machine_hints"]

#: Seconds an idle worker thread waits for work before it exits (a new submit starts
#: threads again); idle threads must not keep a backend nobody uses alive.
IDLE_EXIT = 2.0


class LocalBackend(Backend):
    """Runs each bundle with ``bash`` in its own session, ``max_workers`` at a time.

    Cancelling a running job stops its whole session (SIGTERM, then SIGKILL after
    `KILL_GRACE` seconds), so nothing the call started is left behind. The private work
    directory is created at the first submit and removed at shutdown, or when the backend is
    garbage-collected without one. At interpreter exit, queued jobs run to the end.
    """

    drains_at_exit: ClassVar[bool] = True
    keys: ClassVar[Mapping[str, Key]] = {
        "max_workers": Key(
            "max_workers", "bundles running at once (default: CPU count)", positive_int,
            per_call=False,
        )
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

    def _remove_workdir(self) -> None:
        with self._lock:
            cleanup = self._cleanup
        run_finalizer(cleanup)

    def submit(self, jobs: Sequence[Job]) -> None:
        with self._lock:
            self._ensure_open()
            self.workdir  # noqa: B018 - created here, so errors reach the caller
            self._queue.extend(jobs)
            wanted = min(self.workers, len(self._threads) - self._idle + len(self._queue))
            while len(self._threads) < wanted:
                t = threading.Thread(target=self._work, name=f"hog-local-{len(self._threads)}",
                                     daemon=True)
                self._threads.append(t)
                t.start()
            self._lock.notify(len(jobs))

    def _next(self) -> Job | None:
        """The next job, its future marked running; None: this thread exits."""
        with self._lock:
            while True:
                while not self._queue:
                    if self._closed:
                        self._threads.remove(threading.current_thread())
                        return None
                    self._idle += 1
                    woken = self._lock.wait(IDLE_EXIT)
                    self._idle -= 1
                    if not woken and not self._queue:
                        self._threads.remove(threading.current_thread())
                        return None
                job = self._queue.popleft()
                # Expected before it is running: a cancel that finds it running can stop it.
                self._processes.expect(job.id)
                if mark_running(job.future):
                    return job
                self._processes.forget(job.id)

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                if self.starting_hook is not None:
                    self.starting_hook(job)
                rc, out, err = self._processes.run(
                    job.id, job.bundle, os.path.join(self.workdir, f"{job.id}.sh"), self._env,
                    on_start=job.on_start,
                )
            except BaseException as exc:
                self._processes.forget(job.id)
                resolve(job.future,
                        error=BackendError(f"local backend could not run task {job.id}: {exc}"))
            else:
                resolve(job.future, Output(rc, out, err))

    def cancel(self, job: Job) -> bool:
        if resolve(job.future, cancel=True):
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
