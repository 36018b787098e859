"""`HogFuture`, the future of one call, and `settle`, which resolves a future without racing.

A call's future moves through the states of ``concurrent.futures``::

    PENDING --(job starts)--> RUNNING --(outcome decoded)--> FINISHED
       |                         |
       +--cancel()--> CANCELLED  +--force_cancel() (its process was stopped)--> CANCELLED

``cancel()`` succeeds only while the call has not started, as in the standard library.
`HogFuture.force_cancel` is the one way a running call's future ends cancelled: the executor
uses it when it stopped the call's process itself (``shutdown(terminate=True)``, or a
cancel of the only call of a job). `HogFuture.stop` asks for that.
"""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, PENDING, RUNNING
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .results import JobResults

__all__ = ["CallTimings", "HogFuture", "settle"]

T = TypeVar("T")


def settle(future: Future[Any], *, result: Any = None,
           exception: BaseException | None = None) -> bool:
    """Resolve ``future`` with ``result`` or ``exception`` unless it is already done.

    Safe against a concurrent cancel or resolution: returns whether this call resolved it.
    """
    with future._condition:
        if future._state not in (PENDING, RUNNING):
            return False
        if future._state == PENDING:
            future._state = RUNNING
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except Exception:  # InvalidStateError: resolved between the check and here
        return False
    return True


@dataclass
class CallTimings:
    """When one call went through each phase, as far as its backend can know (seconds since
    the epoch; None: not known). Read-only for users: the executor fills it in.

    Attributes:
        submitted: ``submit``/``map`` was called.
        sent: the backend accepted the job.
        queued: the backend (its scheduler) started the job: the end of the queue wait.
        env_ready: the call's environment was found or built.
        env_built: whether it was built for this call (None: not known).
        imported: the script was imported.
        started: the call started.
        finished: the call finished.
        received: its outcome reached the client.
        worker: where it ran (``host:pid`` of the Python process), if known.
    """

    submitted: float
    sent: float | None = None
    queued: float | None = None
    env_ready: float | None = None
    env_built: bool | None = None
    imported: float | None = None
    started: float | None = None
    finished: float | None = None
    received: float | None = None
    worker: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The phases as a plain dict (JSON-ready)."""
        return asdict(self)

    def split(self) -> dict[str, float]:
        """Seconds spent in each phase that is known: ``queue``, ``env``, ``import``,
        ``run``, ``return`` (from the call's end to the client)."""
        out: dict[str, float] = {}

        def span(name: str, a: float | None, b: float | None) -> None:
            if a is not None and b is not None and b >= a:
                out[name] = b - a

        ready = self.env_ready if self.env_ready is not None else self.imported
        first = ready if ready is not None else self.started
        span("queue", self.sent or self.submitted, self.queued if self.queued else first)
        if self.env_built:
            span("env", self.queued or self.sent, self.env_ready)
        span("import", self.env_ready, self.imported)
        span("run", self.started, self.finished)
        span("return", self.finished, self.received)
        return out


class HogFuture(Future[T]):
    """A ``concurrent.futures.Future`` for one remote call.

    Attributes:
        job_id: the id of the job carrying this call (set at submission; calls of one
            ``map`` chunk share it).
        task_id: the backend's id for that job: the service's task id where the backend
            reports one (a Globus Compute task), otherwise the job id.
        stdout: what the call printed (set when done).
        stderr: what the call wrote to stderr (set when done).
        timings: when the call went through each phase (`CallTimings`).
        attempts: how many runs the call took (more than 1 after retries).
        cached: the outcome came from the result cache (``cache=``): the call did not run.
        continuations: how many continuations (`hog_executor.Continue`) the call went
            through before its outcome.
    """

    cached: bool = False
    continuations: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.job_id: str | None = None
        self.task_id: str | None = None
        self.stdout: str | None = None
        self.stderr: str | None = None
        self.timings: CallTimings | None = None
        self.attempts = 1
        self._free_retries = 0  # retries that did not count (preemption)
        self._results: JobResults | None = None
        self._owner: object | None = None  # the executor's state (futures as arguments)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError(
            "a HogFuture is a dependency only as an argument, or inside lists, tuples, dicts "
            "and sets a few levels deep (see hog_executor.dependencies); pass "
            "future.result() to use its value elsewhere")

    def cancel(self) -> bool:
        """Cancel the call if it has not started; a job none of whose calls remain is stopped.

        Returns:
            bool: whether the call is cancelled (False once it is running or done).
        """
        with self._condition:
            if self._state != PENDING:
                return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)
        if not super().cancel():
            return False
        try:
            self.set_running_or_notify_cancel()  # wake as_completed()/wait() at once
        except RuntimeError:  # notified concurrently
            pass
        if self._results is not None:
            self._results.call_cancelled()
        return True

    def stop(self) -> bool:
        """Cancel the call, or stop it if it runs alone in its job.

        A running call that shares its job (a ``map`` chunk) is left to finish: stopping it
        would stop its neighbours. Returns whether the call ends cancelled.
        """
        if self.cancel():
            return True
        results = self._results
        if results is None or self.done() or len(results.futures) != 1:
            return False
        results.stop()
        return True

    def force_cancel(self) -> None:
        """Mark the call cancelled even if it is running (its process was stopped)."""
        with self._condition:
            if self._state not in (PENDING, RUNNING):
                return
            self._state = CANCELLED
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]
        self.set_running_or_notify_cancel()
