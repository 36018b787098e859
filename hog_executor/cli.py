"""The ``hog`` command: run harnesses, write scripts, inspect bundles, endpoints and the cache.

Every subcommand is a function ``cmd_<name>(args) -> int``; `main` parses the command line
and turns `HogError` and `CliError` into one ``hog: error: ...`` line and exit status 1.
Nothing here ever prompts: every choice is a flag.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import HogError

__all__ = ["CliError", "cache_root", "import_script", "main", "render_bundle_for"]

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class CliError(Exception):
    """A usage problem; the message says what to do instead."""


# -- scripts ----------------------------------------------------------------------------------

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


def _split_target(target: str) -> tuple[str, str]:
    path, sep, name = target.rpartition(":")
    if not sep or not path or not name:
        raise CliError(f"expected SCRIPT.py:FUNCTION, got {target!r} (e.g. analysis.py:square)")
    return path, name


def _find(module: types.ModuleType, qualname: str) -> Any:
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


# -- harness arguments ------------------------------------------------------------------------

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
    return _literal, None


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _literal(text: str) -> Any:
    """A Python literal when ``text`` is one (``3``, ``[1, 2]``, ``'a'``), else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


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
        elif param.kind in (param.POSITIONAL_ONLY,):
            args.append(value)
        else:
            kwargs[param.name] = value
    return fn(*args, **kwargs)


