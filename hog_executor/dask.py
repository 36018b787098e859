"""The Dask scheduler adapter: a `HogExecutor` is a Dask get function.

``dask.compute(x, scheduler=ex)``, ``x.compute(scheduler=ex)`` and
``dask.config.set(scheduler=ex)`` call `get` with the collection's graph. The graph is culled
to the requested keys and its linear chains are fused (a chain of any length is one remote
call); then tasks run as they become ready:

- trivial bookkeeping tasks (an ``Alias``, literal data, ``getitem`` and container building on
  values already on the client) run on the client: a remote call would cost a process start;
- every other ready task is submitted through the executor, and tasks that are ready at the
  same time are grouped into chunks like ``map`` (one process runs a chunk), one chunk per free
  worker: starting a call (Python, Dask, the script's imports) costs more than most tasks.
  While every worker is busy, newly ready tasks wait and then share a call;
- a result whose pickle is over ``proxy_threshold`` is put into the executor's store by the
  remote process and only a `StoredRef` handle comes back; downstream tasks receive the
  handle and resolve it remotely. Only the requested keys are fetched to the client.
  Intermediates are evicted as soon as their last dependent has finished, and whatever is
  left when the computation ends (or fails) is evicted then.

Callbacks (``dask.diagnostics.ProgressBar``, ``Profiler``, custom ``Callback``) see the state
dictionary of ``dask.local``, keyed by the fused graph. A failing task raises its original
exception on the client.

On a backend that queues dependencies itself (Slurm), without callbacks, the whole graph is
submitted at once instead (`queued`): the fused graph is cut into waves (a task's wave is one
more than the latest wave among its inputs), each wave is one submission (one job array on
Slurm) whose jobs wait in the queue for the jobs of the previous waves
(``--dependency=afterok`` on their arrays), and the client then waits once. Tasks get their
inputs from the files their upstream jobs wrote (see `hog_executor.dependencies`); every task
runs remotely, bookkeeping ones included.

Dask is imported only when a graph runs: ``import hog_executor`` stays cheap.
"""

from __future__ import annotations

import functools
import importlib
import operator
import queue
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any

__all__ = ["get", "persist", "queued", "run_node", "waves"]


def _dask(module: str) -> Any:
    """Import a part of Dask (lazily, and untyped: Dask's internals carry no annotations)."""
    return importlib.import_module(module)


def run_node(node: Any, data: dict[Any, Any]) -> Any:
    """Run one (possibly fused) graph node remotely; handles among its inputs are resolved."""
    from .store import StoredRef, fetch

    values = {k: fetch(v) if isinstance(v, StoredRef) else v for k, v in data.items()}
    return _resolve_embedded(node)(values)


def _resolve_embedded(node: Any) -> Any:
    """``node`` with handles embedded in it (persisted chunks inside fused tasks) resolved."""
    import copy

    spec = _dask("dask._task_spec")
    from .store import StoredRef, fetch

    def resolve(value: Any) -> tuple[Any, bool]:
        if isinstance(value, StoredRef):
            return fetch(value), True
        if isinstance(value, spec.DataNode):
            if isinstance(value.value, StoredRef):
                return spec.DataNode(value.key, fetch(value.value)), True
            return value, False
        if isinstance(value, spec.Task):
            args = [resolve(a) for a in value.args]
            kwargs = {k: resolve(v) for k, v in value.kwargs.items()}
            if not any(c for _, c in args) and not any(c for _, c in kwargs.values()):
                return value, False
            new = copy.copy(value)
            new.args = tuple(a for a, _ in args)
            new.kwargs = {k: v for k, (v, _) in kwargs.items()}
            new._token = None
            return new, True
        if type(value) is dict:  # a fused subgraph
            items = {k: resolve(v) for k, v in value.items()}
            if not any(c for _, c in items.values()):
                return value, False
            return {k: v for k, (v, _) in items.items()}, True
        return value, False

    return resolve(node)[0]


_CLIENT_FUNCTIONS: frozenset[Any] = frozenset(
    {operator.getitem, tuple, list, dict, set, frozenset}
)


def _trivial(node: Any) -> bool:
    """Whether evaluating ``node`` only moves existing values around (no real computation)."""
    from dask._task_spec import Alias, DataNode, GraphNode, NestedContainer, Task, TaskRef

    from .store import StoredRef

    if isinstance(node, DataNode):
        return not isinstance(node.value, StoredRef)
    if isinstance(node, (Alias, TaskRef)):
        return True
    if isinstance(node, NestedContainer):
        parts: Iterable[Any] = (*node.args, *node.kwargs.values())
    elif isinstance(node, Task) and not node.has_subgraph():
        try:
            if node.func not in _CLIENT_FUNCTIONS:
                return False
        except TypeError:  # unhashable callable
            return False
        parts = (*node.args, *node.kwargs.values())
    else:
        return False
    return all(_trivial(p) for p in parts if isinstance(p, GraphNode))


