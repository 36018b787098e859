"""What every backend needs around its jobs: resolving their futures, and interpreter exit.

`resolve` and `mark_running` change a job's future quietly: a future cancelled or resolved
concurrently is no error, and a cancelled future always has its waiters notified (a
``concurrent.futures.wait()`` counts it as done only then).

At interpreter exit, every backend registered with `stop_at_exit` is shut down: its queued
jobs run to the end when its class ``drains_at_exit``, and are cancelled otherwise. Callbacks
given to `at_exit_after` run once their backend's at-exit shutdown is done (at exit, for a
backend not registered), so that what the jobs still use, such as a store, outlives them.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import CANCELLED, PENDING
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import Backend, Output

__all__ = ["at_exit_after", "mark_running", "resolve", "run_finalizer", "stop_at_exit"]

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
    import sys

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
    with _lock:
        backends = list(_stopped_at_exit)
        after = {b: list(refs) for b, refs in _after.items()}
    for backend in backends:
        _shut_down(backend)
        _run_after(backend, after.pop(backend, []))
    for backend, refs in after.items():
        _run_after(backend, refs)


def run_finalizer(finalizer: weakref.finalize[Any, Any] | None) -> None:
    """Run a ``weakref.finalize`` clean-up now, once; also at interpreter exit.

    Calling the finalizer itself does nothing once weakref's own exit hook has run, which
    may be before the backends' at-exit shutdown: detach it and call its function instead.
    """
    detached = finalizer.detach() if finalizer is not None else None
    if detached is not None:
        _, func, args, kwargs = detached
        func(*args, **kwargs)
