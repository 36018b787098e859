"""Warm runners: bundles that stay up and serve many jobs, one call frame at a time.

A warm runner is a bundle started with ``HOG_SERVE=1``: it builds or finds its environment,
imports the script once, runs the chunk of the job it was started for, and then serves
further chunks sent on its stdin (see ``hog_executor.runner``, "serving"). Its answers come
call by call, each with that call's own stdout and stderr.

A runner serves only jobs with its ``runner_key`` (environment, script text, process-level
settings: see `hog_executor.context.CallContext`). `WarmSlot.run` drives one job on a slot's
runner, starting or replacing the runner as needed, and keeps the job's promise whatever
happens to the process:

- a call over its walltime: the runner's session is killed, that call alone fails with the
  walltime exit status, and the job's remaining calls go on in a new runner;
- the runner dies in a call: that call fails with the process's exit status and its stderr
  tail; the remaining calls go on in a new runner;
- the runner retires (``max_calls_per_process``): the remaining calls go on in a new runner;
- the job is cancelled: the runner's session is stopped and the job ends as stopped;
- the runner cannot start (its environment fails to build): the job fails as a one-shot
  bundle would, with the bundle's exit status and stderr.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..runner import (
    EXIT_WALLTIME,
    MAX_CALLS_ENV,
    MSG_CALL,
    MSG_DONE,
    MSG_EXIT,
    MSG_READY,
    MSG_RETIRE,
    SERVE_START_ENV,
    request,
)
from .outputs import CallOutput, Output
from .processes import STOPPED_BEFORE_START, stop_session, write_private

if TYPE_CHECKING:
    from . import Job

__all__ = ["SERVE_ENV", "Runner", "WarmSlot"]

logger = logging.getLogger(__name__)

#: Set for a bundle that should serve (a warm runner) instead of running one chunk.
SERVE_ENV = "HOG_SERVE"
#: Bytes of a message's length prefix, and bytes read from a runner at a time.
LENGTH_SIZE = 8
READ_SIZE = 1 << 16
#: Bytes of a dead runner's stderr quoted in the failure of its call.
STDERR_TAIL_BYTES = 64 * 1024
#: Seconds a runner told to leave (stdin closed) gets before its session is stopped.
CLOSE_GRACE = 5.0


class _Gone(Exception):
    """The runner's channel ended."""


