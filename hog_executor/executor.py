"""HogExecutor: a concurrent.futures.Executor whose calls run as bundles on an endpoint."""

from __future__ import annotations

import atexit
import dataclasses
import math
import os
import pickle
import re
import secrets
import sys
import sysconfig
import threading
import time
import types
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, PENDING, RUNNING
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import payload as _payload
from .backends import Backend, Job, Output, backend_class, backend_keys, backend_names
from .bundle import (
    EXIT_ENV_FAILED,
    EXIT_SETUP_FAILED,
    EXIT_WALLTIME,
    BundleSpec,
    bundle_parts,
    parse_output,
)
from .config import DEFAULT_PAYLOAD_LIMIT, Endpoint, resolve_endpoint
from .environment import env_spec
from .errors import BackendError, HogError, RemoteProcessError, WalltimeExceeded
from .script import ScriptMetadata, load_script
from .store import DEFAULT_PROXY_THRESHOLD

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .store import ClientStore

__all__ = ["HogExecutor", "HogFuture"]

T = TypeVar("T")

#: Lines of stderr quoted in process errors.
STDERR_TAIL_LINES = 25
#: Chunks per worker that ``map`` aims for when ``chunksize`` is None.
CHUNKS_PER_WORKER = 2


class HogFuture(Future[T]):
    """A ``concurrent.futures.Future`` for one remote call.

    Attributes:
        task_id: the backend's id of the task running this call (set at submission).
        stdout: what the remote process printed (set when done; shared by a map chunk).
        stderr: what the remote process wrote to stderr (set when done).
    """

    def __init__(self) -> None:
        super().__init__()
        self.task_id: str | None = None
        self.stdout: str | None = None
        self.stderr: str | None = None
        self._job: _JobRecord | None = None

    def cancel(self) -> bool:
        """Cancel the call if it has not started; a task none of whose calls remain is stopped."""
        with self._condition:
            if self._state != PENDING:
                return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)
        if not super().cancel():
            return False
        try:
            self.set_running_or_notify_cancel()  # wake as_completed()/wait() at once
        except RuntimeError:  # notified concurrently
            pass
        if self._job is not None:
            self._job.call_cancelled()
        return True

    def _force_cancel(self) -> None:
        with self._condition:
            if self._state not in (PENDING, RUNNING):
                return
            self._state = CANCELLED
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]
        self.set_running_or_notify_cancel()


