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
from . import Backend, Job, Output
from .processes import KILL_GRACE, same_machine_hints, stop_session

__all__ = ["KILL_GRACE", "LocalBackend", "same_machine_hints"]

_live: weakref.WeakSet[LocalBackend] = weakref.WeakSet()


class LocalBackend(Backend):
    """Runs each bundle with ``bash`` in its own session, ``max_workers`` at a time.

    Cancelling a running job stops its whole session (SIGTERM, then SIGKILL after
    `KILL_GRACE` seconds), so nothing the call started is left behind.
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
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False
        self._cancelling = False
        self._workdir = tempfile.mkdtemp(prefix="hog-local-")
        self._env = {**os.environ, **same_machine_hints(), "HOG_WORK_DIR": self._workdir}
        _live.add(self)

    @property
    def workers(self) -> int:
        return int(self._workers)

    @property
    def workdir(self) -> str:
        """The private directory holding bundles and call temp dirs (removed at shutdown)."""
        return self._workdir

    def submit(self, jobs: Sequence[Job]) -> None:
        with self._lock:
            if self._closed:
                raise BackendError("the local backend is shut down")
            self._queue.extend(jobs)
            wanted = min(self.workers, len(self._threads) - self._idle + len(self._queue))
            while len(self._threads) < wanted:
                t = threading.Thread(target=self._work, name=f"hog-local-{len(self._threads)}",
                                     daemon=True)
                self._threads.append(t)
                t.start()
            self._lock.notify(len(jobs))

    def _next(self) -> Job | None:
        with self._lock:
            while not self._queue:
                if self._closed:
                    return None
                self._idle += 1
                self._lock.wait()
                self._idle -= 1
            return self._queue.popleft()

    def _work(self) -> None:
        while (job := self._next()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(self._run(job))
            except BaseException as exc:
                job.future.set_exception(
                    BackendError(f"local backend could not run task {job.id}: {exc}")
                )

    def _run(self, job: Job) -> Output:
        path = os.path.join(self._workdir, f"{job.id}.sh")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(job.bundle)
        try:
            with self._lock:
                if self._cancelling:
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
        for proc in running:
            self._stop(proc)
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()
            shutil.rmtree(self._workdir, ignore_errors=True)
        elif not already:
            threading.Thread(target=self._cleanup_when_idle, daemon=True).start()

    def _cleanup_when_idle(self) -> None:
        for t in self._threads:
            t.join()
        shutil.rmtree(self._workdir, ignore_errors=True)


@atexit.register
def _at_exit() -> None:  # pragma: no cover - runs at interpreter exit
    for backend in list(_live):
        try:
            backend.shutdown(wait=True)
        except Exception as exc:
            print(f"hog-executor: shutting down the local backend failed: {exc}", file=sys.stderr)
