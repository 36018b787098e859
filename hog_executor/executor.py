"""HogExecutor: a concurrent.futures.Executor whose calls run as bundles on an endpoint.

The modules that carry a call, in order (see also `hog_executor`'s package docstring):
`context` (script and environment), `payload` (pickling), `chunks` (packing calls into
jobs), `bundle` (the bash text), a `backends` backend (runs the job), `results` (output to
outcomes) and `futures` (`HogFuture`). `state` holds what an executor shares with its
``options()`` views. This module is the public class and the glue between them.
"""

from __future__ import annotations

import itertools
import os
import pickle
import secrets
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from . import cache as _cache
from . import dependencies as _dependencies
from . import payload as _payload
from .backends import Backend, Job, backend_class, backend_keys, backend_names
from .backends.lifecycle import note_interrupted, sigint_exits_at_once, watch_interrupts
from .chunks import chunk_size, payload_header, plan_chunks
from .config import Endpoint, resolve_endpoint
from .context import CallContext, Contexts, script_for
from .futures import CallTimings, HogFuture
from .results import JobResults
from .retries import RetryPolicy
from .script import ScriptMetadata, load_script
from .state import ExecutorState
from .store import DEFAULT_PROXY_THRESHOLD

if TYPE_CHECKING:
    from .store import ClientStore

__all__ = ["HogExecutor", "HogFuture"]

T = TypeVar("T")
Calls = Sequence[tuple[Sequence[Any], dict[str, Any]]]

#: The states of the executors alive in this process (for the line printed on Ctrl-C).
_LIVE: weakref.WeakSet[ExecutorState] = weakref.WeakSet()


