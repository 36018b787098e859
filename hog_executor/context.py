"""Which script and environment a call uses, decided in one place.

`script_for` picks the PEP 723 script whose environment (and endpoint tables) apply to a
function; `CallContext` is everything the calls of one function through one executor view
share: the script, its client-side module, the pickled function, the environment and the
rendered bundle around the payload. `Contexts` builds and caches them.

Building a context is also where a script's imports are checked against its block
(`hog_executor.imports`), where its local modules join the bundle, and where a call
without a block gets the dependencies its pickle refers to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import stat
import sys
import types
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import imports as _imports
from . import payload as _payload
from .bundle import BundleSpec, bundle_parts
from .config import DEFAULT_PAYLOAD_LIMIT
from .environment import env_spec
from .launchers import launch_plan
from .script import ScriptMetadata, load_script

if TYPE_CHECKING:
    from .backends import Backend

__all__ = ["CONTEXT_CACHE_SIZE", "CallContext", "Contexts", "inferred_packages", "main_script",
           "script_for"]

#: Contexts an executor view keeps (least recently used dropped first).
CONTEXT_CACHE_SIZE = 256

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
_log = logging.getLogger("hog_executor")

#: Per backend (one per executor and its views): the messages already logged.
_logged: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


#: Paths as given -> resolved (symbolic links followed once per process).
_resolved: dict[str, str] = {}
#: Resolved script path -> (modification time, size, parsed block).
_metas: dict[str, tuple[int, int, ScriptMetadata]] = {}
#: Entries `_resolved` and `_metas` keep before they are cleared.
_PATHS_LIMIT = 4096


def _resolve(path: str) -> str:
    """``path`` made absolute with symbolic links followed (remembered per process)."""
    found = _resolved.get(path)
    if found is None:
        if len(_resolved) > _PATHS_LIMIT:
            _resolved.clear()
        found = _resolved[path] = str(Path(path).resolve())
    return found


def script_meta(path: str, st: os.stat_result | None = None) -> ScriptMetadata:
    """`load_script` of a resolved path, with one ``stat`` (or ``st``, the file's) when the
    file has not changed.

    Raises:
        MetadataError: the file cannot be read or its block is malformed.
    """
    if st is None:
        try:
            st = os.stat(path)
        except OSError:
            return load_script(path)  # raises the MetadataError naming the file
    found = _metas.get(path)
    if found is not None and found[0] == st.st_mtime_ns and found[1] == st.st_size:
        return found[2]
    meta = load_script(path)
    if len(_metas) > _PATHS_LIMIT:
        _metas.clear()
    _metas[path] = (st.st_mtime_ns, st.st_size, meta)
    return meta


def _with_block(path: str | None) -> str | None:
    """``path`` resolved, when it is a Python file with a PEP 723 block."""
    if not path or not path.endswith(".py"):
        return None
    resolved = _resolve(path)
    try:
        st = os.stat(resolved)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return resolved if script_meta(resolved, st).has_block else None


def main_script() -> str | None:
    """The ``__main__`` file when it has a PEP 723 block."""
    return _with_block(getattr(sys.modules.get("__main__"), "__file__", None))


def script_for(fn: Any = None, explicit: str | os.PathLike[str] | None = None) -> str | None:
    """The script whose environment and endpoint tables apply to calls of ``fn``.

    The first of: ``explicit`` (an executor's ``script=``); the file of ``fn``'s module when
    it has a PEP 723 block; the ``__main__`` file when it has one; else None (the
    executor's ``requires_python``/``dependencies`` apply).
    """
    if explicit is not None:
        return _resolve(os.fspath(explicit))
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    return _with_block(getattr(module, "__file__", None)) or main_script()


@dataclass(frozen=True)
class CallContext:
    """What all calls of one function through one executor view share.

    Attributes:
        script: the script's path (None: no script).
        meta: its parsed PEP 723 block.
        module: the client's module object of the script, if loaded.
        fn_bytes: the pickled function.
        spec: what the bundle contains besides the payload.
        parts: the bundle's text before and after the payload line.
        limit: the payload limit for one call.
        description: what runs, for humans (``script.py:function``).
        values: the resolved endpoint values.
        chunk_limit: the payload limit for one chunk (the backend's, if lower).
        runner_key: calls with the same key may share a warm runner: a hash of the
            environment, the script's text and the process-level settings (None:
            ``fresh_process``, every job gets a process of its own).
    """

    script: str | None
    meta: ScriptMetadata
    module: types.ModuleType | None
    fn_bytes: bytes
    spec: BundleSpec
    parts: tuple[str, str]
    limit: int
    description: str
    values: dict[str, Any]
    chunk_limit: int
    runner_key: str | None


def describe(fn: Any, script: str | None) -> str:
    """``script.py:qualname`` (or the qualname alone) naming a call for humans."""
    name = f"{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    return f"{os.path.basename(script)}:{name}" if script else name


def _identity(fn: Any) -> Any:
    """What a cached context is keyed on: the function's code, never an object it is bound
    to (a context must not keep a submitted bound method's object alive)."""
    if isinstance(fn, types.MethodType):
        return ("method", fn.__func__)
    bound = getattr(fn, "__self__", None)
    if isinstance(fn, types.BuiltinMethodType) and not isinstance(bound, (types.ModuleType,
                                                                           type(None))):
        return ("method", type(bound), fn.__name__)
    if isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, type)):
        return fn
    return ("instance", type(fn))


def runner_key(spec: BundleSpec, module: types.ModuleType | None) -> str:
    """What decides whether two calls may share a warm runner process: the environment,
    the script's name and text (and its local modules'), how the script's objects travel,
    and the process-level
    settings (environment variables, ``worker_init``, the cache directory)."""
    local = hashlib.sha256(b"".join(p.encode() + b"\0" + d for p, d in spec.files)).hexdigest()
    parts = [spec.env.key, spec.script_name or "", spec.script_source, local,
             str(spec.script_name is not None and module is None), spec.worker_init,
             spec.cache_dir or "", json.dumps(spec.env_vars, sort_keys=True)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def local_module_files(modules: Iterable[_imports.LocalModule]) -> tuple[tuple[str, bytes], ...]:
    """The script's local modules as bundle files (path relative to the script, content)."""
    return tuple((m.relpath, Path(m.path).read_bytes()) for m in modules)


def _client_names(modules: Iterable[_imports.LocalModule]) -> frozenset[str]:
    """The local modules whose client module (if imported) is that same file."""
    names = set()
    for m in modules:
        mod = sys.modules.get(m.name)
        path = getattr(mod, "__file__", None)
        if mod is None or (isinstance(path, str)
                           and os.path.realpath(path) == os.path.realpath(m.path)):
            names.add(m.name)
    return frozenset(names)


class Contexts:
    """Builds and caches `CallContext` objects for one executor view."""

    def __init__(self, explicit_script: str | None, values: dict[str, Any],
                 backend: Backend) -> None:
        self.explicit_script = explicit_script
        self.values = values
        self.backend = backend
        self._cache: OrderedDict[tuple[Any, ...], CallContext] = OrderedDict()

    def log_once(self, message: str, level: int = logging.INFO) -> None:
        """Log ``message`` once per executor (its views share the backend)."""
        try:
            seen = _logged.setdefault(self.backend, set())
        except TypeError:  # a backend that cannot be weakly referenced
            seen = set()
        if message not in seen:
            seen.add(message)
            _log.log(level, "%s", message)

    def argument_packages(self, ctx: CallContext, modules: set[str]) -> tuple[str, ...]:
        """Pinned requirements for ``modules`` (referred to by a call's arguments) that the
        call's environment does not hold yet; logged once."""
        found = tuple(r for r in _imports.requirements_for(modules)
                      if r not in ctx.spec.env.inferred)
        if found:
            self.log_inferred(f"{ctx.description} (its arguments)", found)
        return found

    def log_inferred(self, what: str, inferred: tuple[str, ...]) -> None:
        if inferred:
            self.log_once(f"{what} has no PEP 723 block: its environment gets the packages "
                          f"its calls refer to, at this machine's versions: "
                          f"{', '.join(inferred)} (a block declares them instead)")

    def get(self, fn: Any, extras: tuple[str, ...] = ()) -> CallContext:
        """The context for calls of ``fn`` whose environment also holds ``extras``.

        Raises:
            SerializationError: ``fn`` cannot be pickled.
            MetadataError: the script's block is malformed.
            UndeclaredImportError: the script (or a local module travelling with it)
                imports an installed package its block does not declare (unless the
                ``check_imports`` key is false).
        """
        script = script_for(fn, self.explicit_script)
        meta = script_meta(script) if script else ScriptMetadata()
        try:
            key: tuple[Any, ...] | None = (_identity(fn), script, extras)
            ctx = self._cache.get(key)  # type: ignore[arg-type]
        except TypeError:  # an unhashable callable
            key, ctx = None, None
        if ctx is not None and ctx.meta is meta:
            self._cache.move_to_end(key)  # type: ignore[arg-type]
            if _payload.by_reference(fn, ctx.module):
                return ctx
            # Pickled by value (a bound method, a callable object, a closure, a function of
            # a module shipped by value): what it captures may have changed since.
            return dataclasses.replace(ctx, fn_bytes=_payload.dumps_function(fn, ctx.module))
        ctx = self._build(fn, script, meta, extras)
        if key is not None:
            self._cache[key] = ctx
            while len(self._cache) > CONTEXT_CACHE_SIZE:
                self._cache.popitem(last=False)
        return ctx

    def _build(self, fn: Any, script: str | None, meta: ScriptMetadata,
               extras: tuple[str, ...]) -> CallContext:
        values = self.values
        module = _payload.client_module_for(script, fn)
        description = describe(fn, script)
        local: tuple[_imports.LocalModule, ...] = ()
        refs: set[str] | None = None if meta.has_block else set()
        if script is not None:
            # Before anything is pickled or sent: an undeclared import is an error here.
            if meta.has_block and values.get("check_imports", True):
                found = _imports.check_script(script, meta)
            else:
                found = _imports.analyze(script, meta.source)
            if refs is not None:  # a script without a block: what it imports is needed too
                refs.update(_imports.installed_imports(found))
            local = found.local
            if found.skipped:
                self.log_once(f"{os.path.basename(script)}: local modules left out of the "
                              f"bundle (over the size limits): {', '.join(found.skipped)}",
                              logging.WARNING)
            if module is not None:
                _payload.set_remote_modules(module, _client_names(local))
        fn_bytes = _payload.dumps_function(fn, module, refs)
        env = env_spec(meta, requires_python=values.get("requires_python"),
                       extra_dependencies=values.get("dependencies", ()),
                       runtime_packages=extras,
                       inferred=_imports.requirements_for(refs) if refs else ())
        self.log_inferred(description, env.inferred)
        name = _SAFE_NAME.sub("_", os.path.basename(script)) if script else None
        if name is not None and (name.startswith(".") or not name.endswith(".py")):
            name = f"script_{name.lstrip('.')}.py"
        spec = BundleSpec(
            env=env,
            script_name=name,
            script_source=meta.source,
            walltime=values.get("walltime"),
            env_vars=values.get("env", {}),
            worker_init=values.get("worker_init", ""),
            files=local_module_files(local),
            cache_dir=values.get("cache_dir"),
            description=description,
            launch=launch_plan(values, (*meta.dependencies, *values.get("dependencies", ()))),
        )
        parts = bundle_parts(spec)
        limit = values.get("payload_limit", DEFAULT_PAYLOAD_LIMIT)
        own = self.backend.payload_limit(*parts)
        return CallContext(script, meta, module, fn_bytes, spec,
                           parts, limit, description, values,
                           limit if own is None else min(limit, own),
                           None if values.get("fresh_process") or spec.launch is not None
                           else runner_key(spec, module))


def inferred_packages(ex: Any, fn: Any, objects: Iterable[Any], *,
                      what: str | None = None) -> tuple[str, ...]:
    """Pinned requirements for the installed packages ``objects`` refer to (a Dask graph's
    nodes, the arguments of calls of ``fn`` through the executor ``ex``), when the calls'
    script has no PEP 723 block; ``()`` otherwise. Logged once per executor, naming
    ``what`` (default: the function).

    Objects that do not pickle add nothing: their calls report it.
    """
    contexts: Contexts = ex._contexts
    script = script_for(fn, contexts.explicit_script)
    meta = load_script(script) if script else ScriptMetadata()
    if meta.has_block:
        return ()
    module = _payload.client_module_for(script, fn)
    try:
        refs = _payload.references(list(objects), module)
    except Exception:
        return ()
    if script is not None:
        refs.update(_imports.installed_imports(_imports.analyze(script, meta.source)))
    found = _imports.requirements_for(refs)
    contexts.log_inferred(what or describe(fn, script), found)
    return found
