"""Checkpoint continuations: a call that runs out of time hands back the rest of its work.

Where the call runs, :data:`stopping` is set (and :func:`time_is_up` turns true) when the
call is warned that its time is nearly up: on Slurm, ``signal_lead`` seconds before the
walltime (a ``SIGUSR1`` the job script and the bundle pass on to the runner, or the runner's
own timer). The call then saves its state where it can find it again and returns (or
raises) :class:`Continue` with the function and arguments that carry on from there::

    def train(path, step=0):
        state = load(path, step)
        while step < 10_000:
            state = update(state)
            step += 1
            if hog_executor.time_is_up():
                save(path, state, step)
                return hog_executor.Continue(train, path, step)
        return state

On the client, a :class:`Continue` is a result kind, on every backend: the continuation is
submitted through the same executor view (same options), up to ``max_requeues`` times per
original call, and the original call's future resolves with the final value (or error).
A continuation asked for once ``max_requeues`` are used up fails the future with
:class:`RequeueLimitExceeded`. Without a continuation, a call that runs past its walltime
still fails with `hog_executor.WalltimeExceeded`.

This module is imported where calls run too (by the runner, when ``HOG_SIGNAL_LEAD`` is
set: `watch`); it needs only the standard library. The runner writes no result file for
calls queued behind one (futures as arguments on Slurm) when the value is a `Continue`.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .errors import HogError

if TYPE_CHECKING:
    from .executor import HogExecutor
    from .futures import HogFuture

__all__ = [
    "DEFAULT_MAX_REQUEUES",
    "Continue",
    "RequeueLimitExceeded",
    "continue_call",
    "stopping",
    "time_is_up",
    "warn_after",
    "watch",
]

#: Continuations one call may ask for when ``max_requeues`` is not set.
DEFAULT_MAX_REQUEUES = 3
#: Set (seconds) where calls are warned that long before the end of their time.
SIGNAL_LEAD_ENV = "HOG_SIGNAL_LEAD"
#: The call's walltime in seconds (0: none), set for the runner by the bundle.
WALLTIME_ENV = "HOG_WALLTIME"
#: Files beside the payload: the bundle got the warning before the runner said where it
#: is; the runner's pid, for the bundle to pass the warning (SIGUSR1) on to.
STOP_FILE_NAME = ".hog_stopping"
RUNNER_PID_NAME = ".hog_runner.pid"

#: Set when the running call is warned that its time is nearly up; never set on the client.
#: A ``threading.Event``: poll ``stopping.is_set()`` or block in ``stopping.wait(timeout)``.
stopping = threading.Event()


def time_is_up() -> bool:
    """Whether the running call was warned that its time is nearly up (see `stopping`).

    Always False outside a remote call, and for calls without a warning (no walltime, or
    ``signal_lead = 0``).
    """
    return stopping.is_set()


def _warned(signum: int = 0, frame: Any = None) -> None:
    """SIGUSR1, or the timer: set `stopping` (from a thread of its own: a signal handler
    must not wait for the event's lock, which the interrupted code may hold)."""
    if not stopping.is_set():
        threading.Thread(target=stopping.set, name="hog-stopping", daemon=True).start()


def warn_after(lead: str, walltime: str) -> float | None:
    """Seconds after the start at which a call of ``walltime`` seconds is warned, ``lead``
    seconds before its end (both as the environment holds them); None: never."""
    try:
        lead_s, wall_s = float(lead), float(walltime)
    except ValueError:
        return None
    if lead_s <= 0 or wall_s <= lead_s:
        return None
    return wall_s - lead_s


def watch(where: str) -> None:
    """Where a call runs (the runner calls this before the call, when `SIGNAL_LEAD_ENV` is
    set): take SIGUSR1 as the warning, write the runner's pid beside its payload in
    ``where`` for the bundle, and warn the call itself `SIGNAL_LEAD_ENV` seconds before
    the walltime (`WALLTIME_ENV`)."""
    import signal

    try:
        signal.signal(signal.SIGUSR1, _warned)
    except (ValueError, AttributeError):  # not the main thread, or no SIGUSR1
        return
    try:
        with open(os.path.join(where, RUNNER_PID_NAME), "w") as f:
            f.write(f"{os.getpid()}\n")
    except OSError:
        pass
    if os.path.exists(os.path.join(where, STOP_FILE_NAME)):
        _warned()
    delay = warn_after(os.environ.get(SIGNAL_LEAD_ENV, ""), os.environ.pop(WALLTIME_ENV, ""))
    if delay is None:
        return
    timer = threading.Timer(max(0.0, delay), _warned)
    timer.daemon = True
    timer.start()


def _rebuild(fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Continue:
    return Continue(fn, *args, **kwargs)


class Continue(Exception):
    """Run ``fn(*args, **kwargs)`` next, as the rest of this call: return it, or raise it.

    The call's future resolves with what the continuation (or the last of a chain of them)
    returns. ``fn`` and the arguments are pickled like a call's (a function of the script
    travels by reference).

    Attributes:
        fn: the function to call.
        call_args: its positional arguments.
        call_kwargs: its keyword arguments.
    """

    def __init__(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        if not callable(fn):
            raise TypeError(f"Continue needs a function to call, got {type(fn).__name__}")
        super().__init__(f"continue with {getattr(fn, '__qualname__', fn)!s}")
        self.fn = fn
        self.call_args = args
        self.call_kwargs = kwargs

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.fn, self.call_args, self.call_kwargs))


class RequeueLimitExceeded(HogError):
    """A call asked for a continuation after ``max_requeues`` continuations.

    Attributes:
        max_requeues: the limit.
    """

    def __init__(self, message: str, max_requeues: int) -> None:
        super().__init__(message)
        self.max_requeues = max_requeues


#: Continuations before the calls submitted in this context (the chain's length so far).
CONTINUED: contextvars.ContextVar[int] = contextvars.ContextVar("hog_continued", default=0)


def as_continuation(value: object) -> Continue | None:
    """``value`` (a call's value or error) when it asks for a continuation, else None."""
    return value if isinstance(value, Continue) else None


def continue_call(view: HogExecutor | None, future: HogFuture[Any], cont: Continue,
                  continued: int, where: str) -> None:
    """Submit ``cont`` through ``view`` as the rest of the call of ``future``; ``future``
    then resolves with its outcome. Never raises: what fails, fails ``future``.

    Args:
        view: the executor view the call was submitted through (None: a call collected by
            a later client, which cannot continue it).
        future: the original call's future.
        cont: the continuation the call returned or raised.
        continued: continuations before this one in the chain.
        where: the job, for messages.
    """
    from .futures import settle

    if view is None:
        settle(future, exception=HogError(
            f"{where} returned a continuation ({cont}), which cannot be followed for a call "
            "this client did not submit"))
        return
    limit = view.endpoint.values.get("max_requeues")
    limit = DEFAULT_MAX_REQUEUES if limit is None else limit
    if continued >= limit:
        settle(future, exception=RequeueLimitExceeded(
            f"{where} asked for a continuation ({cont}) after {continued} continuation"
            f"{'' if continued == 1 else 's'}: max_requeues={limit} are used up (raise "
            "max_requeues, or let each continuation do more of the work)", limit))
        return
    token = CONTINUED.set(continued + 1)
    try:
        nxt = view.submit(cont.fn, *cont.call_args, **cont.call_kwargs)
    except BaseException as exc:  # the future must not stay pending
        settle(future, exception=exc)
        return
    finally:
        CONTINUED.reset(token)
    future.continuations = continued + 1
    future._results = nxt._results  # future.stop() reaches the continuation
    nxt.add_done_callback(lambda done: _chain(done, future, continued + 1))


def _chain(done: Future[Any], future: HogFuture[Any], continued: int) -> None:
    """The continuation ``done`` ended: ``future`` gets its outcome."""
    from .futures import settle

    future.stdout = getattr(done, "stdout", None)
    future.stderr = getattr(done, "stderr", None)
    future.attempts += getattr(done, "attempts", 1) - 1
    future.continuations = max(future.continuations, continued,
                               getattr(done, "continuations", 0))
    if done.cancelled():
        future.force_cancel()
        return
    exc = done.exception()
    if exc is not None:
        settle(future, exception=exc)
    else:
        settle(future, result=done.result())
