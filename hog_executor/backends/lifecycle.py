"""What every backend needs around its jobs: resolving their futures, and interpreter exit.

`resolve` and `mark_running` change a job's future quietly: a future cancelled or resolved
concurrently is no error, and a cancelled future always has its waiters notified (a
``concurrent.futures.wait()`` counts it as done only then).

At interpreter exit, every backend registered with `stop_at_exit` is shut down: its queued
jobs run to the end when its class ``drains_at_exit``, and are cancelled otherwise. Callbacks
given to `at_exit_after` run once their backend's at-exit shutdown is done (at exit, for a
backend not registered), so that what the jobs still use, such as a store, outlives them.

Ctrl-C and SIGTERM end a client with one line on stderr instead of a traceback (see
`watch_interrupts`): ``hog-executor: interrupted; stopped 2 running calls, cancelled 2 queued
calls``, printed at exit once the work is stopped.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import CANCELLED, PENDING
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import Backend, Output

__all__ = ["at_exit_after", "interrupt_message", "mark_running", "note_interrupted", "resolve",
           "run_finalizer", "stop_at_exit", "watch_interrupts"]

logger = logging.getLogger(__name__)


# -- futures ----------------------------------------------------------------------------------

def _notify_if_cancelled(future: Future[Any]) -> None:
    # Future._condition and _state are what Future's own methods use; holding the condition
    # makes "is it cancelled but not notified" and the notification one step.
    with future._condition:
        if future._state == CANCELLED:
            future.set_running_or_notify_cancel()


def resolve(future: Future[Output], output: Output | None = None, *,
            error: BaseException | None = None, cancel: bool = False) -> bool:
    """Resolve ``future`` with ``output`` or ``error``, or (``cancel``) cancel it.

    Never raises for a future cancelled or resolved meanwhile, and notifies the waiters of a
    cancelled one. Callbacks run on the calling thread, with no lock held.

    Returns:
        With ``cancel``: whether the future is now cancelled (False: it is running or done).
        Otherwise: whether this call resolved it (False: it was cancelled or done already).
    """
    if cancel:
        if not future.cancel():
            return False
        _notify_if_cancelled(future)
        return True
    try:
        if error is not None:
            future.set_exception(error)
        elif output is not None:
            future.set_result(output)
        else:
            raise ValueError("resolve() needs an output, an error, or cancel=True")
    except InvalidStateError:  # cancelled or resolved concurrently
        _notify_if_cancelled(future)
        return False
    return True


def mark_running(future: Future[Any]) -> bool:
    """Mark a pending ``future`` running; False when it is not pending.

    A cancelled future has its waiters notified instead (and never raises, as
    ``set_running_or_notify_cancel`` does for one notified already).
    """
    with future._condition:
        if future._state == PENDING:
            return future.set_running_or_notify_cancel()
    _notify_if_cancelled(future)
    return False


# -- interpreter exit -------------------------------------------------------------------------

_lock = threading.Lock()
#: Backends shut down at exit, in the order they registered.
_stopped_at_exit: weakref.WeakKeyDictionary[Backend, None] = weakref.WeakKeyDictionary()
#: Callbacks to run after a backend's at-exit shutdown.
_after: weakref.WeakKeyDictionary[Backend, list[Callable[[], Callable[[], object] | None]]] = (
    weakref.WeakKeyDictionary()
)


def stop_at_exit(backend: Backend) -> None:
    """Shut ``backend`` down at interpreter exit, unless it is collected before.

    ``shutdown(wait=True)`` when its class ``drains_at_exit``, else
    ``shutdown(wait=True, cancel=True)``; and always the latter when the interpreter exits
    because of Ctrl-C (an uncaught ``KeyboardInterrupt``) or SIGTERM: the client's death
    stops its work. A backend shut down already is asked again: ``shutdown`` must accept
    that (it then only waits for what is left).
    """
    with _lock:
        _stopped_at_exit[backend] = None
    _handle_sigterm()


#: The signal that is ending the interpreter (SIGTERM through `_handle_sigterm`), if any.
_ending: list[int] = []


def _handle_sigterm() -> None:
    """SIGTERM raises ``SystemExit`` in the main thread (as Ctrl-C raises
    ``KeyboardInterrupt``), so that ``with`` blocks and exit handlers stop the work; only
    where nobody installed a handler of their own."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def on_term(signum: int, frame: Any) -> None:
            _ending.append(signum)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends at once
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_term)
    except (ValueError, OSError):  # no signals here (an embedded interpreter)
        return


def interrupted() -> bool:
    """Whether the interpreter is ending because of Ctrl-C or SIGTERM."""
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return bool(_ending) or isinstance(last, KeyboardInterrupt)


def at_exit_after(backend: Backend, fn: Callable[[], object]) -> None:
    """Call ``fn`` at interpreter exit, after ``backend``'s at-exit shutdown (see `stop_at_exit`).

    A bound method is held weakly, as ``backend`` is: registering one keeps neither its object
    nor the backend alive. Other callables are held until exit.
    """
    ref: Callable[[], Callable[[], object] | None]
    if hasattr(fn, "__self__") and hasattr(fn, "__func__"):
        ref = weakref.WeakMethod(fn)
    else:
        def ref() -> Callable[[], object]:
            return fn
    with _lock:
        _after.setdefault(backend, []).append(ref)


# -- Ctrl-C and SIGTERM: one line, not a traceback ---------------------------------------------

