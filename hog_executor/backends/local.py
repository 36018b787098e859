"""The ``local`` backend: bundles run as bash subprocesses on this machine."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from typing import ClassVar

from ..config import Endpoint, Key, positive_int
from ..errors import BackendError
from . import Backend, Job, Output, run_finalizer
from .processes import KILL_GRACE, same_machine_hints, stop_session

__all__ = ["KILL_GRACE", "LocalBackend", "same_machine_hints"]

_live: weakref.WeakSet[LocalBackend] = weakref.WeakSet()

#: Seconds an idle worker thread waits for work before it exits (a new submit starts
#: threads again); idle threads must not keep a backend nobody uses alive.
IDLE_EXIT = 2.0


class LocalBackend(Backend):
    """Runs each bundle with ``bash`` in its own session, ``max_workers`` at a time.

    Cancelling a running job stops its whole session (SIGTERM, then SIGKILL after
    `KILL_GRACE` seconds), so nothing the call started is left behind. The private work
    directory is created at the first submit and removed at shutdown, or when the backend is
    garbage-collected without one.
    """

    drains_at_exit: ClassVar[bool] = True
    keys: ClassVar[Mapping[str, Key]] = {
        "max_workers": Key(
            "max_workers", "bundles running at once (default: CPU count)", positive_int,
            per_call=False,
        )
    }

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        self._workers = endpoint.values.get("max_workers") or os.cpu_count() or 1
        self._lock = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self._starting: set[str] = set()  # running futures whose process is not started yet
        self._stop_requested: set[str] = set()  # cancelled while starting: never start them
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False
        self._cancelling = False
        self._workdir: str | None = None
        self._env: dict[str, str] = {}
        self._cleanup: weakref.finalize[..., LocalBackend] | None = None
        _live.add(self)

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
                self._cleanup.atexit = False  # _at_exit shuts live backends down first
                self._env = {**os.environ, **same_machine_hints(), "HOG_WORK_DIR": workdir}
                self._workdir = workdir
            return self._workdir

    def _remove_workdir(self) -> None:
        with self._lock:
            cleanup = self._cleanup
        run_finalizer(cleanup)

    def submit(self, jobs: Sequence[Job]) -> None:
        with self._lock:
            if self._closed:
                raise BackendError("the local backend is shut down")
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
        """The next job, marked running and starting; None: this thread exits."""
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
                if job.future.set_running_or_notify_cancel():
                    self._starting.add(job.id)
                    return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                job.future.set_result(self._run(job))
            except BaseException as exc:
                job.future.set_exception(
                    BackendError(f"local backend could not run task {job.id}: {exc}")
                )

    def _run(self, job: Job) -> Output:
        path = os.path.join(self.workdir, f"{job.id}.sh")
        try:
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(job.bundle)
        except BaseException:
            with self._lock:
                self._starting.discard(job.id)
                self._stop_requested.discard(job.id)
            raise
        try:
            with self._lock:
                self._starting.discard(job.id)
                if self._cancelling or job.id in self._stop_requested:
                    self._stop_requested.discard(job.id)
                    return Output(-signal.SIGTERM, b"", b"hog: cancelled before start\n")
                proc = subprocess.Popen(
                    ["bash", path],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=self._env,
                    start_new_session=True,
                )
                self._running[job.id] = proc
            job.on_start()
            out, err = proc.communicate()
            return Output(proc.returncode, out, err)
        finally:
            with self._lock:
                self._running.pop(job.id, None)
            os.unlink(path)

    def cancel(self, job: Job) -> bool:
        if job.future.cancel():
            return True
        with self._lock:
            if job.id in self._starting:  # its process is not started: it never will be
                self._stop_requested.add(job.id)
                return True
            proc = self._running.get(job.id)
        if proc is None or proc.poll() is not None:
            return False
        self._stop(proc)
        return True

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        stop_session(proc.pid)

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        with self._lock:
            already = self._closed
            self._closed = True
            if cancel:
                self._cancelling = True
                while self._queue:
                    self._queue.popleft().future.cancel()
                running = list(self._running.values())
            else:
                running = []
            self._lock.notify_all()
            threads = list(self._threads)
        for proc in running:
            self._stop(proc)
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


@atexit.register
def _at_exit() -> None:  # pragma: no cover - runs at interpreter exit
    for backend in list(_live):
        try:
            backend.shutdown(wait=True)
        except Exception as exc:
            print(f"hog-executor: shutting down the local backend failed: {exc}", file=sys.stderr)
