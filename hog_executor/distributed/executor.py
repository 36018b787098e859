"""`HogTaskExecutor`: the executor a Dask worker hands its tasks to."""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, Executor, Future, ThreadPoolExecutor
from typing import Any

import dask
from distributed import WorkerPlugin

from ..executor import HogExecutor, register_functions, submit_calls
from .tasks import (
    is_data,
    is_simple_call,
    make_node_runner,
    task_message,
    user_functions,
    value_of,
)

__all__ = ["HogTaskExecutor"]

_RUN_TASK = ("distributed.worker", "_run_task_simple")


def _is_run_task(fn: Any) -> bool:
    return (getattr(fn, "__module__", None), getattr(fn, "__name__", None)) == _RUN_TASK


class _TaskFuture(Future[dict[str, Any]]):
    """The worker's view of one task; cancelling it cancels the hog call if not started."""

    def __init__(self, call: Future[Any] | None = None) -> None:
        super().__init__()
        self.call = call

    def cancel(self) -> bool:
        if self.call is not None:
            self.call.cancel()
        return super().cancel()


class _Pending:
    """A task waiting for a free slot: the call to make and the worker's future of it."""

    __slots__ = ("args", "cancel_asked", "delay", "dropped", "fn", "key", "kwargs", "out",
                 "packages", "sending", "start")

    def __init__(self, out: _TaskFuture, start: float, delay: float, fn: Callable[..., Any],
                 args: tuple[Any, ...], kwargs: dict[str, Any],
                 packages: tuple[str, ...] = ()) -> None:
        self.out = out
        self.start = start
        self.delay = delay
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        #: Requirements the call needs remotely besides the script's (dask for task trees);
        #: only calls without any share a bundle.
        self.packages = packages
        self.key: Any = None
        self.dropped = False  # cancelled while waiting for a slot
        self.sending = False  # taken from the queue, its call not made yet
        self.cancel_asked = False  # released while sending: cancel the call once it exists


def _settle(out: _TaskFuture, msg: dict[str, Any]) -> None:
    try:
        out.set_result(msg)
    except Exception:  # cancelled meanwhile (the worker is closing)
        pass