def _graph(dsk: Any) -> Any:
    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    return dsk


def _requested(keys: Any) -> set[Any]:
    return set(_dask("dask.core").flatten(keys)) if isinstance(keys, list) else {keys}


def get(executor: Any, dsk: Any, keys: Any, *, callbacks: Any = None,
        chunksize: int | None = None, keep_remote: bool = False, **kwargs: Any) -> Any:
    """Compute ``keys`` of the Dask graph ``dsk`` through ``executor``.

    Args:
        executor: the `HogExecutor` running the tasks.
        dsk: a graph (dict, ``HighLevelGraph``) or anything with ``__dask_graph__()``.
        keys: a key or a (nested) list of keys; lists come back as tuples, as in Dask.
        callbacks: Dask callbacks (besides the globally active ones).
        chunksize: tasks per remote call when many are ready at once (default: the ready
            tasks spread evenly over the free workers, one call each).
        keep_remote: leave requested results over ``proxy_threshold`` in the store and
            return their `StoredRef` handles (what `persist` uses).
        **kwargs: other scheduler options Dask passes (ignored).

    Raises:
        KeyError: a requested key is not in the graph.
        Exception: the original exception of the first task that failed.
    """
    spec = _dask("dask._task_spec")
    DataNode = spec.DataNode
    cbs = _dask("dask.callbacks")
    local_ = _dask("dask.local")
    order = _dask("dask.order").order

    from . import executor as internal
    from . import payload as _payload
    from .context import inferred_packages
    from .store import StoredRef

    wanted = _requested(keys)
    graph = spec.convert_legacy_graph(_graph(dsk))
    for key in wanted:
        if key not in graph:
            raise KeyError(key)
    graph = spec.cull(graph, list(wanted))
    # Handles already in the graph (persisted chunks) are inputs, never fused into a task.
    cache: dict[Any, Any] = {}
    for key, node in list(graph.items()):
        if isinstance(node, DataNode) and isinstance(node.value, StoredRef):
            cache[key] = node.value
            del graph[key]
    cached = bool(executor.endpoint.values.get("cache"))
    if not cached:  # with the result cache, each task keeps a key of its own: no fusing
        graph = spec.fuse_linear_task_spec(graph, wanted)
    store = internal.client_store(executor)
    # Without a PEP 723 block, the packages the graph refers to (numpy, ...) are installed.
    packages = (f"dask=={_dask('dask').__version__}",
                *inferred_packages(executor, run_node, graph.values(), what="a Dask graph"))
    module = _payload.client_module_for(internal.script_of(executor, run_node), run_node)
    content = _content_keys(executor, graph, cache, module) if cached else {}

    done: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
    inflight: dict[Any, Future[Any]] = {}
    holders: dict[str, int] = {}  # handle ident -> cache entries holding it (ours only)
    ours: set[str] = set()

    def hold(value: Any) -> None:
        if isinstance(value, StoredRef) and value.ident in ours:
            holders[value.ident] = holders.get(value.ident, 0) + 1

    def drop(value: Any) -> None:
        if isinstance(value, StoredRef) and value.ident in ours:
            holders[value.ident] -= 1
            if holders[value.ident] <= 0 and store is not None:
                store.evict(value)

    def release(key: Any, state: dict[str, Any], delete: bool = True) -> None:
        value = state["cache"].get(key)
        local_.release_data(key, state, delete=delete)
        drop(value)

    with cbs.local_callbacks(callbacks) as active:
        if not active and getattr(executor.backend, "queue_dependencies", False):
            values = queued(executor, graph, wanted, cache, chunksize=chunksize,
                            keep_remote=keep_remote, packages=packages, module=module)
            return local_.nested_get(keys, values)
        _, _, pretask_cbs, posttask_cbs, _ = cbs.unpack_callbacks(active)
        started: list[Any] = []
        state: dict[str, Any] = {}
        succeeded = False
        try:
            for cb in active:
                if cb[0]:
                    cb[0](graph)
                started.append(cb)
            keyorder = order(graph)
            state = local_.start_state_from_dask(graph, cache=cache, keys=wanted,
                                                 sortkey=keyorder.get)
            for cb in active:
                if cb[1]:
                    cb[1](graph, state)
            if state["waiting"] and not state["ready"]:
                raise ValueError("Found no accessible tasks in the graph")
            workers = max(1, executor.backend.workers)

            def fire() -> None:
                remote: list[tuple[Any, Any, dict[Any, Any]]] = []
                busy = len({getattr(f, "job_id", None) for f in inflight.values()})  # jobs
                ready = state["ready"]
                held: list[Any] = []
                while ready:
                    key = ready.pop()
                    node = graph[key]
                    data = {dep: state["cache"][dep] for dep in state["dependencies"][key]}
                    local = _trivial(node) and not any(
                        isinstance(v, StoredRef) for v in data.values())
                    if not local and busy >= workers:
                        held.append(key)  # wait: more tasks become ready and share a call
                        continue
                    state["running"].add(key)
                    for f in pretask_cbs:
                        f(key, graph, state)
                    if local:
                        try:
                            done.put((key, (True, node(data), "client")))
                        except Exception as exc:
                            done.put((key, (False, exc, "client")))
                    else:
                        remote.append((key, node, data))
                ready.extend(reversed(held))
                if not remote:
                    return
                # One call per free worker: a call's start-up (Python, Dask, the script's
                # imports) is the dominant cost of small tasks.
                size = chunksize or -(-len(remote) // max(1, workers - busy))
                calls: list[tuple[Any, dict[str, Any]]] = [
                    ((node, data), {}) for _, node, data in remote]
                if cached:
                    from .cache import explicit_keys

                    with explicit_keys([content.get(key) for key, _, _ in remote]):
                        futures = internal.submit_calls(executor, run_node, calls, size,
                                                        keep_stored=True, packages=packages)
                else:
                    futures = internal.submit_calls(executor, run_node, calls, size,
                                                    keep_stored=True, packages=packages)
                for (key, _, _), fut in zip(remote, futures, strict=True):
                    inflight[key] = fut
                    fut.add_done_callback(functools.partial(_report, done, key))

            while state["waiting"] or state["ready"] or state["running"]:
                fire()
                key, (ok, value, worker) = done.get()
                inflight.pop(key, None)
                if not ok:
                    raise value
                if isinstance(value, StoredRef) and worker != "client":
                    ours.add(value.ident)
                state["cache"][key] = value
                hold(value)
                local_.finish_task(graph, key, state, wanted, keyorder.get, release_data=release)
                for f in posttask_cbs:
                    f(key, value, graph, state, worker)
            values = {}
            for key in wanted:
                value = state["cache"][key]
                if isinstance(value, StoredRef) and not keep_remote:
                    assert store is not None
                    value = _payload.loads(store.get(value), module)
                values[key] = value
            succeeded = True
        finally:
            for fut in inflight.values():
                fut.cancel()
                fut.add_done_callback(functools.partial(_evict_result, store))
            if store is not None:
                for key, value in list(state.get("cache", {}).items()):
                    if not isinstance(value, StoredRef) or value.ident not in ours:
                        continue
                    if succeeded and keep_remote and key in wanted:
                        continue
                    store.evict(value)
            for cb in started:
                if cb[4]:
                    cb[4](graph, state, not succeeded)
    return local_.nested_get(keys, values)


def _content_keys(executor: Any, graph: Mapping[Any, Any], inputs: Mapping[Any, Any],
                  module: Any) -> dict[Any, str | None]:
    """Each task's content key for the result cache: its functions by value (as
    `hog_executor.cache.function_key` sees them), its literal arguments, and the content
    keys of the tasks it depends on, never Dask's key names (random for ``delayed``). So a
    task's key changes when its code or an upstream task's changes, and only then."""
    from dask._task_spec import Alias, DataNode, Task, TaskRef

    from .cache import Unkeyable, value_digest
    from .store import StoredRef

    forced = frozenset({"__main__",
                        *((module.__name__,) if module is not None else ())})
    keys: dict[Any, str | None] = {
        k: value_digest(("stored", v.ident)) for k, v in inputs.items()}

    class _Missing(Exception):
        pass

    def plain(v: Any) -> Any:
        if isinstance(v, TaskRef):
            found = keys.get(v.key)
            if found is None:
                raise _Missing
            return ("ref", found)
        if isinstance(v, Alias):
            found = keys.get(v.target)
            if found is None:
                raise _Missing
            return ("ref", found)
        if isinstance(v, DataNode):
            return ("data", plain(v.value))
        if isinstance(v, Task):
            return ("task", v.func, tuple(plain(a) for a in v.args),
                    tuple(sorted((k, plain(x)) for k, x in v.kwargs.items())))
        if isinstance(v, StoredRef):
            return ("stored", v.ident)
        if type(v) in (list, tuple):
            return type(v)(plain(x) for x in v)
        if type(v) is dict:
            return {k: plain(x) for k, x in v.items()}
        return v

    pending = list(graph)
    while pending:
        key = pending[-1]
        if key in keys:
            pending.pop()
            continue
        node = graph[key]
        todo = [d for d in node.dependencies if d not in keys and d in graph]
        if todo:
            pending.extend(todo)
            continue
        pending.pop()
        try:
            keys[key] = value_digest(plain(node), forced)
        except (_Missing, Unkeyable):
            keys[key] = None
    return keys

def waves(graph: Mapping[Any, Any]) -> list[list[Any]]:
    """The keys of ``graph`` by wave: a task's wave is one more than the latest wave of its
    inputs in the graph (0: no input in it), in the order of the graph within a wave."""
    level: dict[Any, int] = {}
    for start in graph:
        if start in level:
            continue
        stack: list[tuple[Any, bool]] = [(start, False)]
        while stack:
            key, expanded = stack.pop()
            if key in level:
                continue
            deps = [d for d in graph[key].dependencies if d in graph]
            if expanded:
                level[key] = 1 + max((level[d] for d in deps), default=-1)
                continue
            stack.append((key, True))
            stack.extend((d, False) for d in deps if d not in level)
    out: list[list[Any]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for key in graph:
        out[level[key]].append(key)
    return out


def queued(executor: Any, graph: Mapping[Any, Any], wanted: set[Any], cache: dict[Any, Any],
           *, chunksize: int | None, keep_remote: bool, packages: tuple[str, ...],
           module: Any) -> dict[Any, Any]:
    """Run a culled, fused graph by submitting every wave at once (see the module's
    docstring); return the values of the ``wanted`` keys.

    Raises:
        Exception: the original exception of the first task that failed.
    """
    import concurrent.futures as cf

    from . import executor as internal
    from . import payload as _payload
    from .errors import DependencyError
    from .store import StoredRef

    store = internal.client_store(executor)
    workers = max(1, executor.backend.workers)
    futures: dict[Any, Any] = {}
    succeeded = False
    try:
        for wave in waves(graph):
            calls: list[tuple[tuple[Any, dict[Any, Any]], dict[str, Any]]] = []
            for key in wave:
                data = {dep: futures[dep] if dep in futures else cache[dep]
                        for dep in graph[key].dependencies}
                calls.append(((graph[key], data), {}))
            size = chunksize or -(-len(calls) // workers)
            submitted = internal.submit_calls(executor, run_node, calls, chunksize=size,
                                              keep_stored=True, packages=packages)
            futures.update(zip(wave, submitted, strict=True))
        waiting = [futures[k] for k in wanted]
        cf.wait(waiting, return_when=cf.FIRST_EXCEPTION)
        failed = [f for f in futures.values() if f.done() and not f.cancelled()
                  and f.exception() is not None]
        if failed:
            exc = next((f.exception() for f in failed
                        if not isinstance(f.exception(), DependencyError)), failed[0].exception())
            if isinstance(exc, DependencyError) and exc.__cause__ is not None:
                exc = exc.__cause__  # the original exception of the task that failed
            raise exc
        values = {}
        for key in wanted:
            value = futures[key].result()
            if isinstance(value, StoredRef) and not keep_remote:
                assert store is not None
                value = _payload.loads(store.get(value), module)
            values[key] = value
        succeeded = True
        return values
    finally:
        for key, fut in futures.items():
            if not fut.done():
                fut.cancel()
            if succeeded and keep_remote and key in wanted:
                continue
            fut.add_done_callback(functools.partial(_evict_result, store))


def _is_hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def _report(done: queue.SimpleQueue[tuple[Any, Any]], key: Any, fut: Future[Any]) -> None:
    """Queue a remote task's outcome for the scheduling loop."""
    worker = getattr(fut, "job_id", None)  # the job that ran the task, as dask's worker
    if fut.cancelled():
        done.put((key, (False, RuntimeError(f"task {key!r} was cancelled"), worker)))
        return
    exc = fut.exception()
    if exc is not None:
        done.put((key, (False, exc, worker)))
    else:
        done.put((key, (True, fut.result(), worker)))


def _evict_result(store: Any, fut: Future[Any]) -> None:
    from .store import StoredRef

    if store is None or fut.cancelled() or fut.exception() is not None:
        return
    value = fut.result()
    if isinstance(value, StoredRef):
        store.evict(value)


def persist(executor: Any, *collections: Any, **kwargs: Any) -> Any:
    """``dask.persist`` through ``executor``; chunks over ``proxy_threshold`` stay remote.

    The persisted collections hold `StoredRef` handles for those chunks; computing them
    again with ``scheduler=executor`` resolves the handles remotely. They stay in the store
    until the executor shuts down. Returns one collection when given one, else a tuple.
    """
    scheduler = functools.partial(get, executor, keep_remote=True)
    result = _dask("dask").persist(*collections, scheduler=scheduler, **kwargs)
    return result[0] if len(collections) == 1 else result