class HogExecutor(Executor):
    """Run functions on an endpoint; every call returns a `HogFuture`.

    Args:
        endpoint: ``"local"`` (this machine), a ``[tool.hog.<name>]`` table of the script or
            the user config file (``"anvil"``, ``"anvil.gpu"``), or a Globus Compute endpoint
            UUID.
        script: the PEP 723 script whose environment and endpoint tables apply. Default: the
            file of each function's module when it has a PEP 723 block, else the ``__main__``
            file when it has one, else none (then ``requires_python``/``dependencies`` apply).
        max_workers: calls running at once (local endpoint; default: the CPU count).
        **config: endpoint keys (``walltime``, ``env``, ``worker_init``, ``payload_limit``,
            ``requires_python``, ``dependencies``, ``cache_dir``, backend keys).

    Raises:
        ConfigError: unknown endpoint or key, invalid value (the message lists what is known).
        MetadataError: the script's PEP 723 block is malformed.
    """

    def __init__(self, endpoint: str = "local", *, script: str | os.PathLike[str] | None = None,
                 max_workers: int | None = None, **config: Any) -> None:
        self._script = str(Path(script).resolve()) if script is not None else None
        tables = self._tables_script()
        if max_workers is not None:
            config["max_workers"] = max_workers
        self._endpoint: Endpoint = resolve_endpoint(
            endpoint,
            script_tables=tables.tool_hog if tables else None,
            script_source=str(tables.path) if tables else "script",
            kwargs=config,
            backend_keys=backend_keys,
            builtin_backends=backend_names,
        )
        backend = backend_class(self._endpoint.backend)(self._endpoint)
        self._state = ExecutorState(backend, store=self._endpoint.values.get("store"),
                                    default_store=self._endpoint.backend == "local")
        self._contexts = Contexts(self._script, self._endpoint.values, backend)
        _LIVE.add(self._state)
        watch_interrupts(_live_work)

    # -- configuration ----------------------------------------------------------------------

    def _tables_script(self) -> ScriptMetadata | None:
        """The script whose ``[tool.hog.*]`` tables name endpoints (None: none)."""
        path = script_for(None, self._script)
        return load_script(path) if path else None

    @property
    def endpoint(self) -> Endpoint:
        """The resolved endpoint: backend, values and where each value came from."""
        return self._endpoint

    @property
    def backend(self) -> Backend:
        """The backend running this executor's calls."""
        return self._state.backend

    def options(self, **config: Any) -> HogExecutor:
        """A view of this executor with per-call overrides (``walltime``, ``env``, ...).

        The view shares the backend, so calls through it queue with all others; shutting it
        down shuts down the executor.

        Raises:
            ConfigError: a key is unknown or cannot change per call.
        """
        view = object.__new__(type(self))
        view._script = self._script
        view._endpoint = self._endpoint.with_overrides(
            config, backend_keys(self._endpoint.backend)
        )
        view._state = self._state
        view._contexts = Contexts(self._script, view._endpoint.values, self._state.backend)
        return view

    # -- submission -------------------------------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> HogFuture[T]:
        """Run ``fn(*args, **kwargs)`` on the endpoint.

        Returns:
            HogFuture: resolves to the return value, or raises the remote exception (its
                original type, with the remote traceback as ``__cause__``).

        Raises:
            RuntimeError: the executor is shut down.
            SerializationError: the function or an argument cannot be pickled.
            PayloadTooLargeError: the serialized call is over ``payload_limit``.
            BackendError: the backend refused the submission.
        """
        return self._submit_calls(fn, [(args, kwargs)], chunksize=1)[0]

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | None = None, buffersize: int | None = None,
            progress: bool | None = None) -> Iterator[T]:
        """Like ``concurrent.futures.Executor.map``; calls are packed into chunks.

        Each chunk runs in one remote process. With ``chunksize=None`` the chunk size keeps
        every worker busy (about two chunks per worker) while amortizing start-up. Results
        come in order; the first failing call raises when its result is reached; ``timeout``
        counts from this call and raises ``TimeoutError``. With ``buffersize`` (as in Python
        3.14), at most that many calls are submitted ahead of the results consumed, and the
        iterables are read lazily. Results are not kept once yielded. ``progress=True`` shows
        a live progress bar (plain log lines when not on a terminal); None shows it under
        ``hog run``.

        Raises:
            SerializationError, PayloadTooLargeError: before anything runs.
            ValueError: ``chunksize`` or ``buffersize`` is below 1.
        """
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
            raise ValueError("buffersize must be None or a positive integer")
        deadline = None if timeout is None else time.monotonic() + timeout
        args = zip(*iterables, strict=False)
        if buffersize is None:
            calls: list[tuple[Sequence[Any], dict[str, Any]]] = [(item, {}) for item in args]
        else:
            calls = [(item, {}) for item in itertools.islice(args, buffersize)]
        pending = self._submit_calls(fn, calls, chunksize=chunksize)
        tracked: list[Future[Any]] = (
            list(pending) if progress is not False and buffersize is None else [])
        pending.reverse()
        del calls

        def refill() -> None:
            item = next(args, None)
            if item is not None:
                pending.insert(0, self._submit_calls(fn, [(item, {})], chunksize=1)[0])

        def results() -> Iterator[T]:
            try:
                while pending:
                    if buffersize is not None:
                        refill()
                    yield _result_or_cancel(pending.pop(), deadline)
            finally:
                for f in pending:
                    f.cancel()

        if tracked:
            from .progress import track_map

            return track_map(tracked, progress, fn, results())
        return results()

    def _submit_calls(self, fn: Callable[..., Any], calls: Calls, chunksize: int | None, *,
                      keep_stored: bool = False,
                      packages: tuple[str, ...] = ()) -> list[HogFuture[Any]]:
        """Serialize, chunk and submit calls of ``fn`` (see `submit_calls`)."""
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        state = self._state
        state.check_open()
        if not calls:
            return []
        if _dependencies.has_futures(calls):  # futures as arguments: see dependencies.py
            return _dependencies.submit(self, fn, calls, chunksize, keep_stored=keep_stored,
                                        packages=packages)
        submitted = time.time()
        # The local endpoint's default store is created only once something needs it.
        store = state.client_store(create=keep_stored)
        can_store = state.may_store
        threshold = self._endpoint.values.get("proxy_threshold", DEFAULT_PROXY_THRESHOLD)
        ctx = self._contexts.get(fn)
        call_refs: list[list[Any]] = []
        items = []
        # Without a block, what the arguments need remotely is inferred too (numpy for an
        # array argument): the modules their pickles refer to, pinned as installed here.
        modules: set[str] | None = None if ctx.meta.has_block else set()
        try:
            for args, kwargs in calls:
                refs: list[Any] = []
                call_refs.append(refs)
                offload = _offloader(state, refs) if can_store else None
                items.append(_payload.dumps_call(args, kwargs, ctx.module, offload, threshold,
                                                 modules))
            store = state.client_store(create=False)
            extras = packages
            if modules:
                extras = (*extras, *self._contexts.argument_packages(ctx, modules))
            if store is not None and (store.explicit or any(call_refs) or keep_stored):
                extras = (*extras, *store.requirements)
            if extras:
                ctx = self._contexts.get(fn, tuple(dict.fromkeys(extras)))
            return self._submit_items(ctx, items, call_refs, chunksize, store, threshold,
                                      keep_stored, optional=not extras, submitted=submitted)
        except BaseException:
            if store is not None:
                for refs in call_refs:
                    for ref in refs:
                        store.evict(ref)
            raise

    def _submit_items(self, ctx: CallContext, items: list[bytes], call_refs: list[list[Any]],
                      chunksize: int | None, store: ClientStore | None, threshold: int,
                      keep_stored: bool, optional: bool, submitted: float,
                      again: list[HogFuture[Any]] | None = None,
                      on_job: Callable[[JobResults], None] | None = None
                      ) -> list[HogFuture[Any]]:
        """Pack pickled calls into jobs and submit them; ``again``: the futures of calls that
        run again (retries), instead of new ones; ``on_job``: called with each job's results
        before any job is sent (the result cache gives them their calls' keys)."""
        if again is None and ctx.values.get("cache"):  # hits resolve at once (cache.py)
            return _cache.submit_cached(self, ctx, items, call_refs, chunksize, store,
                                        threshold, keep_stored, optional, submitted)
        state = self._state
        size = chunksize or chunk_size(len(items), state.backend.workers)
        chunks = plan_chunks([len(i) for i in items], size, len(ctx.fn_bytes), ctx.chunk_limit)
        futures: list[HogFuture[Any]] = again or [HogFuture() for _ in items]
        if again is None:
            for f in futures:
                f.timings = CallTimings(submitted)
        policy = RetryPolicy.of(ctx.values)

        def resubmitter(chunk: list[int]) -> Callable[[list[int]], None] | None:
            if policy is None:
                return None
            # The chunk's own calls: the list returned to the caller is theirs to change
            # (``map`` reverses it and pops from it).
            mine = [(items[i], call_refs[i], futures[i]) for i in chunk]

            def resubmit(picks: list[int]) -> None:
                # One call per job: a call that kills its process again takes no other down.
                calls = [mine[k] for k in picks]
                self._submit_items(ctx, [c[0] for c in calls], [c[1] for c in calls], 1,
                                   store, threshold, keep_stored, optional, submitted,
                                   again=[c[2] for c in calls])

            return resubmit

        jobs = []
        store_config = store.config_bytes if store is not None else None
        by_value = ctx.script is not None and ctx.module is None
        for chunk in chunks:
            marker = secrets.token_hex(16)
            # The first call's arguments in a file store are read while the script imports
            # (the others one call at a time, as they are needed: memory stays bounded).
            prefetch = [path for ref in call_refs[chunk[0]]
                        if (path := ref.file_path) is not None]
            header = payload_header(marker, ctx.spec.script_name, by_value, len(chunk),
                                    store is not None and threshold, optional, prefetch)
            data = _payload.pack_payload(header, ctx.fn_bytes, [items[i] for i in chunk],
                                         ctx.limit, store_config, store is not None)
            job = Job(id=uuid.uuid4().hex, head=ctx.parts[0], payload=data, tail=ctx.parts[1],
                      walltime=ctx.spec.walltime, config=ctx.values,
                      description=ctx.description, calls=len(chunk),
                      runner_key=ctx.runner_key)
            jobs.append(JobResults(state, job, [futures[i] for i in chunk], marker, ctx.module,
                                   store, keep_stored, policy, resubmitter(chunk), view=self))
        if on_job is not None:
            for results in jobs:
                on_job(results)
        if store is not None and again is None:
            for f, refs in zip(futures, call_refs, strict=True):
                if refs:
                    f.add_done_callback(_evicter(store, refs))
        with state.submit_lock:
            state.check_open()
            state.track(jobs)
            # Everything that resolves the calls is in place before the backend has the jobs:
            # a Ctrl-C from now on cannot leave a call that nothing resolves.
            sent = time.time()
            for f in futures:
                if f.timings is not None:
                    f.timings.sent = sent
            for results in jobs:
                results.job.future.add_done_callback(results.finished)
            try:
                state.backend.submit([j.job for j in jobs])
            except Exception:
                state.forget(*jobs)
                raise
        return futures

    # -- dask -------------------------------------------------------------------------------

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        """Run a Dask graph: this executor is a Dask scheduler (``scheduler=ex``).

        See `hog_executor.dask.get`: chains are fused into one call, ready tasks are grouped
        into chunks, intermediates over ``proxy_threshold`` stay in the store.
        """
        from .dask import get

        return get(self, dsk, keys, **kwargs)

    def persist(self, *collections: Any, **kwargs: Any) -> Any:
        """``dask.persist`` whose chunks over ``proxy_threshold`` stay in the store.

        Returns the persisted collections (a tuple, or one collection when given one). Their
        chunks are handles that this executor resolves when it computes them later; they are
        evicted at shutdown.
        """
        from .dask import persist

        return persist(self, *collections, **kwargs)

    @property
    def store(self) -> Any:
        """The ProxyStore ``Store`` used for large data (None when there is none)."""
        store = self._state.client_store()
        return store.store if store is not None else None

    # -- lifecycle --------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 terminate: bool = False) -> None:
        """Stop accepting calls; optionally cancel or stop what has not finished.

        As with the standard library's executors, calls already running are left to finish
        unless ``terminate`` is set.

        Args:
            wait: block until every submitted call has finished (or been cancelled).
            cancel_futures: cancel the calls that have not started.
            terminate: also stop the running calls: their processes (or cluster jobs) are
                stopped and their futures end cancelled; nothing is left behind.
        """
        state = self._state
        if wait or cancel_futures or terminate:  # dependent calls still waiting on the client
            _dependencies.drain(state, cancel=cancel_futures or terminate)
        with state.submit_lock:
            state.shutdown = True
        jobs = state.in_flight()
        if terminate:
            for results in jobs:
                results.stop_requested = True
        elif cancel_futures:
            for results in jobs:
                for f in list(results.futures):
                    f.cancel()  # a job none of whose calls remain leaves the queue
        state.backend.shutdown(wait=wait, cancel=terminate)
        if wait:
            for results in jobs:
                for f in list(results.futures):
                    try:
                        f.exception()
                    except BaseException:  # cancelled: nothing to wait for
                        pass
        if wait or terminate:
            state.close_store()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> Literal[False]:
        """Shut down, waiting for the calls; on Ctrl-C (``KeyboardInterrupt``) or
        ``SystemExit``, stop them instead (pending ones cancelled, running ones stopped).

        The exception goes on (a ``try``/``except`` around the block sees it); while the
        calls are being stopped, a second Ctrl-C ends the process at once.
        """
        interrupted = exc_type is not None and issubclass(exc_type,
                                                          (KeyboardInterrupt, SystemExit))
        if not interrupted:
            self.shutdown(wait=True)
            return False
        _, running, queued = _work_of(self._state)
        restore = sigint_exits_at_once()
        try:
            self.shutdown(wait=True, cancel_futures=True, terminate=True)
        finally:
            restore()
        note_interrupted(running, queued)
        return False

    def __repr__(self) -> str:
        state = "shut down" if self._state.shutdown else "running"
        return f"<HogExecutor {self._endpoint.name!r} ({self._endpoint.backend}, {state})>"


