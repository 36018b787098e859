"""``hog bundle``: the exact bash bundle a call would send, captured before any backend runs it."""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Sequence
from typing import Any

from .common import CliError, literal

__all__ = ["PRINT_LINE", "call_args", "find_function", "render_bundle_for", "split_target",
           "with_print_line"]

#: The line ``hog bundle`` adds (unless --raw) so that ``bash bundle.sh`` prints results.
PRINT_LINE = "export HOG_PRINT_RESULT=1  # print the result readably (hog bundle; --raw omits)\n"


def split_target(target: str) -> tuple[str, str]:
    """``script.py:func`` -> (``script.py``, ``func``).

    Raises:
        CliError: there is no ``:`` or one side is empty.
    """
    path, sep, name = target.rpartition(":")
    if not sep or not path or not name:
        raise CliError(f"expected SCRIPT.py:FUNCTION, got {target!r} (e.g. analysis.py:square)")
    return path, name


def find_function(module: types.ModuleType, qualname: str) -> Any:
    """The callable ``qualname`` (``f`` or ``Class.method``) of ``module``.

    Raises:
        CliError: not found (the message lists the module's functions) or not callable.
    """
    obj: Any = module
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            known = sorted(n for n, v in vars(module).items()
                           if callable(v) and getattr(v, "__module__", None) == module.__name__)
            raise CliError(
                f"{module.__file__} has no function {qualname!r}; its functions: "
                f"{', '.join(known) or 'none'}"
            ) from None
    if not callable(obj):
        raise CliError(f"{qualname!r} in {module.__file__} is not callable")
    return obj


def call_args(fn: Callable[..., Any], items: Sequence[str]) -> tuple[list[Any], dict[str, Any]]:
    """Command-line words as call arguments: Python literals (else text); ``NAME=VALUE`` is a
    keyword argument when NAME is a parameter of ``fn``.

    Raises:
        CliError: a positional argument follows a keyword argument.
    """
    try:
        params = set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = set()
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if sep and key in params:
            kwargs[key] = literal(raw)
        elif kwargs:
            raise CliError(f"positional argument {item!r} after keyword arguments")
        else:
            args.append(literal(item))
    return args, kwargs


def render_bundle_for(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], *,
                      endpoint: str, script: str | None, config: dict[str, Any]) -> str:
    """The exact bash bundle ``HogExecutor(endpoint, script=script, **config)`` would send
    for ``fn(*args, **kwargs)``. Nothing runs: the submission is captured before the backend.

    Raises:
        ConfigError, SerializationError, PayloadTooLargeError: as a real submission would.
    """
    from ..backends.capture import CapturingBackend
    from ..executor import HogExecutor, swap_backend

    ex = HogExecutor(endpoint, script=script, **config)
    capture = CapturingBackend(ex.backend.workers)
    real = swap_backend(ex, capture)
    try:
        ex.submit(fn, *args, **kwargs)
        (job,) = capture.jobs
        return job.bundle
    finally:
        ex.shutdown(wait=True, cancel_futures=True, terminate=True)
        real.shutdown(wait=True)


def with_print_line(bundle: str) -> str:
    """``bundle`` with `PRINT_LINE` after its leading comment lines."""
    lines = bundle.splitlines(keepends=True)
    cut = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return "".join(lines[:cut]) + PRINT_LINE + "".join(lines[cut:])