class _JobRecord:
    """Ties one backend job to the futures of the calls it carries."""

    def __init__(self, executor: _Shared, job: Job, futures: list[HogFuture[Any]], marker: str,
                 module: types.ModuleType | None, walltime: float | None, what: str,
                 store: ClientStore | None = None, keep_stored: bool = False) -> None:
        self.shared = executor
        self.store = store
        self.keep_stored = keep_stored
        self.job = job
        self.futures = futures
        self.marker = marker
        self.module = module
        self.walltime = walltime
        self.what = what
        self.cancel_requested = False

    def started(self) -> None:
        for f in self.futures:
            if not f.done():
                try:
                    f.set_running_or_notify_cancel()
                except RuntimeError:
                    pass

    def task_id_assigned(self, task_id: str) -> None:
        for f in self.futures:
            f.task_id = task_id

    def call_cancelled(self) -> None:
        if all(f.cancelled() for f in self.futures):
            self.cancel_requested = True
            self.shared.backend.cancel(self.job)

    def finished(self, fut: Future[Output]) -> None:
        """Resolve every call of the job (a done-callback: it must never leave one pending)."""
        try:
            self._finished(fut)
        except BaseException as exc:
            err = BackendError(
                f"task {self.job.id} ({self.what}): its output could not be decoded: "
                f"{type(exc).__name__}: {exc}")
            err.__cause__ = exc
            for f in self.futures:
                _set(f, exception=err)

    def _finished(self, fut: Future[Output]) -> None:
        self.shared.forget(self)
        if self.cancel_requested or fut.cancelled():
            for f in self.futures:
                f._force_cancel()
            return
        exc = fut.exception()
        if exc is not None:
            err = exc if isinstance(exc, HogError) else BackendError(
                f"task {self.job.id} ({self.what}): {type(exc).__name__}: {exc}")
            for f in self.futures:
                _set(f, exception=err)
            return
        self.deliver(fut.result())

    def deliver(self, output: Output) -> None:
        frame = parse_output(output.stdout, self.marker)
        stderr = output.stderr.decode("utf-8", "replace")
        for f in self.futures:
            f.stdout, f.stderr = frame.stdout, stderr
        if frame.outcomes is None:
            err = self.process_error(output, frame.stdout, stderr)
            for f in self.futures:
                _set(f, exception=err)
            return
        raw = pickle.loads(frame.outcomes)
        for f, item in zip(self.futures, raw, strict=False):
            if f.done():
                continue
            outcome = _payload.decode_outcome(item, self.module, self.store, self.keep_stored)
            if outcome.ok:
                _set(f, result=outcome.value)
            else:
                _set(f, exception=outcome.error)
        if len(raw) < len(self.futures):
            missing = BackendError(
                f"task {self.job.id} ({self.what}) returned {len(raw)} results for "
                f"{len(self.futures)} calls")
            for f in self.futures[len(raw):]:
                _set(f, exception=missing)

    def process_error(self, output: Output, stdout: str, stderr: str) -> RemoteProcessError:
        rc = output.returncode
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        tail = "\n".join(lines[-STDERR_TAIL_LINES:])
        where = f"task {self.job.id} ({self.what})"
        logs = f"; logs: {', '.join(output.log_paths)}" if output.log_paths else ""
        common: dict[str, Any] = dict(
            returncode=rc, stderr_tail=tail, state=output.state, stdout=stdout, stderr=stderr
        )
        if rc == EXIT_WALLTIME or output.state == "TIMEOUT":
            return WalltimeExceeded(
                f"{where} exceeded its walltime"
                + (f" of {self.walltime:g} s" if self.walltime else "")
                + f" and was killed{logs}",
                walltime=self.walltime, **common,
            )
        if output.state and output.state not in ("COMPLETED",):
            reason = f"ended in state {output.state} (exit status {rc})"
        elif rc == EXIT_ENV_FAILED:
            reason = "could not build its environment"
        elif rc == EXIT_SETUP_FAILED:
            reason = "failed before running the call"
        elif rc < 0 or 128 < rc < 160:  # a signal, as the process or as a shell reports it
            signum = -rc if rc < 0 else rc - 128
            try:
                import signal

                name = signal.Signals(signum).name
            except ValueError:
                name = f"signal {signum}"
            hint = " (out of memory?)" if signum == 9 else ""
            reason = f"was killed by {name}{hint} (exit status {rc})"
        elif rc == 0:
            reason = "exited without a result (did the function call sys.exit() or os._exit()?)"
        else:
            reason = (f"exited with status {rc} without a result (sys.exit({rc}), os._exit() or "
                      "a crash in the process)")
        return RemoteProcessError(f"{where} {reason}{logs}", **common)


def _set(f: HogFuture[Any], *, result: Any = None, exception: BaseException | None = None) -> None:
    """Resolve ``f`` unless it is already done (cancelled calls of a chunk)."""
    try:
        if f.done():
            return
        if f._state == PENDING:
            f.set_running_or_notify_cancel()
        if exception is not None:
            f.set_exception(exception)
        else:
            f.set_result(result)
    except Exception:  # cancelled or resolved concurrently
        pass


