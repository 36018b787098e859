"""From what a job printed to the futures of its calls: ``Output -> Frame -> Outcome -> Future``.

`JobResults` ties one backend `Job` to the futures of the calls it carries. When the job's
``Future[Output]`` resolves, the output is split into the result frame and the user's own
output (`hog_executor.bundle.parse_output`), each call's outcome is decoded
(`hog_executor.payload.decode_outcome`) and settles its future. A job that produced no frame
becomes one error for all its calls, classified by `process_error`.
"""

from __future__ import annotations

import logging
import pickle
import signal
import time
import types
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from . import payload as _payload
from .backends import CallOutput, Job, Output
from .backends.lifecycle import mark_running
from .bundle import parse_output
from .checkpoint import CONTINUED, as_continuation, continue_call
from .errors import BackendError, HogError, RemoteProcessError, WalltimeExceeded
from .futures import CallTimings, HogFuture, settle
from .runner import EXIT_ENV_FAILED, EXIT_SETUP_FAILED, EXIT_WALLTIME

if TYPE_CHECKING:
    from .executor import HogExecutor
    from .retries import RetryPolicy
    from .state import ExecutorState
    from .store import ClientStore

__all__ = ["STDERR_TAIL_LINES", "JobResults", "process_error"]

logger = logging.getLogger(__name__)

#: Lines of stderr quoted in process errors.
STDERR_TAIL_LINES = 25

def process_error(output: Output, where: str, walltime: float | None,
                  stdout: str, stderr: str) -> RemoteProcessError:
    """The error for a job that ended without a result frame, from its exit and state.

    ``where`` names the job for the message (``task ID (script.py:f)``).
    """
    rc = output.returncode
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    tail = "\n".join(lines[-STDERR_TAIL_LINES:])
    logs = f"; logs: {', '.join(output.log_paths)}" if output.log_paths else ""
    common: dict[str, Any] = dict(
        returncode=rc, stderr_tail=tail, state=output.state, stdout=stdout, stderr=stderr
    )
    if rc == EXIT_WALLTIME:
        return WalltimeExceeded(
            f"{where} exceeded its walltime"
            + (f" of {walltime:g} s" if walltime else "")
            + f" and was killed{logs}",
            walltime=walltime, **common,
        )
    if output.state:
        reason = f"ended in state {output.state} (exit status {rc})"
    elif rc == EXIT_ENV_FAILED:
        reason = "could not build its environment"
    elif rc == EXIT_SETUP_FAILED:
        reason = "failed before running the call"
    elif rc < 0 or 128 < rc < 160:  # a signal, as the process or as a shell reports it
        signum = -rc if rc < 0 else rc - 128
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        hint = " (out of memory?)" if signum == signal.SIGKILL else ""
        reason = f"was killed by {name}{hint} (exit status {rc})"
    elif rc == 0:
        reason = "exited without a result (did the function call sys.exit() or os._exit()?)"
    else:
        reason = (f"exited with status {rc} without a result (sys.exit({rc}), os._exit() or "
                  "a crash in the process)")
    return RemoteProcessError(f"{where} {reason}{logs}", **common)


def _startup(timings: CallTimings, startup: dict[str, Any]) -> None:
    timings.env_ready = startup.get("env_ready")
    timings.env_built = startup.get("env_built")
    timings.imported = startup.get("imported")
    timings.worker = timings.worker or startup.get("worker")
    # The bundle's own clock says when its job started: a backend that polls its scheduler
    # (or has none to ask) sees that late, or never.
    timings.queued = startup.get("job_started") or timings.queued


def _frame_timings(futures: list[HogFuture[Any]], times: dict[str, Any]) -> None:
    """Fill the calls' timings from a result frame's timing record."""
    received = time.time()
    calls = times.get("calls") or []
    for i, f in enumerate(futures):
        timings = f.timings
        if timings is None:
            continue
        timings.received = received
        _startup(timings, times)
        if i < len(calls):
            timings.started, timings.finished = calls[i]