class HogTaskExecutor(Executor):
    """The executor a Dask worker hands its tasks to: every task becomes one hog call.

    A worker calls ``submit(_run_task_simple, task, data, delay)`` for each task routed here.
    A task that is one plain function applied to data (what ``client.submit``/``client.map``
    make) becomes ``HogExecutor.submit(func, *args, **kwargs)``: the remote side needs neither
    dask nor distributed. Any other task (a fused chain, nested calls) is evaluated remotely
    with ``dask`` added to the call's environment. Tasks that only move data run in place.
    Anything else the worker submits (its disk and memory benchmarks) runs on a local thread.

    The instance pickles to its configuration, so workers in other processes build their own
    `HogExecutor` on first use.

    At most ``slots`` calls run at once (default: the endpoint's ``backend.workers``); tasks
    beyond that wait here. With ``batch`` > 1, waiting tasks of the same function leave
    together, up to ``batch`` in one bundle (one process start for many short tasks); give the
    worker ``slots * batch`` threads so that enough tasks reach the executor.

    Args:
        endpoint: the endpoint calls run on (as for `HogExecutor`).
        script: the PEP 723 script whose environment and endpoint tables apply.
        executor: an existing `HogExecutor` to use in this process (not shut down here).
        slots: calls running at once (default: the endpoint's concurrency).
        batch: most tasks one bundle may carry (default 1: one task, one call).
        **config: endpoint keys, as for `HogExecutor`.

    Raises:
        ValueError: ``batch`` is below 1.
    """

    def __init__(self, endpoint: str = "local", *, script: str | None = None,
                 executor: HogExecutor | None = None, slots: int | None = None,
                 batch: int = 1, **config: Any) -> None:
        self._spec: tuple[str, str | None, dict[str, Any]] = (endpoint, script, dict(config))
        self._tuning = (slots, batch)
        self._hog = executor
        self._owns = executor is None
        self._runners: dict[str | None, Callable[..., Any]] = {}
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self._batch = batch
        self._slots = slots
        self._queue: deque[_Pending] = deque()
        self._inflight: dict[Any, _Pending] = {}
        self._running = 0
        self._outs: set[_TaskFuture] = set()  # every task future not settled yet
        self._lock = threading.Lock()
        self._local: ThreadPoolExecutor | None = None
        self._sender: ThreadPoolExecutor | None = None
        self._closed = False

    def __reduce__(self) -> tuple[Any, ...]:
        endpoint, script, config = self._spec
        return (_rebuild, (endpoint, script, config, *self._tuning))

    @property
    def executor(self) -> HogExecutor:
        """The `HogExecutor` running the calls (created on first use in this process)."""
        with self._lock:
            if self._hog is None:
                if self._closed:
                    raise RuntimeError("the executor is shut down")
                endpoint, script, config = self._spec
                self._hog = HogExecutor(endpoint, script=script, **config)
            return self._hog

    def worker_plugin(self) -> WorkerPlugin:
        """A worker plugin that cancels this executor's waiting tasks the scheduler releases.

        Give it to the worker along with the executor (``plugins=[ex.worker_plugin()]``);
        `HogCluster` does.
        """
        return _ReleaseWatcher(self)

    def _node_runner(self, task: Any) -> Callable[..., Any]:
        """A function evaluating ``task`` remotely, seen as part of its user module.

        The executor takes the script (environment, shipped file) from the module of the
        function it runs: the runner poses as the module of the tree's first user function.
        Functions of other local, uninstalled modules travel by value.
        """
        found: list[Any] = []
        user_functions(task, found)
        main = found[0] if found else None
        module = getattr(main, "__module__", None)
        register_functions(self.executor,
                           [fn for fn in found[1:] if getattr(fn, "__module__", None) != module])
        with self._lock:
            runner = self._runners.get(module)
            if runner is None:
                runner = self._runners[module] = make_node_runner(module)
        return runner

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run a worker's task (``_run_task_simple``) as a hog call; anything else locally.

        Raises:
            RuntimeError: the executor is shut down.
        """
        if self._closed:
            raise RuntimeError("cannot schedule new tasks after shutdown")
        if _is_run_task(fn) and not kwargs and len(args) == 3:
            return self._run_task(*args)
        return self._local_pool().submit(fn, *args, **kwargs)

    def _local_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._local is None:
                self._local = ThreadPoolExecutor(1, thread_name_prefix="hog-worker-local")
            return self._local

    def _run_task(self, task: Any, data: Mapping[Any, Any], delay: float) -> Future[Any]:
        start = time.time()
        out = _TaskFuture()
        if is_data(task):
            try:
                msg = task_message(start, delay, result=task(dict(data)))
            except Exception as exc:
                msg = task_message(start, delay, error=exc)
            out.set_result(msg)
            return out
        # Pickling arguments and submitting (sbatch, a service call) must not hold up the
        # worker's event loop: one thread prepares and sends, in the order tasks arrive.
        # Until it settles, the future is known here: shutdown settles all that remain.
        self._outs.add(out)
        out.add_done_callback(self._outs.discard)
        try:
            self._submitter().submit(self._enqueue, out, task, data, start, delay)
        except RuntimeError:  # shut down meanwhile
            out.cancel()
        return out

    def _submitter(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the executor is shut down")
            if self._sender is None:
                self._sender = ThreadPoolExecutor(1, thread_name_prefix="hog-worker-submit")
            return self._sender

    def _enqueue(self, out: _TaskFuture, task: Any, data: Mapping[Any, Any], start: float,
                 delay: float) -> None:
        try:
            if is_simple_call(task):
                args = tuple(value_of(a, data) for a in task.args)
                kwargs = {k: value_of(v, data) for k, v in task.kwargs.items()}
                entry = _Pending(out, start, delay, task.func, args, kwargs)
            else:
                deps = {k: data[k] for k in task.dependencies}
                entry = _Pending(out, start, delay, self._node_runner(task), (task, deps), {},
                                 (f"dask=={dask.__version__}",))  # type: ignore[attr-defined]
            if self._slots is None:
                self._slots = max(1, self.executor.backend.workers)
        except Exception as exc:  # the task fails with this exception
            _settle(out, task_message(start, delay, error=exc))
            return
        entry.key = getattr(task, "key", None)
        with self._lock:
            closed = self._closed
            if not closed:
                self._queue.append(entry)
                if entry.key is not None:
                    self._inflight[entry.key] = entry
        if closed:
            out.cancel()
            return
        self._pump()

    def cancel_task(self, key: Any) -> None:
        """The worker released task ``key``: drop it if it waits, cancel its call if queued.

        A call already running on the endpoint finishes (its result is dropped). Does not
        block: the worker's state machine calls this.
        """
        with self._lock:
            entry = self._inflight.get(key)
            if entry is None:
                return
            if entry.sending:  # _pump is making its call: it cancels the call once made
                entry.cancel_asked = True
                return
            waiting = entry.out.call is None and not entry.dropped
            if waiting:
                entry.dropped = True
                self._inflight.pop(key, None)
                try:
                    self._queue.remove(entry)
                except ValueError:
                    pass
            call = entry.out.call
        if waiting:
            _settle(entry.out, task_message(entry.start, entry.delay, error=CancelledError()))
        elif call is not None and not self._closed:
            self._local_pool().submit(call.cancel)  # a backend may block while cancelling

    def _take(self) -> list[_Pending] | None:
        """The next group of queued tasks to send as one call (None: nothing to send now)."""
        with self._lock:
            while not self._closed and self._queue and self._running < (self._slots or 1):
                head = self._queue.popleft()
                if head.dropped or head.out.cancelled():
                    continue
                group = [head]
                if self._batch > 1 and not head.packages:
                    rest: deque[_Pending] = deque()
                    while self._queue and len(group) < self._batch:
                        other = self._queue.popleft()
                        if other.dropped or other.out.cancelled():
                            continue
                        if not other.packages and other.fn is head.fn:
                            group.append(other)
                        else:
                            rest.append(other)
                    self._queue.extendleft(reversed(rest))
                self._running += 1
                for e in group:
                    e.sending = True
                return group
            return None

    def _pump(self) -> None:
        """Send queued tasks while fewer than ``slots`` calls are running."""
        while (group := self._take()) is not None:
            head = group[0]
            try:  # a group of several: one bundle runs the calls one after the other
                calls: list[Future[Any]] = list(submit_calls(
                    self.executor, head.fn, [(e.args, e.kwargs) for e in group],
                    chunksize=len(group), packages=head.packages))
            except Exception as exc:  # bad input (unpicklable, too large): these tasks fail
                with self._lock:
                    self._running -= 1
                    for e in group:
                        e.sending = False
                        self._inflight.pop(e.key, None)
                for e in group:
                    _settle(e.out, task_message(e.start, e.delay, error=exc))
                continue
            left = [len(group)]
            to_cancel: list[Future[Any]] = []
            with self._lock:
                for e, call in zip(group, calls, strict=True):
                    e.out.call = call
                    e.sending = False
                    if e.cancel_asked or e.out.cancelled():
                        to_cancel.append(call)
            for e, call in zip(group, calls, strict=True):
                call.add_done_callback(functools.partial(self._call_done, e, left))
            for call in to_cancel:  # released while its call was being made
                call.cancel()

    def _call_done(self, entry: _Pending, left: list[int], call: Future[Any]) -> None:
        try:
            error = call.exception()
        except CancelledError as exc:
            error = exc
        if error is None:
            msg = task_message(entry.start, entry.delay, result=call.result())
        else:
            msg = task_message(entry.start, entry.delay, error=_with_remote_traceback(error))
        _settle(entry.out, msg)
        with self._lock:
            self._inflight.pop(entry.key, None)
            left[0] -= 1
            if left[0]:
                return
            self._running -= 1
        if not self._closed:
            try:
                self._submitter().submit(self._pump)
            except RuntimeError:  # shut down meanwhile
                pass

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop: calls not finished are cancelled (their processes stopped), even without
        ``wait``: the backend's clean-up always completes before this returns. Every task
        future not settled yet is cancelled.

        A worker calls this when it closes. With an executor handed in (``executor=``, shared
        by in-process workers) nothing stops here, as other workers may still use it: its
        owner calls `close` once they are gone (`HogCluster` does), and shuts the
        `HogExecutor` down.
        """
        if self._owns:
            self.close(wait)

    def close(self, wait: bool = True) -> None:
        """Stop taking tasks, cancel every task future not settled yet and the calls behind
        them; shut the `HogExecutor` down if this instance created it.

        Args:
            wait: wait for the threads preparing calls to finish.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            hog, pools = self._hog if self._owns else None, (self._sender, self._local)
            queued, self._queue = list(self._queue), deque()
        for entry in queued:
            entry.out.cancel()
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=wait, cancel_futures=True)  # drops tasks not prepared yet
        for out in list(self._outs):  # those dropped, and those whose calls still run
            out.cancel()
        if hog is not None:
            # Always wait: a worker process exits right after closing, and the backend's
            # cleanup (stopping running calls, removing its work directory) must be done.
            hog.shutdown(wait=True, cancel_futures=True, terminate=True)

    def __repr__(self) -> str:
        return f"<HogTaskExecutor {self._spec[0]!r}>"


def _with_remote_traceback(error: BaseException) -> BaseException:
    """Keep the remote traceback in a note: ``__cause__`` does not survive pickling."""
    from ..errors import RemoteTraceback

    cause = error.__cause__
    if isinstance(cause, RemoteTraceback) and hasattr(error, "add_note"):
        note = f"Remote traceback:\n{cause.tb.rstrip()}"
        if note not in getattr(error, "__notes__", ()):
            error.add_note(note)
    return error


class _ReleaseWatcher(WorkerPlugin):
    """A worker plugin: tasks the scheduler releases while executing are cancelled here."""

    name = "hog-executor-release-watcher"

    def __init__(self, executor: HogTaskExecutor) -> None:
        self.executor = executor

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if start == "executing" and finish == "released":
            self.executor.cancel_task(key)


def _rebuild(endpoint: str, script: str | None, config: dict[str, Any], slots: int | None,
             batch: int) -> HogTaskExecutor:
    return HogTaskExecutor(endpoint, script=script, slots=slots, batch=batch, **config)
