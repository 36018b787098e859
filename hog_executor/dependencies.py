"""Futures as arguments: a `HogFuture` among a call's arguments is a dependency.

``ex.submit(g, f)`` (also with ``f`` inside lists, tuples, dicts and sets, and through
``map``) runs ``g`` with ``f``'s value once ``f`` has succeeded. If ``f`` failed or was
cancelled, ``g`` never runs and its future fails with `DependencyError`, caused by ``f``'s
exception. A future of another executor is refused at submission.

How a dependent call is submitted, per call:

- every upstream future is done already: its values replace the futures and the call is
  submitted at once (with the other calls of the same ``map`` that are ready, in chunks).
  A value the upstream left in the store (a `StoredRef`, as graph intermediates are kept)
  travels as the handle and is read where the call runs: it does not pass through the client;
- the backend queues dependencies itself (`Backend` with ``queue_dependencies``, the Slurm
  backend) and every pending upstream call is still in its queue: the call is submitted at
  once, waiting in the queue for its upstream jobs (``--dependency=afterok``); its inputs are
  the upstream results, read from files the upstream jobs write under names chosen before
  anything ran (`hold_result`);
- otherwise the call waits on the client, without blocking ``submit``: done-callbacks of
  its upstream futures submit it once the last one is done.

The futures returned for dependent calls are `DependentFuture` objects: they follow the
call submitted for them (``job_id``, ``task_id``, ``timings``, ``cancel``), and turn its
failure into `DependencyError` when an upstream call failed.

Finding futures costs nothing measurable for calls without them: only the arguments
themselves, and lists, tuples, dicts and sets among them (`MAX_DEPTH` levels,
`MAX_ITEMS` items each), are looked at, by type; a future deeper than that is refused when
the call is pickled.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any

from .errors import DependencyError
from .futures import HogFuture, settle

if TYPE_CHECKING:
    from .executor import HogExecutor
    from .state import ExecutorState

__all__ = ["MAX_DEPTH", "MAX_ITEMS", "DependentFuture", "has_futures", "submit"]

#: Containers nested deeper than this in an argument are not searched for futures.
MAX_DEPTH = 3
#: Items of one container searched for futures (a larger container: its first items).
MAX_ITEMS = 10_000

_SEQUENCES = frozenset({list, tuple, set, frozenset})
#: Types that can hold nothing: the scan skips them at once.
_ATOMS = frozenset({int, float, str, bytes, bool, type(None), complex, bytearray})

Call = tuple[Sequence[Any], dict[str, Any]]


# -- finding futures --------------------------------------------------------------------------

def _holds(value: Any, depth: int) -> bool:
    """Whether ``value`` is, or holds within reach of the scan, a `HogFuture`."""
    kind = type(value)  # never isinstance(): it would resolve a ProxyStore proxy
    if kind in _ATOMS:
        return False
    if kind in _SEQUENCES:
        if depth >= MAX_DEPTH:
            return False
        for i, item in enumerate(value):
            if i >= MAX_ITEMS:
                break
            if type(item) not in _ATOMS and _holds(item, depth + 1):
                return True
        return False
    if kind is dict:
        if depth >= MAX_DEPTH:
            return False
        for i, item in enumerate(value.values()):
            if i >= MAX_ITEMS:
                break
            if type(item) not in _ATOMS and _holds(item, depth + 1):
                return True
        return False
    return issubclass(kind, HogFuture)


def has_futures(calls: Iterable[Call]) -> bool:
    """Whether any call's arguments hold a `HogFuture` (the executor's cheap check)."""
    for args, kwargs in calls:
        for value in args:
            if type(value) not in _ATOMS and _holds(value, 0):
                return True
        if kwargs:
            for value in kwargs.values():
                if type(value) not in _ATOMS and _holds(value, 0):
                    return True
    return False


def _collect(value: Any, depth: int, found: dict[int, HogFuture[Any]]) -> None:
    kind = type(value)
    if kind in _ATOMS:
        return
    if kind in _SEQUENCES or kind is dict:
        if depth >= MAX_DEPTH:
            return
        items = value.values() if kind is dict else value
        for i, item in enumerate(items):
            if i >= MAX_ITEMS:
                break
            _collect(item, depth + 1, found)
    elif issubclass(kind, HogFuture):
        found.setdefault(id(value), value)


def _futures_of(call: Call) -> list[HogFuture[Any]]:
    """The distinct futures among one call's arguments, in order of appearance."""
    found: dict[int, HogFuture[Any]] = {}
    args, kwargs = call
    for value in (*args, *kwargs.values()):
        _collect(value, 0, found)
    return list(found.values())


