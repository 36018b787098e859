"""The decorator API: ``@hog.function`` and ``@hog.harness``.

``@hog.function(endpoint="anvil", **config)`` returns the function itself with four helpers
attached: ``f(x)`` still runs in this process, ``f.remote(x)`` runs it on the endpoint and
returns the value, ``f.submit(x)`` returns a future, ``f.local(x)`` runs it through the same
bundle in a local subprocess (a pre-flight check), and ``f.map(xs)`` maps it over iterables.
Because the decorated object *is* the function, it pickles by reference like any other
function of the script, and the remote side finds it in the script's module.

All decorated functions with the same endpoint, script and configuration share one
`HogExecutor`, created on first use and shut down at interpreter exit.

This module imports nothing beyond the standard library: it runs on the remote side too,
whenever the script is imported there.
"""

from __future__ import annotations

import _thread  # a lock without importing threading: this module is imported remotely too
import os
import sys

from .runner import REMOTE_CALL_ENV, SCRIPT_MODULE

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing at runtime would slow down every remote import
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any, Generic, ParamSpec, Protocol, TypeVar

    from .executor import HogExecutor, HogFuture

    P = ParamSpec("P")
    R = TypeVar("R")

    class HogFunction(Protocol, Generic[P, R]):
        """What ``@hog.function`` returns: the function, with remote helpers attached."""

        hog: FunctionSpec

        def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...
        def remote(self, *args: P.args, **kwargs: P.kwargs) -> R: ...
        def submit(self, *args: P.args, **kwargs: P.kwargs) -> HogFuture[R]: ...
        def local(self, *args: P.args, **kwargs: P.kwargs) -> R: ...
        def map(self, *iterables: Iterable[Any], timeout: float | None = None,
                chunksize: int | None = None, progress: bool | None = None) -> Iterator[R]: ...

__all__ = ["FunctionSpec", "function", "harness", "harnesses", "in_remote_call",
           "shutdown_executors"]

#: Keys of the function's configuration that also apply to ``.local()`` (the environment
#: and limits, not site specifics such as ``worker_init`` or scheduler keys).
LOCAL_KEYS = ("requires_python", "dependencies", "env", "walltime", "payload_limit")

_HARNESS_ATTR = "__hog_harness__"
_lock = _thread.allocate_lock()
_executors: dict[tuple[Any, ...], HogExecutor] = {}
_exit_hook = False


def in_remote_call() -> bool:
    """Whether this process is running a remote call (started by a bundle's runner)."""
    return bool(os.environ.get(REMOTE_CALL_ENV)) or SCRIPT_MODULE in sys.modules


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return (type(value).__qualname__, repr(value))
    return value


def _script_of(fn: Any) -> str | None:
    """The script whose endpoint tables and environment apply to ``fn`` (see `script_for`)."""
    from .context import script_for

    return script_for(fn)


def _shared_executor(endpoint: str, script: str | None, config: dict[str, Any]) -> HogExecutor:
    """The one executor for (endpoint, script, config), created on first use."""
    global _exit_hook
    key = (endpoint, script, _freeze(config))
    with _lock:
        ex = _executors.get(key)
        if ex is None:
            from .executor import HogExecutor

            ex = HogExecutor(endpoint, script=script, **config)
            _executors[key] = ex
            if not _exit_hook:
                import atexit

                atexit.register(shutdown_executors)
                _exit_hook = True
        return ex


def shutdown_executors(wait: bool = True, *, cancel_futures: bool = False,
                       terminate: bool = False) -> None:
    """Shut down every executor the decorated functions created (runs at interpreter exit).

    The arguments are `HogExecutor.shutdown`'s. Functions used after this create fresh
    executors.
    """
    with _lock:
        executors = list(_executors.values())
        _executors.clear()
    for ex in executors:
        try:
            ex.shutdown(wait=wait, cancel_futures=cancel_futures, terminate=terminate)
        except Exception as exc:  # pragma: no cover - best effort at exit
            print(f"hog-executor: shutting down {ex!r} failed: {exc}", file=sys.stderr)


