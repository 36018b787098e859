"""An example hog-executor backend: each bundle runs with ``bash`` in a thread of this process."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from hog_executor.backends import Backend, Job, Output
from hog_executor.backends.processes import same_machine_hints, stop_session
from hog_executor.config import Endpoint, Key, positive_int
from hog_executor.errors import BackendError


class ThreadBackend(Backend):
    """Runs bundles as ``bash <file>`` subprocesses, ``threads`` of them at a time."""

    # Keys an endpoint of this backend accepts besides the common ones (walltime, env, ...).
    keys: ClassVar[Mapping[str, Key]] = {
        "threads": Key("threads", "bundles running at once (default 2)", positive_int,
                       per_call=False),
    }

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        self._threads: int = endpoint.values.get("threads", 2)
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="hog-thread")
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._cancelling = False

    @property
    def workers(self) -> int:
        return self._threads  # map() sizes its chunks by this

    def submit(self, jobs: Sequence[Job]) -> None:
        with self._lock:
            if self._closed:
                raise BackendError("the thread backend is shut down")
            for job in jobs:
                self._pool.submit(self._run, job)

    def _run(self, job: Job) -> None:
        if self._cancelling:
            job.future.cancel()
        if not job.future.set_running_or_notify_cancel():
            return  # cancelled while it waited
        try:
            with tempfile.NamedTemporaryFile("w", prefix="hog-", suffix=".sh") as script:
                script.write(job.bundle)
                script.flush()
                proc = subprocess.Popen(
                    ["bash", script.name],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    # Tell the bundle which uv and Python to use: it runs on this machine.
                    env={**os.environ, **same_machine_hints()},
                    start_new_session=True,  # so that cancel() can stop all it started
                )
                with self._lock:
                    self._running[job.id] = proc
                job.on_start()
                out, err = proc.communicate()
            job.future.set_result(Output(proc.returncode, out, err))
        except Exception as exc:
            job.future.set_exception(BackendError(f"could not run task {job.id}: {exc}"))
        finally:
            with self._lock:
                self._running.pop(job.id, None)

    def cancel(self, job: Job) -> bool:
        if job.future.cancel():
            return True  # not started: _run will skip it
        with self._lock:
            proc = self._running.get(job.id)
        if proc is None or proc.poll() is not None:
            return False
        stop_session(proc.pid)  # SIGTERM to the bundle's session, SIGKILL 3 s later
        return True

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        with self._lock:
            self._closed = True
            self._cancelling = self._cancelling or cancel
            running = list(self._running.values()) if cancel else []
        for proc in running:
            stop_session(proc.pid)
        self._pool.shutdown(wait=wait)