# -- the package-internal API (the Dask adapter, HogTaskExecutor, the hog command) ------------

def submit_calls(ex: HogExecutor, fn: Callable[..., Any], calls: Calls,
                 chunksize: int | None, *, keep_stored: bool = False,
                 packages: tuple[str, ...] = ()) -> list[HogFuture[Any]]:
    """Submit many calls of ``fn`` as chunks of ``chunksize`` calls (None: automatic).

    ``keep_stored``: results the runner put into the store resolve to `StoredRef` handles
    instead of values (graph intermediates). ``packages``: requirements the remote
    environment needs for these calls (dask for graph tasks).

    Raises:
        RuntimeError: the executor is shut down.
        SerializationError, PayloadTooLargeError: before anything is sent.
    """
    return ex._submit_calls(fn, calls, chunksize, keep_stored=keep_stored, packages=packages)


def client_store(ex: HogExecutor) -> ClientStore | None:
    """The executor's store, created on first use (None: it has none)."""
    return ex._state.client_store()


def script_of(ex: HogExecutor, fn: Any) -> str | None:
    """The script whose environment calls of ``fn`` through ``ex`` use."""
    return script_for(fn, ex._script)


def swap_backend(ex: HogExecutor, backend: Backend) -> Backend:
    """Give ``ex`` another backend (``hog bundle`` captures jobs); returns the previous one."""
    previous, ex._state.backend = ex._state.backend, backend
    ex._contexts.backend = backend
    return previous