class JobResults:
    """Resolves the futures of the calls one job carries.

    Attributes:
        job: the backend job.
        futures: one future per call of the job's chunk, in order.
        marker: the random marker of the job's result frame.
        module: the client's module of the script (objects of the script map to it).
        store: the client store results may come through (None: none).
        keep_stored: results left in the store resolve to handles (graph intermediates).
        stop_requested: the executor stopped the job; its calls end cancelled.
        view: the executor view the calls came through: a call that asks for a continuation
            (`hog_executor.checkpoint.Continue`) continues through it (None: it cannot).
        continued: continuations before this job's calls (a chain's length so far).
        on_outcome: called with each call's index in the job, raw outcome and decoded
            `Outcome` before its future is settled (the result cache stores them); None:
            nothing.
    """

    on_outcome: Callable[[int, tuple[Any, ...], _payload.Outcome], None] | None = None

    def __init__(self, state: ExecutorState, job: Job, futures: list[HogFuture[Any]],
                 marker: str, module: types.ModuleType | None,
                 store: ClientStore | None = None, keep_stored: bool = False,
                 policy: RetryPolicy | None = None,
                 resubmit: Callable[[list[int]], None] | None = None,
                 view: HogExecutor | None = None) -> None:
        self.state = state
        self.job = job
        self.futures = futures
        self.marker = marker
        self.module = module
        self.store = store
        self.keep_stored = keep_stored
        self.stop_requested = False
        self.policy = policy
        self.resubmit = resubmit  # runs calls (by index) of this job again, in a new job
        self.view = view
        self.continued = CONTINUED.get()
        self._again: list[tuple[int, BaseException]] = []
        self._moved: set[int] = set()  # calls running again in another job
        for f in futures:
            f.job_id = f.task_id = job.id
            f._results = self
            f._owner = state
        job.on_start = self.started
        job.on_task_id = self.task_id_assigned
        job.on_call = self.call_finished

    @property
    def where(self) -> str:
        """The job, for messages: ``task ID (script.py:f)``."""
        return f"task {self.job.id} ({self.job.description})"

    def started(self) -> None:
        """The job's bundle started: its calls are running."""
        now = time.time()
        for f in self.futures:
            mark_running(f)
            if f.timings is not None and f.timings.queued is None:
                f.timings.queued = now

    def task_id_assigned(self, task_id: str) -> None:
        for f in self.futures:
            f.task_id = task_id

    def call_cancelled(self) -> None:
        """One call was cancelled; the job stops when none of its calls remain."""
        if all(f.cancelled() for f in self.futures):
            self.stop()

    def stop(self) -> None:
        """Stop the job: its calls that have not finished end cancelled."""
        self.stop_requested = True
        self.state.backend.cancel(self.job)

    def finished(self, fut: Future[Output]) -> None:
        """Resolve every call of the job (a done-callback: it must never leave one pending).

        Then the futures and this record forget each other: a call's future, or its value,
        must not stay alive through its neighbours in the chunk.
        """
        try:
            self._finished(fut)
            self._run_again()
        except BaseException as exc:
            err = BackendError(
                f"{self.where}: its output could not be decoded: {type(exc).__name__}: {exc}")
            err.__cause__ = exc
            for _, f in self._open():
                settle(f, exception=err)
        finally:
            for f in self.futures:
                if f._results is self:
                    f._results = None
            self.futures = []

    def _open(self) -> list[tuple[int, HogFuture[Any]]]:
        """The calls this job still answers for (not those that run again elsewhere)."""
        return [(i, f) for i, f in enumerate(self.futures) if i not in self._moved]

    def _finished(self, fut: Future[Output]) -> None:
        self.state.forget(self)
        if self.stop_requested or fut.cancelled():
            for _, f in self._open():
                f.force_cancel()
            return
        exc = fut.exception()
        if exc is not None:
            err = exc if isinstance(exc, HogError) else BackendError(
                f"{self.where}: {type(exc).__name__}: {exc}")
            for i, _ in self._open():
                self._fail(i, err)
            return
        self.deliver(fut.result())

    def call_finished(self, call: CallOutput) -> None:
        """One call's answer from a warm runner: settle its future now."""
        f = self.futures[call.index]
        if f.done():
            return
        timings = f.timings
        if timings is not None:
            timings.received = time.time()
            timings.started, timings.finished = call.started or None, call.finished or None
            timings.worker = call.worker
            if call.startup:
                _startup(timings, call.startup)
        f.stdout = call.stdout.decode("utf-8", "replace")
        f.stderr = call.stderr.decode("utf-8", "replace")
        if call.outcome is None:
            assert call.failure is not None
            self._fail(call.index, process_error(call.failure, self.where, self.job.walltime,
                                                 f.stdout, f.stderr))
        else:
            self._settle(call.index, call.outcome)
        self._run_again()

    def _settle(self, index: int, raw: tuple[Any, ...]) -> None:
        outcome = _payload.decode_outcome(raw, self.module, self.store, self.keep_stored)
        cont = as_continuation(outcome.value if outcome.ok else outcome.error)
        if cont is not None:  # not an outcome: the call goes on as another call
            self._moved.add(index)
            continue_call(self.view, self.futures[index], cont, self.continued, self.where)
            return
        if self.on_outcome is not None:
            self.on_outcome(index, raw, outcome)
        if outcome.ok:
            settle(self.futures[index], result=outcome.value)
        else:
            assert outcome.error is not None
            self._fail(index, outcome.error)

    def _fail(self, index: int, error: BaseException) -> None:
        """Call ``index`` failed with ``error``: run it again if the policy says so, else
        settle it."""
        f = self.futures[index]
        if f.done():
            return
        if self.policy is not None and self.resubmit is not None:
            again, counts = self.policy.decide(error, f.attempts - 1 - f._free_retries)
            if again:
                f.attempts += 1
                if not counts:
                    f._free_retries += 1
                logger.warning("%s: call %d failed (%s: %s); running it again (attempt %d)",
                               self.where, index, type(error).__name__, error, f.attempts)
                self._again.append((index, error))
                return
        settle(f, exception=error)

    def _run_again(self) -> None:
        """Send the calls to run again; if that fails, they fail with their own error."""
        again, self._again = self._again, []
        if not again:
            return
        assert self.resubmit is not None
        try:
            self.resubmit([i for i, _ in again])
            self._moved.update(i for i, _ in again)
        except Exception as exc:
            logger.warning("%s: the calls could not be sent again: %s", self.where, exc)
            for i, error in again:
                settle(self.futures[i], exception=error)

    def deliver(self, output: Output) -> None:
        """Decode ``output`` into each call's outcome."""
        if output.streamed:  # every call answered through call_finished
            missing = BackendError(f"{self.where} ended without answering every call")
            for _, f in self._open():
                settle(f, exception=missing)
            return
        frame = parse_output(output.stdout, self.marker)
        stderr = output.stderr.decode("utf-8", "replace")
        for f in self.futures:
            if not f.done():
                f.stdout, f.stderr = frame.stdout, stderr
        if frame.outcomes is None:
            err = process_error(output, self.where, self.job.walltime, frame.stdout, stderr)
            for i, _ in self._open():
                self._fail(i, err)
            return
        raw = pickle.loads(frame.outcomes)
        times = raw.pop() if raw and isinstance(raw[-1], dict) else {}
        _frame_timings(self.futures, times)
        for i, (f, item) in enumerate(zip(self.futures, raw, strict=False)):
            if not f.done():
                self._settle(i, item)
        if len(raw) < len(self.futures):
            missing = BackendError(
                f"{self.where} returned {len(raw)} results for {len(self.futures)} calls")
            for i, f in self._open():
                if i >= len(raw):
                    settle(f, exception=missing)