# -- hog run ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _run_output(args: argparse.Namespace) -> Iterator[None]:
    """Status lines and progress on stderr while a harness runs (restored afterwards)."""
    import logging

    from . import progress

    logger = logging.getLogger("hog_executor")
    saved = (logger.level, logger.propagate, list(logger.handlers), progress._default_progress)
    if not logger.handlers:
        handler = progress.ConsoleHandler()
        handler.setFormatter(logging.Formatter("hog: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logger.setLevel(level)
    progress.set_default(args.progress if args.progress is not None else sys.stderr.isatty())
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]
        progress.set_default(saved[3])


def cmd_run(args: argparse.Namespace) -> int:
    rest = list(args.rest)
    harness_argv: list[str]
    if "--" in rest:
        cut = rest.index("--")
        before, harness_argv = rest[:cut], rest[cut + 1:]
    else:
        before, harness_argv = rest[:1], rest[1:]
    from .decorators import harnesses

    main_module = sys.modules.get("__main__")
    with _run_output(args):
        try:
            return _run_harness(args, rest, before, harness_argv, harnesses)
        finally:
            if main_module is not None:
                sys.modules["__main__"] = main_module


def _run_harness(args: argparse.Namespace, rest: list[str], before: list[str],
                 harness_argv: list[str], harnesses: Callable[[Any], dict[str, Any]]) -> int:
    module = import_script(args.script, harness_argv, as_main=True)
    found = harnesses(module)
    name: str | None = None
    if before and before[0] in found:
        name = before[0]
    elif before and "--" in rest:
        raise CliError(f"{args.script} has no harness {before[0]!r}; its harnesses: "
                       f"{', '.join(found) or 'none'}")
    elif before:  # not a harness name: the first harness argument
        harness_argv = [*before, *harness_argv]
    if name is None:
        if not found:
            raise CliError(f"{args.script} has no harness: mark an entry point with "
                           "@hog.harness() (import hog_executor as hog)")
        if len(found) == 1:
            name = next(iter(found))
        elif "main" in found:
            name = "main"
        else:
            raise CliError(f"{args.script} has several harnesses ({', '.join(found)}): name "
                           f"one, e.g. hog run {args.script} {next(iter(found))}")
    prog = f"hog run {args.script} {name} --"
    sys.argv = [sys.argv[0], *harness_argv]
    value = call_harness(found[name], harness_argv, prog)
    if value is not None:
        if isinstance(value, str):
            print(value)
        else:
            import pprint

            pprint.pprint(value)
    return 0


# -- hog init / hog add -----------------------------------------------------------------------

_TEMPLATE = '''\
{block}"""{doc}"""

import hog_executor as hog


@hog.function("{endpoint}")
def hello(name: str) -> str:
    import platform

    return f"hello {{name}} from {{platform.node()}}"


@hog.harness()
def main(name: str = "world") -> str:
    """Run with: hog run {script}  (or: hog run {script} -- --name you)"""
    return hello.remote(name)


if __name__ == "__main__":
    print(main())
'''


def _block_text(python: str, name: str, uuid: str | None) -> str:
    import json

    lines = ["# /// script", f"# requires-python = {json.dumps(python)}", "# dependencies = []",
             "#"]
    if uuid:
        lines += [f"# [tool.hog.{name}]", f'# endpoint = "{uuid}"  # a Globus Compute endpoint']
    else:
        lines += [f"# [tool.hog.{name}]  # settings of the {name!r} endpoint",
                  '# walltime = "00:10:00"',
                  "# # add a remote endpoint: hog add THIS_SCRIPT --endpoint NAME:ENDPOINT_UUID"]
    lines.append("# ///")
    return "\n".join(lines) + "\n"


def _parse_endpoint_arg(text: str) -> tuple[str, str | None]:
    name, _, uuid = text.partition(":")
    if not _TABLE_NAME.match(name):
        raise CliError(f"endpoint name {name!r} must be letters, digits, '-', '_' (dotted for "
                       "variants: anvil.gpu)")
    if uuid and not _UUID.match(uuid):
        raise CliError(f"{uuid!r} is not a Globus Compute endpoint UUID "
                       "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    return name, uuid or None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.hog-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    try:
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def cmd_init(args: argparse.Namespace) -> int:
    from .script import load_script, parse_metadata

    path = Path(args.script)
    name, uuid = _parse_endpoint_arg(args.endpoint) if args.endpoint else ("local", None)
    block = _block_text(args.python, name, uuid)
    parse_metadata(block, path)  # raises MetadataError on a bad --python
    if path.exists() and not args.force:
        meta = load_script(path)
        if meta.has_block:
            raise CliError(f"{path} already has a '# /// script' block: change it with "
                           f"hog add {path} ... (or pass --force to overwrite the file)")
        source = meta.source
        lines = source.splitlines(keepends=True)
        keep = 0
        while keep < len(lines) and keep < 2 and (
                lines[keep].startswith("#!") or re.match(r"#.*coding[:=]", lines[keep])):
            keep += 1
        _write_atomic(path, "".join(lines[:keep]) + block + "".join(lines[keep:]))
        print(f"added a PEP 723 block to {path}", file=sys.stderr)
        return 0
    text = _TEMPLATE.format(block=block, doc=f"{path.stem}: functions run with hog-executor.",
                            endpoint=name, script=path.name)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}; run it with: hog run {path}", file=sys.stderr)
    return 0


def _uv() -> str:
    from .backends.local import _uv_binary

    uv = _uv_binary()
    if not uv:
        raise CliError("uv is not installed: pip install uv (hog add uses uv add --script)")
    return uv


def _toml_value(text: str) -> Any:
    """``text`` as a TOML value (``600``, ``true``, ``["a"]``, ``"x"``), else as text.

    Dates and times stay text: ``walltime=01:00:00`` means the string.
    """
    import datetime

    import tomlkit

    try:
        value = tomlkit.parse(f"v = {text}")["v"]
    except Exception:
        return text
    if isinstance(value, (datetime.date, datetime.time)):
        return text
    return value


def set_endpoint_table(source: str, name: str, values: dict[str, Any],
                       path: str = "<script>") -> str:
    """``source`` with ``[tool.hog.<name>]`` of its PEP 723 block updated by ``values``.

    Everything else (comments, order, the rest of the script) is kept.

    Raises:
        CliError: the script has no block (run ``hog init`` first).
    """
    import tomlkit

    from .script import _BLOCK

    match = next((m for m in _BLOCK.finditer(source) if m.group("type") == "script"), None)
    if match is None:
        raise CliError(f"{path} has no '# /// script' block: run hog init {path} first")
    content = "".join(
        line[2:] if line.startswith("# ") else line[1:]
        for line in match.group("content").splitlines(keepends=True)
    )
    doc = tomlkit.parse(content)
    table: Any = doc
    for i, part in enumerate(["tool", "hog", *name.split(".")]):
        if part not in table:
            last = i == len(name.split(".")) + 1
            table[part] = tomlkit.table(is_super_table=not last)
        table = table[part]
    for key, value in values.items():
        table[key] = value
    text = tomlkit.dumps(doc)
    block = "# /// script\n" + "".join(
        ("# " + line if line.strip() else "#") + "\n" for line in text.splitlines()
    ) + "# ///"
    return source[: match.start()] + block + source[match.end():]


def cmd_add(args: argparse.Namespace) -> int:
    from .script import load_script

    path = Path(args.script)
    if not path.is_file():
        raise CliError(f"no such script: {path} (create one with: hog init {path})")
    if args.set and not args.endpoint:
        raise CliError("--set needs --endpoint NAME (the table the keys go into)")
    if not args.dependencies and not args.endpoint:
        raise CliError("nothing to add: give dependencies (hog add script.py numpy) and/or "
                       "--endpoint NAME[:UUID]")
    if args.dependencies:
        cmd = [_uv(), "add", "--script", str(path), *args.dependencies]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise CliError(f"uv add --script failed (exit status {proc.returncode}); "
                           "its message is above")
        print(f"added {', '.join(args.dependencies)} to {path}", file=sys.stderr)
    if args.endpoint:
        name, uuid = _parse_endpoint_arg(args.endpoint)
        values: dict[str, Any] = {}
        if uuid:
            values["endpoint"] = uuid
        for item in args.set or ():
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise CliError(f"--set {item!r}: expected KEY=VALUE (e.g. --set walltime=600)")
            values[key.strip()] = _toml_value(raw.strip())
        source = load_script(path).source
        new = set_endpoint_table(source, name, values, str(path))
        _check_endpoint(new, path, name)
        _write_atomic(path, new)
        print(f"wrote [tool.hog.{name}] in {path}", file=sys.stderr)
    return 0


def _check_endpoint(source: str, path: Path, name: str) -> None:
    """Raise unless ``name`` resolves in the changed script (the file is left unchanged)."""
    from .backends import backend_keys, backend_names
    from .config import resolve_endpoint
    from .errors import ConfigError
    from .script import parse_metadata

    meta = parse_metadata(source, path)
    try:
        resolve_endpoint(name, script_tables=meta.tool_hog, script_source=str(path),
                         backend_keys=backend_keys, builtin_backends=backend_names)
    except ConfigError as exc:
        if "no backend named" in str(exc):  # e.g. globus: valid, just not installed here
            return
        raise CliError(f"not written: {exc}") from None


#: The line ``hog bundle`` adds (unless --raw) so that ``bash bundle.sh`` prints results.
_PRINT_LINE = "export HOG_PRINT_RESULT=1  # print the result readably (hog bundle; --raw omits)\n"


# -- hog bundle -------------------------------------------------------------------------------

def _call_args(fn: Callable[..., Any], items: Sequence[str]) -> tuple[list[Any], dict[str, Any]]:
    try:
        params = set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = set()
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if sep and key in params:
            kwargs[key] = _literal(raw)
        elif kwargs:
            raise CliError(f"positional argument {item!r} after keyword arguments")
        else:
            args.append(_literal(item))
    return args, kwargs


def render_bundle_for(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], *,
                      endpoint: str, script: str | None, config: dict[str, Any]) -> str:
    """The exact bash bundle ``HogExecutor(endpoint, script=script, **config)`` would send
    for ``fn(*args, **kwargs)``. Nothing runs: the submission is captured before the backend.

    Raises:
        ConfigError, SerializationError, PayloadTooLargeError: as a real submission would.
    """
    from .backends import Backend, Job
    from .executor import HogExecutor

    class Capture(Backend):
        def __init__(self, workers: int) -> None:
            self.jobs: list[Job] = []
            self._workers = workers

        @property
        def workers(self) -> int:
            return self._workers

        def submit(self, jobs: Sequence[Job]) -> None:
            self.jobs.extend(jobs)

        def cancel(self, job: Job) -> bool:
            return job.future.cancel()

        def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
            for job in self.jobs:
                job.future.cancel()

    ex = HogExecutor(endpoint, script=script, **config)
    real = ex._shared.backend
    capture = Capture(real.workers)
    ex._shared.backend = capture
    try:
        ex.submit(fn, *args, **kwargs)
        (job,) = capture.jobs
        return job.bundle
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        real.shutdown(wait=True)