def _replace(value: Any, depth: int, new: Callable[[HogFuture[Any]], Any]) -> Any:
    """``value`` with each future ``f`` within reach replaced by ``new(f)`` (containers
    holding none are kept as they are)."""
    kind = type(value)
    if kind in _ATOMS:
        return value
    if kind in _SEQUENCES:
        if depth >= MAX_DEPTH or not _holds(value, depth):
            return value
        items = [_replace(v, depth + 1, new) if i < MAX_ITEMS else v
                 for i, v in enumerate(value)]
        return kind(items)
    if kind is dict:
        if depth >= MAX_DEPTH or not _holds(value, depth):
            return value
        return {k: _replace(v, depth + 1, new) if i < MAX_ITEMS else v
                for i, (k, v) in enumerate(value.items())}
    if issubclass(kind, HogFuture):
        return new(value)
    return value


def _replace_call(call: Call, new: Callable[[HogFuture[Any]], Any]) -> Call:
    args, kwargs = call
    return (tuple(_replace(a, 0, new) for a in args),
            {k: _replace(v, 0, new) for k, v in kwargs.items()})


# -- the futures of dependent calls -----------------------------------------------------------

class DependentFuture(HogFuture[Any]):
    """The future of a call that has futures among its arguments.

    It follows the call submitted for it once there is one (``inner``): ``job_id``,
    ``task_id``, ``running()``, ``cancel()`` and ``stop()`` are the submitted call's; its
    outcome is the call's, except that a failure after an upstream call failed (a job the
    queue dropped, for one) is `DependencyError` caused by the upstream exception.
    """

    def __init__(self, owner: ExecutorState) -> None:
        self._inner: HogFuture[Any] | None = None
        self._job_id: str | None = None
        self._task_id: str | None = None
        super().__init__()
        self._owner = owner

    @property
    def job_id(self) -> str | None:
        inner = self._inner
        return inner.job_id if inner is not None else self._job_id

    @job_id.setter
    def job_id(self, value: str | None) -> None:
        self._job_id = value

    @property
    def task_id(self) -> str | None:
        inner = self._inner
        return inner.task_id if inner is not None else self._task_id

    @task_id.setter
    def task_id(self, value: str | None) -> None:
        self._task_id = value

    @property
    def inner(self) -> HogFuture[Any] | None:
        """The future of the call submitted for this one (None: not submitted yet)."""
        return self._inner

    def running(self) -> bool:
        inner = self._inner
        return super().running() or (
            inner is not None and not self.done() and inner.running())

    def cancel(self) -> bool:
        inner = self._inner
        if inner is not None and not self.done() and not inner.cancel():
            return False
        return super().cancel()

    def stop(self) -> bool:
        inner = self._inner
        if inner is not None and not self.done():
            if not inner.stop():
                return False
            return super().cancel() or self.cancelled()
        return super().stop()


def _failure(futures: Iterable[Future[Any]]) -> Future[Any] | None:
    """The first of ``futures`` that is done and failed or cancelled."""
    for f in futures:
        if f.done() and (f.cancelled() or f.exception() is not None):
            return f
    return None


def dependency_error(upstream: Future[Any]) -> DependencyError:
    """The `DependencyError` of a call whose upstream call ``upstream`` failed."""
    task = getattr(upstream, "task_id", None)
    where = f"upstream call {task}" if task else "an upstream call"
    if upstream.cancelled():
        err = DependencyError(f"{where} was cancelled, so this call never ran", upstream=task)
        err.__cause__ = CancelledError(f"{where} was cancelled")
        return err
    cause = upstream.exception()
    assert cause is not None
    if isinstance(cause, DependencyError):  # name the root: the call that failed first
        root = cause.__cause__ if cause.__cause__ is not None else cause
        err = DependencyError(f"{where} did not run: {cause}", upstream=task)
        err.__cause__ = root
        return err
    err = DependencyError(
        f"{where} failed ({type(cause).__name__}: {cause}), so this call never ran",
        upstream=task)
    err.__cause__ = cause
    return err