def _work_of(state: ExecutorState) -> tuple[int, int, int]:
    """Of one executor: 1 if it is not shut down (else 0), its running calls, its queued
    calls."""
    running = queued = 0
    for results in state.in_flight():
        for f in list(results.futures):
            if f.running():
                running += 1
            elif not f.done():
                queued += 1
    return (0 if state.shutdown else 1), running, queued


def _live_work() -> tuple[int, int, int]:
    """Live executors not shut down, and the running and queued calls of those."""
    totals = [0, 0, 0]
    for state in list(_LIVE):
        if not state.shutdown:
            for i, n in enumerate(_work_of(state)):
                totals[i] += n
    return totals[0], totals[1], totals[2]


def _result_or_cancel(f: HogFuture[T], deadline: float | None) -> T:
    """``f``'s result (waiting until ``deadline``); cancels it on a timeout. The caller keeps
    no reference to ``f`` or its value (``map`` must not keep results alive)."""
    try:
        try:
            return f.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
        finally:
            if not f.done():
                f.cancel()
    finally:
        del f


def _offloader(state: ExecutorState, refs: list[Any]) -> Callable[[bytes, list[Any]], Any]:
    """Puts an argument's pickle and buffers into the store; remembers the handle for eviction."""

    def offload(data: bytes, buffers: list[Any]) -> Any:
        store = state.client_store()
        if store is None:  # no proxystore for the default store: the argument stays inline
            return _Inline(data, buffers)
        ref = store.put(data, buffers)
        refs.append(ref)
        return _payload.Proxied(ref)

    return offload


class _Inline:
    """An already pickled argument (and its out-of-band buffers) that stays in the payload."""

    def __init__(self, data: bytes, buffers: list[Any]) -> None:
        self.data = data
        self.buffers = buffers

    def __reduce__(self) -> tuple[Any, ...]:
        if not self.buffers:
            return (pickle.loads, (self.data,))
        from .store import _loads_parts

        return (_loads_parts, (self.data, [bytearray(b.raw()) for b in self.buffers]))


def _evicter(store: ClientStore, refs: list[Any]) -> Callable[[Future[Any]], None]:
    """Evicts a call's proxied arguments once its future is done."""

    def evict(_: Future[Any]) -> None:
        for ref in refs:
            store.evict(ref)

    return evict