def cmd_bundle(args: argparse.Namespace) -> int:
    from .decorators import FunctionSpec

    script, qualname = _split_target(args.target)
    module = import_script(script)
    fn = _find(module, qualname)
    spec = getattr(fn, "hog", None)
    endpoint = args.endpoint or (spec.endpoint if isinstance(spec, FunctionSpec) else "local")
    config: dict[str, Any] = dict(spec.config) if isinstance(spec, FunctionSpec) else {}
    for item in args.set or ():
        key, sep, raw = item.partition("=")
        if not sep:
            raise CliError(f"--set {item!r}: expected KEY=VALUE")
        config[key] = _literal(raw)
    call_args, call_kwargs = _call_args(fn, args.args)
    text = render_bundle_for(fn, call_args, call_kwargs, endpoint=endpoint,
                             script=str(Path(script).resolve()), config=config)
    if not args.raw:  # after the leading comment lines (shebang, title, how to run it)
        lines = text.splitlines(keepends=True)
        cut = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
        text = "".join(lines[:cut]) + _PRINT_LINE + "".join(lines[cut:])
    if args.output == "-":
        sys.stdout.write(text)
    else:
        out = Path(args.output)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {out} ({len(text):,} bytes) for {qualname} on {endpoint!r}; "
              f"run it with: bash {out}", file=sys.stderr)
    return 0