class _Shared:
    """What an executor and all of its ``options()`` views share."""

    def __init__(self, backend: Backend, store: Any = None, default_store: bool = False) -> None:
        self.backend = backend
        #: Guards ``jobs`` and the store; never held while calling into the backend.
        self.lock = threading.Lock()
        #: Orders submissions against shutdown; held across ``backend.submit`` (whose jobs
        #: may finish, and take ``lock``, before it returns).
        self.submit_lock = threading.RLock()
        self.shutdown = False
        self.jobs: set[_JobRecord] = set()
        self.by_value: set[str] = set()
        self.store_setting = store
        self.default_store = default_store
        self.no_default_store = False
        self._store: ClientStore | None = None

    def client_store(self, create: bool = True) -> ClientStore | None:
        """The executor's store (None: there is none).

        A configured store is built on first use. The local endpoint's default private
        store is built only when ``create`` is set (something is large enough to need it),
        and only if proxystore is installed.

        Raises:
            ConfigError: a store is configured but proxystore (or redis) is not installed.
        """
        if self._store is not None or (self.store_setting is None and not self.default_store):
            return self._store
        if self.store_setting is None and (not create or self.no_default_store):
            return None
        with self.lock:
            if self._store is None:
                from . import store as _store

                try:
                    if self.store_setting is not None:
                        self._store = _store.ClientStore(_store.open_store(self.store_setting),
                                                         explicit=True)
                    else:
                        self._store = _store.private_file_store()
                except ImportError as exc:
                    if self.store_setting is None:  # no proxystore: no default store
                        self.no_default_store = True
                        return None
                    from .errors import ConfigError

                    raise ConfigError(
                        f"store= needs proxystore on the client ({exc}); install "
                        "hog-executor[proxystore]"
                    ) from exc
                # Closed when the executor is collected, or at exit once its calls are done.
                weakref.finalize(self, self._store.close).atexit = False
                _with_stores.add(self)
        return self._store

    def close_store(self) -> None:
        if self._store is not None:
            self._store.close()

    def forget(self, record: _JobRecord) -> None:
        with self.lock:
            self.jobs.discard(record)


#: Executors' shared state holding a store, closed at exit by `_close_stores_at_exit`.
_with_stores: weakref.WeakSet[_Shared] = weakref.WeakSet()


@atexit.register
def _close_stores_at_exit() -> None:  # pragma: no cover - runs at interpreter exit
    # Registered when this module loads; a backend that runs its queue to the end at exit
    # is drained here first, whatever order the other exit handlers run in.
    for shared in list(_with_stores):
        try:
            if shared.backend.drains_at_exit:
                shared.backend.shutdown(wait=True)
        except Exception:
            pass
        shared.close_store()