@dataclass
class Runner:
    """One warm runner process, serving jobs of one ``key``."""

    key: str
    proc: subprocess.Popen[bytes]
    bundle_path: str
    stderr_path: str
    ready: bool = False
    calls: int = 0
    worker: str | None = None
    buffer: bytearray = field(default_factory=bytearray)

    @classmethod
    def start(cls, job: Job, start: int, workdir: str, env: Mapping[str, str],
              max_calls: int | None) -> Runner:
        """Start a runner from ``job``'s bundle; it runs the job's calls from ``start``."""
        path = os.path.join(workdir, f"{job.id}.{start}.sh")
        err = os.path.join(workdir, f"{job.id}.{start}.err")
        write_private(path, job.bundle)
        run_env = {**env, SERVE_ENV: "1", SERVE_START_ENV: str(start),
                   MAX_CALLS_ENV: str(max_calls or 0)}
        try:
            with open(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as ef:
                proc = subprocess.Popen(["bash", path], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=ef, env=run_env,
                                        start_new_session=True)
        except BaseException:
            _unlink(path, err)
            raise
        assert job.runner_key is not None
        return cls(job.runner_key, proc, path, err)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, start: int, payload: bytes) -> None:
        """Ask for ``payload``'s calls from ``start``.

        Raises:
            _Gone: the runner has exited.
        """
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(request(start, payload))
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise _Gone() from exc

    def receive(self, deadline: float | None) -> tuple[Any, ...] | None:
        """The next answer; None when ``deadline`` (monotonic) passed first.

        Raises:
            _Gone: the channel ended (the runner exited).
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = self.buffer
        while True:  # answers come several at a time: read what is there, in one go
            if len(buf) >= LENGTH_SIZE:
                size = LENGTH_SIZE + int.from_bytes(buf[:LENGTH_SIZE], "big")
                if len(buf) >= size:
                    answer: tuple[Any, ...] = pickle.loads(memoryview(buf)[LENGTH_SIZE:size])
                    del buf[:size]
                    return answer
            if deadline is not None:
                left = max(0.0, deadline - time.monotonic())
                if not select.select([fd], [], [], left)[0]:
                    return None
            data = os.read(fd, READ_SIZE)
            if not data:
                raise _Gone()
            buf += data

    def stop(self) -> None:
        """Stop the runner's whole session now."""
        stop_session(self.proc.pid)

    def wait_gone(self) -> int:
        """Wait for the process; its exit status (negative: a signal). Removes its files."""
        rc = self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:  # a broken pipe on flush: the process is gone anyway
                pass
        return rc

    def stderr_tail(self) -> bytes:
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - STDERR_TAIL_BYTES))
                return f.read()
        except OSError:
            return b""

    def close(self) -> None:
        """Tell the runner to leave (stdin ends); stop its session if it does not."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:  # already gone
            pass
        try:
            self.proc.wait(CLOSE_GRACE)
        except subprocess.TimeoutExpired:
            self.stop()
        self.wait_gone()
        self.remove_files()

    def remove_files(self) -> None:
        _unlink(self.bundle_path, self.stderr_path)


def _unlink(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class WarmSlot:
    """One of a backend's process slots: holds at most one warm runner at a time.

    Attributes:
        runner: the slot's runner (None: none is up).
        job: the job the slot runs now (None: idle).
        stopping: the current job is being stopped (cancel, shutdown).
        idle_since: when the slot last became idle (monotonic).
    """

    def __init__(self, workdir: Callable[[], str], env: Callable[[], Mapping[str, str]],
                 max_calls: int | None) -> None:
        self._workdir = workdir
        self._env = env
        self.max_calls = max_calls
        self.runner: Runner | None = None
        self.job: Job | None = None
        self.stopping = False
        self.idle_since = time.monotonic()
        self.lock = threading.Lock()

    @property
    def key(self) -> str | None:
        runner = self.runner
        return runner.key if runner is not None else None

    def stop_job(self) -> None:
        """Stop the job the slot runs (its runner's session); the job ends as stopped."""
        with self.lock:
            self.stopping = True
            runner = self.runner
        if runner is not None:
            runner.stop()

    def close(self) -> None:
        """Let the slot's runner leave."""
        with self.lock:
            runner, self.runner = self.runner, None
        if runner is not None:
            runner.close()

    def run(self, job: Job) -> Output:
        """Run every call of ``job`` on warm runners; the job's final `Output`.

        Each call's answer goes to ``job.on_call`` as it arrives; the returned output is
        marked ``streamed`` unless the runner could not start (then it is the bundle's own
        exit status and stderr, for all calls).
        """
        index, ran = 0, False
        while index < job.calls:
            if self.stopping:  # before any runner took it, or between two runners
                return _stopped() if ran else Output(*STOPPED_BEFORE_START, streamed=True)
            ran = True
            runner, fresh = self._runner_for(job, index)
            try:
                outcome = self._drive(runner, job, index, fresh)
            except BaseException:
                self._drop(runner, stop=True)
                raise
            if isinstance(outcome, Output):
                return outcome
            index = outcome
        return Output(0, b"", b"", streamed=True)

    def _runner_for(self, job: Job, index: int) -> tuple[Runner, bool]:
        with self.lock:
            runner = self.runner
        spent = self.max_calls is not None and runner is not None \
            and runner.calls >= self.max_calls  # it leaves after its last chunk
        if runner is not None and runner.key == job.runner_key and runner.alive and not spent:
            return runner, False
        if runner is not None:
            self.close()
        runner = Runner.start(job, index, self._workdir(), self._env(), self.max_calls)
        with self.lock:
            self.runner = runner
            stopping = self.stopping
        if stopping:  # stopped while it started
            runner.stop()
        return runner, True

    def _drop(self, runner: Runner, stop: bool = False) -> int:
        with self.lock:
            if self.runner is runner:
                self.runner = None
        if stop:
            runner.stop()
        rc = runner.wait_gone()
        runner.remove_files()
        return rc

    def _drive(self, runner: Runner, job: Job, index: int, fresh: bool) -> Output | int:
        """Run ``job`` from call ``index`` on ``runner``: the final output, or the index of
        the next call to run on another runner."""
        if not fresh:
            try:
                runner.send(index, job.payload)
            except _Gone:
                self._drop(runner)
                return index  # it left before taking the job (retired, idle): start anew
        job.on_start()  # its process runs (a new runner still finds its environment)
        started = time.monotonic()
        walltime = job.walltime
        prelude = b""  # what the runner wrote while starting: given to its first call
        startup: dict[str, Any] | None = None  # how it started: given to its first call
        while True:
            deadline = None if walltime is None or not runner.ready else started + walltime
            try:
                answer = runner.receive(deadline)
            except _Gone:
                return self._gone(runner, job, index)
            if answer is None:  # walltime: this call alone fails; the others go on
                self._drop(runner, stop=True)
                if self.stopping:
                    return _stopped()
                note = (f"hog: the call exceeded its walltime of {walltime:g} s and its "
                        "runner was stopped\n").encode()
                job.on_call(CallOutput(index, None, b"", note,
                                       failure=Output(EXIT_WALLTIME, b"", note)))
                return index + 1
            tag = answer[0]
            if tag == MSG_CALL:
                _, i, outcome, out, err, t0, t1 = answer
                runner.calls += 1
                job.on_call(CallOutput(i, outcome, out, prelude + err, t0, t1,
                                       worker=runner.worker, startup=startup))
                prelude, startup = b"", None
                index = int(i) + 1
                started = time.monotonic()
            elif tag == MSG_READY:
                runner.ready = True
                started = time.monotonic()
                prelude = runner.stderr_tail()  # building the environment, for instance
                startup = answer[2] if len(answer) > 2 else None
                runner.worker = startup.get("worker") if startup else None
            elif tag == MSG_DONE:
                return Output(0, b"", b"", streamed=True)
            elif tag == MSG_RETIRE:
                self._drop(runner)
                return int(answer[1])
            elif tag == MSG_EXIT:
                _, i, out, err, code = answer
                rc = self._drop(runner)
                failure = Output(int(code) if rc == 0 else rc, out, err)
                job.on_call(CallOutput(int(i), None, out, err, failure=failure))
                return int(i) + 1

    def _gone(self, runner: Runner, job: Job, index: int) -> Output | int:
        """The runner's channel ended in call ``index``."""
        ready = runner.ready
        tail = runner.stderr_tail()
        rc = self._drop(runner)
        if self.stopping:
            return _stopped()
        if not ready:  # it never started serving: the bundle's own failure, for all calls
            return Output(rc, b"", tail)
        job.on_call(CallOutput(index, None, b"", tail, failure=Output(rc, b"", tail)))
        return index + 1


def _stopped() -> Output:
    return Output(-signal.SIGTERM, b"", b"hog: stopped\n", streamed=True)