# -- hog endpoints ----------------------------------------------------------------------------

def _table_names(tables: dict[str, Any], prefix: str = "") -> list[str]:
    from .config import COMMON_KEYS

    out: list[str] = []
    for key, value in tables.items():
        if isinstance(value, dict) and key not in COMMON_KEYS and key != "env":
            out.append(prefix + key)
            out.extend(_table_names(value, prefix + key + "."))
    return out


def cmd_endpoints(args: argparse.Namespace) -> int:
    from .backends import backend_keys, backend_names
    from .config import _read_user_config, resolve_endpoint
    from .script import load_script

    user, user_path = _read_user_config()
    meta = load_script(args.script) if args.script else None
    print(f"user config file: {user_path}" + ("" if os.path.exists(user_path)
                                                  else " (does not exist)"))
    if meta is not None:
        print(f"script: {meta.path}" + ("" if meta.has_block else " (no PEP 723 block)"))
    names = list(dict.fromkeys([*backend_names(), *_table_names(user),
                                *_table_names(meta.tool_hog if meta else {})]))
    failed = 0
    for name in names:
        try:
            ep = resolve_endpoint(
                name, script_tables=meta.tool_hog if meta else None,
                script_source=str(meta.path) if meta else "script",
                backend_keys=backend_keys, builtin_backends=backend_names)
        except HogError as exc:
            failed += 1
            print(f"\n{name}: error: {exc}")
            continue
        print(f"\n{name} (backend {ep.backend})")
        width = max(len(k) for k in ep.values)
        for key, value in ep.values.items():
            print(f"  {key.ljust(width)} = {value!r}    # {ep.sources.get(key, '?')}")
    return 1 if failed else 0