def _when_all_done(futures: Sequence[Future[Any]], then: Callable[[], None]) -> None:
    """Call ``then()`` once every one of ``futures`` is done (at once if they are)."""
    pending = [f for f in futures if not f.done()]
    if not pending:
        then()
        return
    left = [len(pending)]
    lock = threading.Lock()

    def one_done(_: Future[Any]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            then()

    for f in pending:
        f.add_done_callback(one_done)


def _link(outer: DependentFuture, inner: HogFuture[Any], upstream: Sequence[Future[Any]],
          release: Callable[[], None] | None = None) -> None:
    """Make ``outer`` follow ``inner``, the call submitted for it."""
    outer.timings = inner.timings
    outer._inner = inner
    if outer.cancelled():  # cancelled while it was being submitted
        inner.cancel()

    def finished(_: Future[Any]) -> None:
        if release is not None:
            release()
        outer.stdout, outer.stderr = inner.stdout, inner.stderr
        if not inner.cancelled() and inner.exception() is None:
            settle(outer, result=inner.result())
            return
        _when_all_done(upstream, lambda: _conclude(outer, inner, upstream))

    inner.add_done_callback(finished)


def _conclude(outer: DependentFuture, inner: Future[Any], upstream: Sequence[Future[Any]]
              ) -> None:
    """The submitted call failed or was cancelled; every upstream call is done."""
    failed = _failure(upstream)
    if failed is not None:
        settle(outer, exception=dependency_error(failed))
    elif inner.cancelled():
        outer.force_cancel()
    else:
        settle(outer, exception=inner.exception())


# -- waiting on the client --------------------------------------------------------------------

#: Dependent calls waiting on the client for their upstream calls, per executor state.
_waiting: weakref.WeakKeyDictionary[ExecutorState, set[DependentFuture]] = (
    weakref.WeakKeyDictionary())
_waiting_lock = threading.Condition()


def _wait_on_client(ex: HogExecutor, fn: Callable[..., Any], call: Call,
                    upstream: list[HogFuture[Any]], submit_kw: dict[str, Any]
                    ) -> DependentFuture:
    state = ex._state
    outer = DependentFuture(state)
    with _waiting_lock:
        _waiting.setdefault(state, set()).add(outer)

    def launch() -> None:
        try:
            if outer.done():
                return
            failed = _failure(upstream)
            if failed is not None:
                settle(outer, exception=dependency_error(failed))
                return
            try:
                inner = ex._submit_calls(fn, [call], 1, **submit_kw)[0]
            except BaseException as exc:
                settle(outer, exception=exc)
                return
            _link(outer, inner, upstream)
        finally:
            with _waiting_lock:
                _waiting.get(state, set()).discard(outer)
                _waiting_lock.notify_all()

    _when_all_done(upstream, launch)
    return outer


def drain(state: ExecutorState, cancel: bool) -> None:
    """Before a shutdown: cancel the dependent calls still waiting on the client
    (``cancel``), or wait until each has been submitted (or has failed)."""
    with _waiting_lock:
        waiting = list(_waiting.get(state, ()))
    if cancel:
        for f in waiting:
            f.cancel()
    with _waiting_lock:
        _waiting_lock.wait_for(lambda: not _waiting.get(state))


# -- submission -------------------------------------------------------------------------------

def _value(f: HogFuture[Any]) -> Any:
    """What stands for a done upstream future in a call: its value, or for a value left in
    the store, its handle (read where the call runs)."""
    value = f.result()
    from .store import StoredRef

    if type(value) is StoredRef:
        from .payload import Proxied

        return Proxied(value)
    return value


def _target(f: HogFuture[Any]) -> HogFuture[Any] | None:
    """The future of the call that actually runs for ``f`` (None: not submitted yet)."""
    if isinstance(f, DependentFuture):
        return f.inner
    return f


def submit(ex: HogExecutor, fn: Callable[..., Any], calls: Sequence[Call],
           chunksize: int | None, *, keep_stored: bool = False,
           packages: tuple[str, ...] = ()) -> list[HogFuture[Any]]:
    """Submit calls of ``fn`` some of which hold futures (see the module's docstring).

    Raises:
        ValueError: a future belongs to another executor.
        RuntimeError, SerializationError, PayloadTooLargeError, BackendError: as ``submit``
            does, for the calls submitted at once.
    """
    state = ex._state
    submit_kw: dict[str, Any] = {"keep_stored": keep_stored, "packages": packages}
    upstreams = [_futures_of(call) for call in calls]
    for found in upstreams:
        for f in found:
            if f._owner is not state:
                raise ValueError(
                    f"a future of another executor ({f!r}) cannot be an argument: a future is "
                    "a dependency only for the executor that created it (or its options() "
                    "views); pass future.result() instead")
    out: list[HogFuture[Any] | None] = [None] * len(calls)
    now: list[int] = []
    queue: list[int] = []
    queues = getattr(state.backend, "queue_dependencies", False)
    for i, found in enumerate(upstreams):
        failed = _failure(found)
        if failed is not None:
            outer = DependentFuture(state)
            settle(outer, exception=dependency_error(failed))
            out[i] = outer
        elif all(f.done() for f in found):
            now.append(i)
        elif queues:
            queue.append(i)
        else:
            out[i] = _wait_on_client(ex, fn, calls[i], found, submit_kw)
    if now:
        ready = [_replace_call(calls[i], _value) for i in now]
        for i, f in zip(now, ex._submit_calls(fn, ready, chunksize, **submit_kw), strict=True):
            out[i] = f
    if queue:
        for i, f in zip(queue, _submit_queued(ex, fn, [calls[i] for i in queue],
                                              [upstreams[i] for i in queue], chunksize,
                                              submit_kw), strict=True):
            out[i] = f
    return [f for f in out if f is not None]


def _submit_queued(ex: HogExecutor, fn: Callable[..., Any], calls: list[Call],
                   upstreams: list[list[HogFuture[Any]]], chunksize: int | None,
                   submit_kw: dict[str, Any]) -> list[HogFuture[Any]]:
    """Submit calls whose upstream calls are in the backend's queue, to wait there.

    Each pending upstream result is held in the backend (`hold_result`): its file outlives
    the upstream job until the dependent call is done. Calls whose upstream calls cannot all
    be held (one left the queue meanwhile, or waits on the client itself) wait on the client.
    """
    backend: Any = ex._state.backend
    held: list[tuple[list[str], dict[int, Any], list[str]] | None] = []
    for found in upstreams:
        paths: list[str] = []
        handles: dict[int, Any] = {}
        ids: list[str] = []
        for f in found:
            if f.done():
                continue
            target = _target(f)
            results = target._results if target is not None else None
            got = None
            if results is not None and target is not None and not target.done():
                try:
                    index = results.futures.index(target)
                except ValueError:
                    index = -1
                if index >= 0:
                    got = backend.hold_result(results.job.id, index)
            if got is None:
                break
            queue_id, handle, path = got
            paths.append(path)
            ids.append(queue_id)
            handles[id(f)] = handle
        else:
            held.append((ids, handles, paths))
            continue
        for path in paths:
            backend.release_result(path)
        held.append(None)

    out: list[HogFuture[Any] | None] = [None] * len(calls)
    batch: list[int] = []
    for i, h in enumerate(held):
        if h is None:
            out[i] = _wait_on_client(ex, fn, calls[i], upstreams[i], submit_kw)
        else:
            batch.append(i)
    if batch:
        after: set[str] = set()
        rewritten = []
        for i in batch:
            ids, handles, _ = held[i]  # type: ignore[misc]
            after.update(ids)
            rewritten.append(_replace_call(calls[i], _stand_in(handles)))

        def release_all(indices: list[int]) -> None:
            for i in indices:
                for path in held[i][2]:  # type: ignore[index]
                    backend.release_result(path)

        try:
            view = ex.options(after=sorted(after, key=_slurm_order))
            inners = view._submit_calls(fn, rewritten, chunksize, **submit_kw)
        except BaseException:
            release_all(batch)
            raise
        for i, inner in zip(batch, inners, strict=True):
            outer = DependentFuture(ex._state)
            _link(outer, inner, upstreams[i], functools.partial(release_all, [i]))
            out[i] = outer
    return [f for f in out if f is not None]


def _stand_in(handles: dict[int, Any]) -> Callable[[HogFuture[Any]], Any]:
    """What replaces each upstream future of a queued call: the handle of its held result,
    or (done already) its value."""

    def new(f: HogFuture[Any]) -> Any:
        handle = handles.get(id(f))
        return handle if handle is not None else _value(f)

    return new


def _slurm_order(slurm_id: str) -> tuple[int, int]:
    job, _, task = slurm_id.partition("_")
    return (int(job) if job.isdigit() else 0, int(task) if task.isdigit() else -1)