class FunctionSpec:
    """Where and how a decorated function runs remotely (available as ``f.hog``).

    Attributes:
        fn: the decorated function.
        endpoint: the endpoint name.
        config: the keyword arguments given to the decorator (endpoint keys).
    """

    def __init__(self, fn: Callable[..., Any], endpoint: str, config: dict[str, Any]) -> None:
        self.fn = fn
        self.endpoint = endpoint
        self.config = config

    def __reduce__(self) -> tuple[Any, ...]:
        return (FunctionSpec, (self.fn, self.endpoint, self.config))

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return f"<hog function {name} @ {self.endpoint}>"

    def _check_not_remote(self, how: str) -> None:
        if in_remote_call():
            name = getattr(self.fn, "__qualname__", "function")
            raise RuntimeError(
                f"{name}.{how}() was called inside a remote call; nested remote calls from "
                f"decorated functions are refused (each would start another bundle). Call "
                f"{name}(...) directly to run it in this process, or create a HogExecutor "
                "explicitly if a remote call really must start others."
            )

    def executor(self) -> HogExecutor:
        """The shared executor behind ``.remote()``, ``.submit()`` and ``.map()``.

        Raises:
            ConfigError: the endpoint or a key is unknown, or a value is invalid.
            RuntimeError: called inside a remote call.
        """
        self._check_not_remote("executor")
        return _shared_executor(self.endpoint, _script_of(self.fn), self.config)

    def local_executor(self) -> HogExecutor:
        """The executor behind ``.local()``: this machine, with the function's environment.

        It uses the script and the environment keys (`LOCAL_KEYS`) of the function's endpoint,
        so the call runs through the same kind of bundle, in the same environment, as remotely.
        """
        self._check_not_remote("local")
        script = _script_of(self.fn)
        from .errors import ConfigError

        values: dict[str, Any] = {}
        try:
            values = dict(self._resolved_values(script))
        except ImportError:  # the endpoint's backend cannot load here: use what we have
            values = dict(self.config)
        except ConfigError as exc:  # a bad key or value fails here as it would remotely
            if not str(exc).startswith("no backend named"):
                raise
            values = dict(self.config)
        config = {k: values[k] for k in LOCAL_KEYS if k in values}
        return _shared_executor("local", script, config)

    def _resolved_values(self, script: str | None) -> dict[str, Any]:
        if self.endpoint == "local":
            return dict(self.config)
        from .backends import backend_keys, backend_names
        from .config import resolve_endpoint
        from .script import load_script

        meta = load_script(script) if script else None
        endpoint = resolve_endpoint(
            self.endpoint,
            script_tables=meta.tool_hog if meta else None,
            script_source=script or "script",
            kwargs=self.config,
            backend_keys=backend_keys,
            builtin_backends=backend_names,
        )
        return endpoint.values

    def submit(self, *args: Any, **kwargs: Any) -> HogFuture[Any]:
        """Start the call on the endpoint; return its `HogFuture`."""
        self._check_not_remote("submit")
        return self.executor().submit(self.fn, *args, **kwargs)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Run the call on the endpoint, wait, and return its value (or raise its exception).

        A status line per call (queued, running, done, with times) and the call's output go
        to the ``hog_executor`` logger.
        """
        self._check_not_remote("remote")
        from .progress import wait_with_status

        future = self.executor().submit(self.fn, *args, **kwargs)
        return wait_with_status(future, self._label(self.endpoint))

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Run the call through a bundle in a local subprocess and return its value."""
        self._check_not_remote("local")
        from .progress import wait_with_status

        future = self.local_executor().submit(self.fn, *args, **kwargs)
        return wait_with_status(future, self._label("local"))

    def map(self, *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | None = None, progress: bool | None = None) -> Iterator[Any]:
        """``HogExecutor.map`` of the function on its endpoint (results in order)."""
        self._check_not_remote("map")
        return self.executor().map(self.fn, *iterables, timeout=timeout, chunksize=chunksize,
                                   progress=progress)

    def _label(self, endpoint: str) -> str:
        return f"{getattr(self.fn, '__qualname__', 'function')} @ {endpoint}"


def function(endpoint: str = "local",
             **config: Any) -> Callable[[Callable[P, R]], HogFunction[P, R]]:
    """Mark a function as runnable on ``endpoint``.

    The function is returned unchanged (calling it still runs it here), with ``.remote()``,
    ``.submit()``, ``.local()``, ``.map()`` and ``.hog`` (its `FunctionSpec`) attached.
    Nothing is resolved or started until the first remote call.

    Args:
        endpoint: as for `HogExecutor`: ``"local"``, a ``[tool.hog.<name>]`` table, or a
            Globus Compute endpoint UUID.
        **config: endpoint keys, as `HogExecutor` keyword arguments.

    Raises:
        TypeError: used without parentheses or on something that is not a function.
    """
    if callable(endpoint):
        raise TypeError("use @hog.function() or @hog.function(\"<endpoint>\"), with parentheses")
    if not isinstance(endpoint, str) or not endpoint:
        raise TypeError(f"endpoint must be a non-empty string, got {endpoint!r}")

    def decorate(fn: Callable[P, R]) -> HogFunction[P, R]:
        if not callable(fn) or not hasattr(fn, "__dict__"):
            raise TypeError(f"@hog.function() needs a function, got {fn!r}")
        spec = FunctionSpec(fn, endpoint, dict(config))
        fn.hog = spec  # type: ignore[attr-defined]
        fn.remote = spec.remote  # type: ignore[attr-defined]
        fn.submit = spec.submit  # type: ignore[attr-defined]
        fn.local = spec.local  # type: ignore[attr-defined]
        fn.map = spec.map  # type: ignore[attr-defined]
        return fn  # type: ignore[return-value]

    return decorate


def harness() -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a function as an entry point of the script for ``hog run``.

    ``hog run script.py [name] [-- args]`` imports the script (its ``__main__`` guard stays
    unexecuted), parses the arguments from the harness's signature and type hints, calls it
    and prints what it returns.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        setattr(fn, _HARNESS_ATTR, True)
        return fn

    return decorate


def harnesses(module: Any) -> dict[str, Callable[..., Any]]:
    """The harnesses defined in ``module`` (by name, in definition order)."""
    return {
        name: obj for name, obj in vars(module).items()
        if callable(obj) and getattr(obj, _HARNESS_ATTR, False) is True
        and getattr(obj, "__module__", None) == module.__name__
    }