#: What counts the work an at-exit shutdown would stop: live executors not shut down, their
#: running calls, their queued calls (set by `watch_interrupts`).
_live_work: list[Callable[[], tuple[int, int, int]]] = []
#: Calls stopped by executors left through an interrupt: [exits, running, queued].
_stopped_calls = [0, 0, 0]
#: Set once the hook has taken an uncaught KeyboardInterrupt: the at-exit line is owed.
_swallowed: list[bool] = []
#: The ``sys.excepthook`` the hook chains to (empty: the hook is not installed).
_previous_hook: list[Callable[..., Any]] = []


def interrupt_message(reason: str, running: int, queued: int) -> str:
    """The line a client ended by ``reason`` (``"interrupted"``) prints: what was stopped."""
    def calls(n: int, what: str) -> str:
        return f"{n} {what} {'call' if n == 1 else 'calls'}"

    parts = ([f"stopped {calls(running, 'running')}"] if running else []) + (
        [f"cancelled {calls(queued, 'queued')}"] if queued else [])
    return f"hog-executor: {reason}; {', '.join(parts) if parts else 'no call was running'}"


def watch_interrupts(live_work: Callable[[], tuple[int, int, int]]) -> None:
    """Reduce an uncaught ``KeyboardInterrupt`` to one line while executors are live.

    Installs (once) a ``sys.excepthook`` wrapper: an uncaught ``KeyboardInterrupt`` raised
    while ``live_work()`` counts a live executor, or after one was left through an interrupt
    (`note_interrupted`), prints no traceback; at exit, once the work is stopped, one line
    says what was stopped, and the process still ends by SIGINT (status 130 in a shell). A
    second Ctrl-C then ends the process at once. Other exceptions, and a ``KeyboardInterrupt``
    with no executor around or in an interactive session, go to the previous hook. Code
    that catches the ``KeyboardInterrupt`` sees it as always.
    """
    with _lock:
        if live_work not in _live_work:
            _live_work.append(live_work)
        if not _previous_hook:
            _previous_hook.append(sys.excepthook)
            sys.excepthook = _excepthook


def note_interrupted(running: int, queued: int) -> None:
    """An executor left through an interrupt stopped ``running`` calls and cancelled ``queued``."""
    with _lock:
        _stopped_calls[0] += 1
        _stopped_calls[1] += running
        _stopped_calls[2] += queued


def _count_live() -> tuple[int, int, int]:
    with _lock:
        counters = list(_live_work)
    totals = [0, 0, 0]
    for count in counters:
        try:
            for i, n in enumerate(count()):
                totals[i] += n
        except Exception:  # a count is only for the message
            logger.debug("counting the live work failed", exc_info=True)
    return totals[0], totals[1], totals[2]


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    # Not in an interactive session: there the interpreter goes on after the exception.
    if issubclass(exc_type, KeyboardInterrupt) and not hasattr(sys, "ps1") and (
            _stopped_calls[0] or _count_live()[0]):
        _swallowed.append(True)
        sigint_exits_at_once()
        return
    (_previous_hook[0] if _previous_hook else sys.__excepthook__)(exc_type, exc, tb)


def sigint_exits_at_once() -> Callable[[], None]:
    """Let a (further) Ctrl-C end the process at once (only from the main thread); returns
    what puts the SIGINT handler back as it was."""
    import signal

    def keep() -> None:
        return None

    if threading.current_thread() is not threading.main_thread():
        return keep
    try:
        previous = signal.getsignal(signal.SIGINT)
        if previous is None:  # installed outside Python: cannot be put back
            return keep
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    except (ValueError, OSError):
        return keep

    def restore() -> None:
        try:
            signal.signal(signal.SIGINT, previous)
        except (ValueError, OSError):
            pass

    return restore


def _report_interrupt(live: tuple[int, int, int]) -> None:
    """Print the one line for a client ended by Ctrl-C or SIGTERM, if one is owed."""
    if _ending:
        reason = "terminated by SIGTERM"
    elif _swallowed:
        reason = "interrupted"
    else:
        return
    if not (_stopped_calls[0] or live[0]):
        return
    try:
        print(interrupt_message(reason, _stopped_calls[1] + live[1], _stopped_calls[2] + live[2]),
              file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed
        pass


def _shut_down(backend: Backend) -> None:
    try:
        if not interrupted() and backend.leave_at_exit():
            return
        backend.shutdown(wait=True, cancel=not backend.drains_at_exit or interrupted())
    except Exception:
        logger.warning("shutting down the %s backend at exit failed", type(backend).__name__,
                       exc_info=True)


def _run_after(backend: Backend, refs: list[Callable[[], Callable[[], object] | None]]) -> None:
    for ref in refs:
        fn = ref()
        if fn is None:
            continue
        try:
            fn()
        except Exception:
            logger.warning("an exit callback of the %s backend failed", type(backend).__name__,
                           exc_info=True)


@atexit.register
def _at_exit() -> None:  # pragma: no cover - runs at interpreter exit
    live = _count_live() if interrupted() else (0, 0, 0)  # before it is stopped
    with _lock:
        backends = list(_stopped_at_exit)
        after = {b: list(refs) for b, refs in _after.items()}
    for backend in backends:
        _shut_down(backend)
        _run_after(backend, after.pop(backend, []))
    for backend, refs in after.items():
        _run_after(backend, refs)
    _report_interrupt(live)


def run_finalizer(finalizer: weakref.finalize[Any, Any] | None) -> None:
    """Run a ``weakref.finalize`` clean-up now, once; also at interpreter exit.

    Calling the finalizer itself does nothing once weakref's own exit hook has run, which
    may be before the backends' at-exit shutdown: detach it and call its function instead.
    """
    detached = finalizer.detach() if finalizer is not None else None
    if detached is not None:
        _, func, args, kwargs = detached
        func(*args, **kwargs)
