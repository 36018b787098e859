"""``hog run``'s machinery: import a script as a module, choose a harness, parse its arguments."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .common import CliError, literal

__all__ = ["call_harness", "choose_harness", "harness_parser", "import_script"]


def import_script(path: str | os.PathLike[str], argv: Sequence[str] = (), *,
                  as_main: bool = False) -> types.ModuleType:
    """Import the script at ``path`` as a module (its ``__main__`` guard does not run).

    The module is named after the file when that name is free, and registered in
    ``sys.modules`` so that its functions and classes pickle by reference. The script's
    directory goes first on ``sys.path`` and ``sys.argv`` becomes ``[path, *argv]``, as for
    ``python script.py``. With ``as_main``, the module also stands in ``sys.modules`` as
    ``__main__`` (so that a ``HogExecutor`` made without ``script=`` finds the script's
    endpoint tables, as it does under ``python script.py``); the caller restores it.

    Raises:
        CliError: the file does not exist or is not a Python file.
    """
    p = Path(path).resolve()
    if not p.is_file():
        raise CliError(f"no such script: {path}")
    stem = p.stem
    free = stem not in sys.modules and stem not in getattr(sys, "stdlib_module_names", ())
    name = stem if stem.isidentifier() and free else "__hog_run__"
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot import {path}: not a Python file (name it *.py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if str(p.parent) not in sys.path:
        sys.path.insert(0, str(p.parent))
    sys.argv = [str(p), *argv]
    if as_main:
        sys.modules["__main__"] = module
    spec.loader.exec_module(module)
    return module


def choose_harness(found: dict[str, Any], script: str, words: Sequence[str],
                   separated: bool) -> tuple[str, list[str]]:
    """Pick the harness ``hog run`` calls; return its name and the words left for it.

    ``words`` are what came after the script (before ``--`` when ``separated``). The first
    word names the harness when it is one; otherwise the only harness, or ``main``, is
    chosen and, without ``--``, the words are its arguments.

    Raises:
        CliError: no harness, an unknown name before ``--``, or several without ``main``.
    """
    words = list(words)
    if words and words[0] in found:
        return words[0], words[1:]
    if words and separated:
        raise CliError(f"{script} has no harness {words[0]!r}; its harnesses: "
                       f"{', '.join(found) or 'none'}")
    if not found:
        raise CliError(f"{script} has no harness: mark an entry point with @hog.harness() "
                       "(import hog_executor as hog)")
    if len(found) == 1:
        return next(iter(found)), words
    if "main" in found:
        return "main", words
    raise CliError(f"{script} has several harnesses ({', '.join(found)}): name one, e.g. "
                   f"hog run {script} {next(iter(found))}")


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(fn)
    except Exception:
        return dict(getattr(fn, "__annotations__", {}))


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(element type, is a list) for a hint: ``X | None`` -> X, ``list[X]`` -> (X, True)."""
    import typing

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (types.UnionType is not None and origin is types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _unwrap(rest[0])
        return str, False
    if origin in (list, tuple, set, frozenset, Sequence):
        inner = [a for a in args if a is not Ellipsis]
        return (inner[0] if inner else str), True
    return tp, False


def _converter(tp: Any) -> tuple[Callable[[str], Any], list[Any] | None]:
    import typing

    if typing.get_origin(tp) is typing.Literal:
        choices = list(typing.get_args(tp))
        kinds = {type(c) for c in choices}
        conv = kinds.pop() if len(kinds) == 1 else str
        return conv, choices
    if tp is bool:
        return _parse_bool, None
    if tp in (int, float, str, Path) or (isinstance(tp, type) and tp.__module__ == "pathlib"):
        return tp, None
    if tp is inspect.Parameter.empty or tp is Any:
        return str, None
    return literal, None


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def harness_parser(fn: Callable[..., Any], prog: str) -> argparse.ArgumentParser:
    """An argument parser built from ``fn``'s signature and type hints.

    Parameters without a default are positional; those with one are ``--options``
    (``--flag/--no-flag`` for booleans); ``list[X]`` takes several values.
    """
    doc = inspect.getdoc(fn) or None
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    hints = _hints(fn)
    for param in inspect.signature(fn).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            continue
        tp, many = _unwrap(hints.get(param.name, param.annotation))
        conv, choices = _converter(tp)
        flag = "--" + param.name.replace("_", "-")
        kw: dict[str, Any] = {"type": conv}
        if choices is not None:
            kw["choices"] = choices
        if param.kind is param.VAR_POSITIONAL:
            parser.add_argument(param.name, nargs="*", **kw)
        elif param.default is param.empty and param.kind is not param.KEYWORD_ONLY:
            parser.add_argument(param.name, nargs="+" if many else None, **kw)
        elif param.default is param.empty:
            parser.add_argument(flag, dest=param.name, required=True,
                                nargs="+" if many else None, **kw)
        elif tp is bool and not many:
            parser.add_argument(flag, dest=param.name, default=param.default,
                                action=argparse.BooleanOptionalAction,
                                help=f"(default: {param.default})")
        else:
            parser.add_argument(flag, dest=param.name, default=param.default,
                                nargs="*" if many else None,
                                help=f"(default: {param.default!r})", **kw)
    return parser


def call_harness(fn: Callable[..., Any], argv: Sequence[str], prog: str) -> Any:
    """Parse ``argv`` for ``fn`` (see `harness_parser`) and call it."""
    ns = vars(harness_parser(fn, prog).parse_args(list(argv)))
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.name not in ns:
            continue
        value = ns[param.name]
        if param.kind is param.VAR_POSITIONAL:
            args.extend(value)
        elif param.kind is param.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[param.name] = value
    return fn(*args, **kwargs)