# -- hog cache --------------------------------------------------------------------------------

def cache_root(base: str | None = None) -> Path:
    """``${HOG_CACHE_DIR:-${SCRATCH:-${TMPDIR:-/tmp}}}/hog-$USER``, as bundles compute it
    (``base`` replaces the first part)."""
    import getpass

    base = base or (os.environ.get("HOG_CACHE_DIR") or os.environ.get("SCRATCH")
                    or os.environ.get("TMPDIR") or "/tmp")
    if base.startswith("~/"):
        base = os.path.join(os.path.expanduser("~"), base[2:])
    user = os.environ.get("USER") or getpass.getuser()
    return Path(base) / f"hog-{user}"


def _size(path: Path) -> int:
    total = 0
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _last_used(env: Path) -> float:
    for p in (env / ".last-used", env):
        try:
            return p.stat().st_mtime
        except OSError:
            continue
    return 0.0


def _env_python(env: Path) -> str:
    try:
        for line in (env / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("version_info", "version"):
                return value.strip()
    except OSError:
        pass
    return "?"


def _env_packages(env: Path) -> list[str]:
    names = []
    for info in env.glob("lib/python*/site-packages/*.dist-info"):
        names.append(info.name[: -len(".dist-info")].rsplit("-", 1)[0])
    return sorted(names, key=str.lower)


def _envs(root: Path) -> list[Path]:
    envs = root / "envs"
    if not envs.is_dir():
        return []
    return sorted(p for p in envs.iterdir() if p.is_dir() and not p.name.startswith("."))


def _ago(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def cmd_cache(args: argparse.Namespace) -> int:
    root = cache_root(args.cache_dir)
    envs = _envs(root)
    now = time.time()
    if args.action == "list":
        print(f"environment cache: {root / 'envs'}")
        if not envs:
            print("  (empty)")
            return 0
        total = 0
        for env in envs:
            size = _size(env)
            total += size
            pkgs = [p for p in _env_packages(env) if p.lower() not in ("pip", "setuptools")]
            shown = ", ".join(pkgs[:6]) + (f", +{len(pkgs) - 6}" if len(pkgs) > 6 else "")
            print(f"  {env.name}  {_human(size):>9}  python {_env_python(env):<8} "
                  f"used {_ago(now - _last_used(env)):<13} {shown}")
        print(f"{len(envs)} environment(s), {_human(total)}")
        return 0
    # prune
    limit = now - args.older_than * 86400
    removed = 0
    freed = 0
    for env in envs:
        if not args.all and _last_used(env) >= limit:
            continue
        if _locked(root / "envs" / f".{env.name}.lock"):
            print(f"  skipped {env.name}: being built right now")
            continue
        size = _size(env)
        print(f"  {'would remove' if args.dry_run else 'removed'} {env.name} ({_human(size)}, "
              f"used {_ago(now - _last_used(env))})")
        if not args.dry_run:
            doomed = env.with_name(f".prune-{env.name}.{os.getpid()}")
            try:
                os.rename(env, doomed)
            except OSError as exc:
                print(f"  could not remove {env.name}: {exc.strerror}")
                continue
            shutil.rmtree(doomed, ignore_errors=True)
            (root / "envs" / f".{env.name}.lock").unlink(missing_ok=True)
        removed += 1
        freed += size
    for stale in (root / "envs").glob(".build-*") if (root / "envs").is_dir() else ():
        if stale.is_dir() and stale.stat().st_mtime < now - 86400 and not args.dry_run:
            shutil.rmtree(stale, ignore_errors=True)
    verb = "would free" if args.dry_run else "freed"
    print(f"{removed} environment(s) {'to remove' if args.dry_run else 'removed'}, "
          f"{verb} {_human(freed)}")
    return 0


def _locked(lock: Path) -> bool:
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


# -- hog doctor -------------------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace) -> int:
    failures = 0

    def report(status: str, what: str, detail: str) -> None:
        nonlocal failures
        failures += status == "FAIL"
        print(f"{status:<4}  {what:<18} {detail}")

    report("ok", "python", f"{sys.version.split()[0]} ({sys.executable})")
    from .environment import runtime_requirements

    report("ok", "hog-executor", f"{__version__}; bundles install it as: "
           f"{' '.join(runtime_requirements())}")
    from .backends.local import _uv_binary

    uv = _uv_binary()
    if uv:
        try:
            out = subprocess.run([uv, "--version"], capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL)
            report("ok" if out.returncode == 0 else "FAIL", "uv",
                   f"{out.stdout.strip() or out.stderr.strip()} ({uv})")
        except (OSError, subprocess.TimeoutExpired) as exc:
            report("FAIL", "uv", f"{uv} does not run: {exc}")
    else:
        report("FAIL", "uv", "not found: pip install uv")
    for tool in ("bash", "base64", "timeout", "mktemp"):
        found = shutil.which(tool)
        report("ok" if found else "FAIL", tool, found or "not found (bundles need it)")
    flock = shutil.which("flock")
    report("ok" if flock else "warn", "flock",
           flock or "not found: concurrent first builds of one environment are not serialized")
    from .config import _read_user_config
    from .errors import ConfigError

    try:
        data, path = _read_user_config()
        exists = os.path.exists(path)
        names = _table_names(data)
        report("ok", "config file", f"{path}" + (f" ({len(names)} endpoint(s): "
               f"{', '.join(names)})" if exists else " (none; optional)"))
    except ConfigError as exc:
        report("FAIL", "config file", str(exc))
    root = cache_root()
    try:
        (root / "envs").mkdir(parents=True, exist_ok=True)
        writable = os.access(root / "envs", os.W_OK)
        mine = root.stat().st_uid == os.getuid()
        status = "ok" if writable and mine else "FAIL"
        detail = f"{root} ({len(_envs(root))} environment(s))"
        if not mine:
            detail += ": belongs to another user; set HOG_CACHE_DIR"
        report(status, "local cache", detail)
    except OSError as exc:
        report("FAIL", "local cache", f"{root}: {exc.strerror}; set HOG_CACHE_DIR")
    from .backends import backend_class, backend_names

    for name in backend_names():
        try:
            backend_class(name)
        except Exception as exc:
            report("FAIL", f"backend {name}", str(exc))
            continue
        report("ok", f"backend {name}", _backend_detail(name))
    for module, extra in (("globus_compute_sdk", "globus"), ("dask", "dask"),
                          ("proxystore", "proxystore")):
        present = importlib.util.find_spec(module) is not None
        report("ok" if present else "info", module,
               "installed" if present else f"not installed (pip install 'hog-executor[{extra}]')")
    print("\nall required checks passed" if not failures else f"\n{failures} check(s) failed")
    return 1 if failures else 0


def _backend_detail(name: str) -> str:
    if name != "slurm":
        return "available"
    sbatch = shutil.which("sbatch")
    if not sbatch:
        return "installed; sbatch not on PATH (Slurm endpoints only work on a login node)"
    try:
        proc = subprocess.run(["squeue", "-h", "-o", "%i", "-u", os.environ.get("USER", "")],
                              capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sbatch found, squeue failed: {exc}"
    if proc.returncode != 0:
        return f"sbatch found, but squeue fails: {proc.stderr.strip()[:200]}"
    return f"controller reachable ({sbatch})"


# -- the parser -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The ``hog`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="hog",
        description="Run Python functions on HPC endpoints; environments come from the "
                    "script's PEP 723 block.",
        epilog="Start with: hog init analysis.py && hog run analysis.py",
    )
    parser.add_argument("--version", action="version", version=f"hog-executor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="call a @hog.harness() of a script and print its result",
                         description="Import SCRIPT as a module (its __main__ guard does not "
                                     "run), call one of its @hog.harness() functions with "
                                     "arguments parsed from its signature, print the result.",
                         epilog="Example: hog run analysis.py main -- 100 --scale 2")
    run.add_argument("script", help="the Python script")
    run.add_argument("rest", nargs=argparse.REMAINDER, metavar="[HARNESS] [-- ARGS]",
                     help="harness name (default: the only one, or main) and its arguments")
    run.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    run.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bars for map (default: on when stderr is a terminal)")
    run.set_defaults(func=cmd_run)

    init = sub.add_parser("init", help="write a PEP 723 script template with an endpoint table",
                          description="Write SCRIPT as a template, or add a PEP 723 block to an "
                                      "existing script that has none.")
    init.add_argument("script")
    init.add_argument("--endpoint", metavar="NAME[:UUID]",
                      help="endpoint table to write (default: local)")
    init.add_argument("--python", default=">=3.10", help="requires-python (default: >=3.10)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=cmd_init)

    add = sub.add_parser("add", help="add dependencies (uv add --script) or an endpoint table",
                         epilog="Example: hog add analysis.py numpy --endpoint anvil:<uuid> "
                                "--set account=abc123")
    add.add_argument("script")
    add.add_argument("dependencies", nargs="*", help="requirements, e.g. 'numpy>=2'")
    add.add_argument("--endpoint", metavar="NAME[:UUID]",
                     help="write [tool.hog.NAME] (endpoint = UUID for Globus Compute)")
    add.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="a key of the endpoint table (TOML value; repeatable)")
    add.set_defaults(func=cmd_add)

    bundle = sub.add_parser("bundle", help="write the exact bash bundle a call would send",
                            description="Write the bundle for FUNCTION(ARGS...) without running "
                                        "it. Run it by hand with: bash FILE (it prints the "
                                        "result).",
                            epilog="ARGS are Python literals (else strings); NAME=VALUE "
                                   "passes a keyword argument. Example: hog bundle "
                                   "analysis.py:square 3 -o bundle.sh")
    bundle.add_argument("target", metavar="SCRIPT.py:FUNCTION")
    bundle.add_argument("args", nargs="*", metavar="ARGS")
    bundle.add_argument("-o", "--output", default="bundle.sh",
                        help="file to write (default: bundle.sh; '-' for stdout)")
    bundle.add_argument("--endpoint", help="endpoint (default: the function's, or local)")
    bundle.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="an endpoint key for this call (repeatable)")
    bundle.add_argument("--raw", action="store_true",
                        help="exactly the bytes a backend receives (no readable result line)")
    bundle.set_defaults(func=cmd_bundle)

    endpoints = sub.add_parser("endpoints",
                               help="every endpoint and where each of its values comes from")
    endpoints.add_argument("--script", help="include this script's [tool.hog.*] tables")
    endpoints.set_defaults(func=cmd_endpoints)

    cache = sub.add_parser("cache", help="list or prune cached environments on this machine")
    cache.add_argument("action", choices=["list", "prune"])
    cache.add_argument("--cache-dir", help="cache parent (default: as bundles: HOG_CACHE_DIR, "
                                           "SCRATCH, TMPDIR, /tmp)")
    cache.add_argument("--older-than", type=float, default=30, metavar="DAYS",
                       help="prune environments unused for this many days (default: 30)")
    cache.add_argument("--all", action="store_true", help="prune every environment")
    cache.add_argument("--dry-run", action="store_true", help="show what prune would remove")
    cache.set_defaults(func=cmd_cache)

    doctor = sub.add_parser("doctor", help="check uv, Python, config files and backends")
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hog`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        result: int = args.func(args)
        return result
    except (CliError, HogError) as exc:
        print(f"hog: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if args.command == "run":  # raised by the harness: keep its traceback
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"hog: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hog: interrupted", file=sys.stderr)
        return 130