@dataclass(frozen=True)
class _Context:
    """What all calls of one function through one executor view share."""

    script: str | None
    meta: ScriptMetadata
    module: types.ModuleType | None
    fn_bytes: bytes
    spec: BundleSpec
    parts: tuple[str, str]
    limit: int
    what: str
    values: dict[str, Any]
    chunk_limit: int


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
_installed_roots = tuple(
    {os.path.realpath(p) for k in ("stdlib", "platstdlib", "purelib", "platlib")
     if (p := sysconfig.get_paths().get(k))}
)


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
        meta = self._endpoint_script()
        if max_workers is not None:
            config["max_workers"] = max_workers
        self._endpoint: Endpoint = resolve_endpoint(
            endpoint,
            script_tables=meta.tool_hog if meta else None,
            script_source=str(meta.path) if meta else "script",
            kwargs=config,
            backend_keys=backend_keys,
            builtin_backends=backend_names,
        )
        backend = backend_class(self._endpoint.backend)(self._endpoint)
        self._shared = _Shared(backend, store=self._endpoint.values.get("store"),
                               default_store=self._endpoint.backend == "local")
        self._contexts: dict[tuple[Any, ...], _Context] = {}

    # -- configuration ----------------------------------------------------------------------

    def _endpoint_script(self) -> ScriptMetadata | None:
        if self._script is not None:
            return load_script(self._script)
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        if main and main.endswith(".py") and os.path.isfile(main):
            meta = load_script(main)
            if meta.has_block:
                return meta
        return None

    @property
    def endpoint(self) -> Endpoint:
        """The resolved endpoint: backend, values and where each value came from."""
        return self._endpoint

    @property
    def backend(self) -> Backend:
        """The backend running this executor's calls."""
        return self._shared.backend

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
        view._shared = self._shared
        view._contexts = {}
        return view

    def _script_for(self, fn: Any) -> str | None:
        if self._script is not None:
            return self._script
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        path = getattr(module, "__file__", None)
        if path and path.endswith(".py") and os.path.isfile(path) and load_script(path).has_block:
            return str(Path(path).resolve())
        meta = self._endpoint_script()
        return str(meta.path) if meta is not None and meta.path else None

    def _context(self, fn: Any, extras: tuple[str, ...] = ()) -> _Context:
        script = self._script_for(fn)
        meta = load_script(script) if script else ScriptMetadata()
        values = self._endpoint.values
        try:
            key: tuple[Any, ...] | None = (fn, script, extras)
            ctx = self._contexts.get(key)  # type: ignore[arg-type]
        except TypeError:  # an unhashable callable
            key, ctx = None, None
        if ctx is not None and ctx.meta is meta:
            if self._by_reference(fn, ctx.module):
                return ctx
            # Pickled by value (a bound method, a callable object, a closure, a function of
            # a module shipped by value): what it captures may have changed since.
            return dataclasses.replace(ctx, fn_bytes=_payload.dumps_function(fn, ctx.module))
        module = _payload.client_module_for(script, fn)
        self._pickle_by_value_if_local(fn, module)
        env = env_spec(meta, requires_python=values.get("requires_python"),
                       extra_dependencies=values.get("dependencies", ()),
                       runtime_packages=extras)
        name = _SAFE_NAME.sub("_", os.path.basename(script)) if script else None
        if name is not None and (name.startswith(".") or not name.endswith(".py")):
            name = f"script_{name.lstrip('.')}.py"
        what = f"{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        if script:
            what = f"{os.path.basename(script)}:{what}"
        spec = BundleSpec(
            env=env,
            script_name=name,
            script_source=meta.source,
            walltime=values.get("walltime"),
            env_vars=values.get("env", {}),
            worker_init=values.get("worker_init", ""),
            cache_dir=values.get("cache_dir"),
            description=what,
        )
        parts = bundle_parts(spec)
        limit = values.get("payload_limit", DEFAULT_PAYLOAD_LIMIT)
        own = self._shared.backend.payload_limit(*parts)
        ctx = _Context(script, meta, module, _payload.dumps_function(fn, module), spec,
                       parts, limit, what, values, limit if own is None else min(limit, own))
        if key is not None:
            if len(self._contexts) > 256:
                self._contexts.clear()
            self._contexts[key] = ctx
        return ctx

    def _by_reference(self, fn: Any, module: types.ModuleType | None) -> bool:
        """Whether ``fn`` pickles as a name only, so that its cached pickle stays right."""
        if not isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, type)):
            return False
        qualname = getattr(fn, "__qualname__", "")
        if "<" in qualname:  # a lambda or a function defined inside another
            return False
        name = getattr(fn, "__module__", None)
        if module is not None and name == module.__name__:
            return True  # the script's own functions travel as __hog_script__.<name>
        return name not in (None, "__main__") and name not in self._shared.by_value

    def _pickle_by_value_if_local(self, fn: Any, module: types.ModuleType | None) -> None:
        """Functions from user files that the remote side cannot import travel by value."""
        fn_module = sys.modules.get(getattr(fn, "__module__", None) or "")
        name = getattr(fn_module, "__name__", None)
        path = getattr(fn_module, "__file__", None)
        if (fn_module is None or fn_module is module or name in ("__main__", None) or not path
                or name in self._shared.by_value or name == "hog_executor"
                or name.startswith("hog_executor.")):
            return
        real = os.path.realpath(path)
        if any(real.startswith(root + os.sep) for root in _installed_roots):
            return
        import cloudpickle

        cloudpickle.register_pickle_by_value(fn_module)
        self._shared.by_value.add(name)

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
            chunksize: int | None = None, progress: bool | None = None) -> Iterator[T]:
        """Like ``concurrent.futures.Executor.map``; calls are packed into chunks.

        Each chunk runs in one remote process. With ``chunksize=None`` the chunk size keeps
        every worker busy (about two chunks per worker) while amortizing start-up. Results
        come in order; the first failing call raises when its result is reached; ``timeout``
        counts from this call and raises ``TimeoutError``. ``progress=True`` shows a live
        progress bar (plain log lines when not on a terminal); None shows it under ``hog run``.

        Raises:
            SerializationError, PayloadTooLargeError: before anything runs.
        """
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        deadline = None if timeout is None else time.monotonic() + timeout
        calls: list[tuple[Sequence[Any], dict[str, Any]]] = [
            (item, {}) for item in zip(*iterables, strict=False)
        ]
        futures = self._submit_calls(fn, calls, chunksize=chunksize)

        def results() -> Iterator[T]:
            pending = list(reversed(futures))
            try:
                while pending:
                    f = pending[-1]
                    if deadline is None:
                        value = f.result()
                    else:
                        value = f.result(max(0.0, deadline - time.monotonic()))
                    pending.pop()
                    yield value
            finally:
                for f in pending:
                    f.cancel()

        if progress is not False:
            from .progress import track_map

            return track_map(list(futures), progress, fn, results())
        return results()

    def _chunk_size(self, n: int) -> int:
        workers = max(1, self._shared.backend.workers)
        return max(1, math.ceil(n / (workers * CHUNKS_PER_WORKER)))

    def _submit_calls(self, fn: Callable[..., Any],
                      calls: Sequence[tuple[Sequence[Any], dict[str, Any]]],
                      chunksize: int | None, *, keep_stored: bool = False,
                      packages: tuple[str, ...] = ()) -> list[HogFuture[Any]]:
        """Serialize, chunk and submit calls of ``fn``.

        ``keep_stored``: results the runner put into the store resolve to `StoredRef` handles
        instead of values (graph intermediates). ``packages``: requirements the remote
        environment needs for these calls (dask for graph tasks).
        """
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        if self._shared.shutdown:
            raise RuntimeError("cannot schedule new calls after shutdown")
        if not calls:
            return []
        shared = self._shared
        # The local endpoint's default store is created only once something needs it.
        store = shared.client_store(create=keep_stored)
        can_store = store is not None or (shared.default_store and not shared.no_default_store)
        threshold = self._endpoint.values.get("proxy_threshold", DEFAULT_PROXY_THRESHOLD)
        ctx = self._context(fn)
        call_refs: list[list[Any]] = []
        items = []
        try:
            for args, kwargs in calls:
                refs: list[Any] = []
                call_refs.append(refs)
                offload = _offloader(shared, refs) if can_store else None
                items.append(_payload.dumps_call(args, kwargs, ctx.module, offload, threshold))
            proxied = any(call_refs)
            store = shared.client_store(create=False)
            extras = packages
            if store is not None and (store.explicit or proxied or keep_stored):
                extras = (*extras, *store.requirements)
            if extras:
                ctx = self._context(fn, tuple(dict.fromkeys(extras)))
            return self._submit_items(ctx, items, call_refs, chunksize, store, threshold,
                                      keep_stored, optional=not extras)
        except BaseException:
            if store is not None:
                for refs in call_refs:
                    for ref in refs:
                        store.evict(ref)
            raise

    def _submit_items(self, ctx: _Context, items: list[bytes], call_refs: list[list[Any]],
                      chunksize: int | None, store: ClientStore | None, threshold: int,
                      keep_stored: bool, optional: bool) -> list[HogFuture[Any]]:
        size = chunksize or self._chunk_size(len(items))
        header_size = 200 + len(ctx.fn_bytes)
        chunks: list[list[int]] = []
        current: list[int] = []
        current_bytes = header_size
        for i, item in enumerate(items):
            if current and (len(current) >= size
                            or current_bytes + len(item) + 16 > ctx.chunk_limit):
                chunks.append(current)
                current, current_bytes = [], header_size
            current.append(i)
            current_bytes += len(item) + 16
        chunks.append(current)
        futures: list[HogFuture[Any]] = [HogFuture() for _ in items]
        records = []
        store_config = store.config_bytes if store is not None else None
        for chunk in chunks:
            marker = secrets.token_hex(16)
            # The first call's arguments in a file store are read while the script imports
            # (the others one call at a time, as they are needed: memory stays bounded).
            prefetch = [path for ref in call_refs[chunk[0]]
                        if (path := ref.file_path) is not None]
            header = _payload_header(marker, ctx, len(chunk), store is not None and threshold,
                                     optional, prefetch)
            data = _payload.pack_payload(header, ctx.fn_bytes, [items[i] for i in chunk],
                                         ctx.limit, store_config, store is not None)
            job_id = uuid.uuid4().hex
            job = Job(id=job_id, head=ctx.parts[0], payload=data, tail=ctx.parts[1],
                      walltime=ctx.spec.walltime, config=ctx.values, description=ctx.what,
                      calls=len(chunk))
            chunk_futures = [futures[i] for i in chunk]
            record = _JobRecord(self._shared, job, chunk_futures, marker, ctx.module,
                                ctx.spec.walltime, ctx.what, store, keep_stored)
            job.on_start = record.started
            job.on_task_id = record.task_id_assigned
            for f in chunk_futures:
                f.task_id = job_id
                f._job = record
            records.append(record)
        with self._shared.submit_lock:
            if self._shared.shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            with self._shared.lock:
                self._shared.jobs.update(records)
            try:
                self._shared.backend.submit([r.job for r in records])
            except Exception:
                with self._shared.lock:
                    self._shared.jobs.difference_update(records)
                raise
        if store is not None:
            for f, refs in zip(futures, call_refs, strict=True):
                if refs:
                    f.add_done_callback(_evicter(store, refs))
        for record in records:
            record.job.future.add_done_callback(record.finished)
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
        store = self._shared.client_store()
        return store.store if store is not None else None

    def _register_functions(self, functions: Iterable[Any]) -> None:
        """Make functions from user modules the remote side cannot import travel by value."""
        module = _payload.client_module_for(self._script_for(self.__call__), self.__call__)
        for fn in functions:
            self._pickle_by_value_if_local(fn, module)

    # -- lifecycle --------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting calls; optionally cancel what has not finished.

        Args:
            wait: block until every submitted call has finished (or been cancelled).
            cancel_futures: cancel pending calls and stop running ones (their futures end
                cancelled; no process or job is left behind).
        """
        with self._shared.submit_lock, self._shared.lock:
            self._shared.shutdown = True
            records = list(self._shared.jobs)
        if cancel_futures:
            for record in records:
                record.cancel_requested = True
        self._shared.backend.shutdown(wait=wait, cancel=cancel_futures)
        if wait:
            for record in records:
                for f in record.futures:
                    try:
                        f.exception()
                    except BaseException:
                        pass
        if wait or cancel_futures:
            self._shared.close_store()

    def __repr__(self) -> str:
        state = "shut down" if self._shared.shutdown else "running"
        return f"<HogExecutor {self._endpoint.name!r} ({self._endpoint.backend}, {state})>"


def _payload_header(marker: str, ctx: _Context, count: int, threshold: int | bool,
                    optional: bool, prefetch: list[str] | None = None) -> bytes:
    import json

    header: dict[str, Any] = {
        "marker": marker,
        "script": ctx.spec.script_name,
        "by_value": ctx.script is not None and ctx.module is None,
        "count": count,
    }
    if threshold:
        header["threshold"] = int(threshold)
        header["store_optional"] = optional
    if prefetch:
        header["prefetch"] = prefetch
    return json.dumps(header).encode()


def _offloader(shared: _Shared, refs: list[Any]) -> Callable[[bytes, list[Any]], Any]:
    """Puts an argument's pickle and buffers into the store; remembers the handle for eviction."""

    def offload(data: bytes, buffers: list[Any]) -> Any:
        store = shared.client_store()
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

