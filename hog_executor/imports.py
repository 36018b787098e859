"""What code imports, read statically, and which installed distributions provide it.

One job, three uses:

- **the import check**: a script's imports (module level and inside functions, read with
  `ast`) that belong to a distribution installed on this machine but are not declared in
  its PEP 723 block are an `UndeclaredImportError` at submit time (`check_script`);
- **local modules**: the script's sibling modules it imports (``from helpers import f``),
  transitively, travel with the script (`analyze`); the remote side imports them by name;
- **inferred dependencies**: for calls without a block, the modules a call's pickles refer
  to become pinned requirements (`requirements_for`).

Whether a module is *local* (user code the remote side cannot import by name: ``__main__``
or a file outside the standard library and the installed site-packages) is decided by
`is_local_module`; the payload pickler sends such modules' objects by value.
"""

from __future__ import annotations

import ast
import os
import site
import sys
import sysconfig
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UndeclaredImportError

if TYPE_CHECKING:
    from .script import ScriptMetadata

__all__ = [
    "RUNTIME_DISTRIBUTIONS",
    "ImportSite",
    "LocalModule",
    "ScriptImports",
    "Undeclared",
    "analyze",
    "check_script",
    "distribution_of",
    "installed_imports",
    "is_local_module",
    "requirements_for",
    "scan_imports",
    "undeclared_imports",
]

#: Distributions every remote environment gets from hog-executor itself (canonical names).
RUNTIME_DISTRIBUTIONS = frozenset({"cloudpickle", "hog-executor"})

#: Module names that are never local or inferred: the standard library, hog-executor's
#: runtime, the script's remote module name.
_NEVER = frozenset({*sys.stdlib_module_names, "__main__", "__mp_main__", "__hog_script__",
                    "hog_executor", "cloudpickle", "builtins"})

#: Shipping stops past these (the script's local modules travel inside every bundle).
MAX_LOCAL_FILES = 200
MAX_LOCAL_BYTES = 4_000_000


# -- local modules: user code the remote side cannot import -----------------------------------

@lru_cache(maxsize=1)
def _installed_roots() -> tuple[str, ...]:
    """Directories whose modules are installed (the standard library, site-packages)."""
    roots = {p for k in ("stdlib", "platstdlib", "purelib", "platlib")
             if (p := sysconfig.get_paths().get(k))}
    try:
        roots.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover - old virtualenv's site module
        pass
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if isinstance(user, str):
        roots.add(user)
    roots.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    return tuple(sorted({os.path.realpath(r) + os.sep for r in roots}))


def _under_installed_root(path: str) -> bool:
    real = os.path.realpath(path)
    return real.startswith(_installed_roots())


_local_lock = threading.Lock()
_local_cache: dict[tuple[str, str | None], bool] = {}


def is_local_module(name: str) -> bool:
    """Whether module ``name`` is local code that the remote side cannot import by name.

    True for ``__main__`` and for a module whose file is outside the standard library,
    every installed site-packages directory and any directory holding installed
    distributions' metadata (``pip install --target``): a sibling ``helpers.py``, a test
    module, a notebook's helpers, an editable checkout. hog-executor itself is never local.
    False for installed and built-in modules, and for a module that is not imported
    (nothing of it can be pickled).
    """
    if name in ("__main__", "__mp_main__"):
        return True
    module = sys.modules.get(name)
    if module is None:
        return False
    path = getattr(module, "__file__", None)
    key = (name, path if isinstance(path, str) else None)
    found = _local_cache.get(key)
    if found is None:
        found = _compute_local(name, module, key[1])
        with _local_lock:
            _local_cache[key] = found
    return found


def _compute_local(name: str, module: object, path: str | None) -> bool:
    if name.partition(".")[0] in _NEVER:
        return False
    if path is None:  # built in, frozen, or a namespace package: look at its directories
        dirs = [p for p in (getattr(module, "__path__", None) or ()) if isinstance(p, str)]
        return bool(dirs) and not any(_under_installed_root(d) for d in dirs)
    if _under_installed_root(path):
        return False
    # Installed elsewhere (pip install --target DIR, on PYTHONPATH): DIR holds .dist-info.
    depth = name.count(".") + 1 + (os.path.basename(path).startswith("__init__."))
    root = os.path.dirname(os.path.abspath(path))
    for _ in range(depth - 1):
        root = os.path.dirname(root)
    return not _holds_distributions(root)


@lru_cache(maxsize=256)
def _holds_distributions(directory: str) -> bool:
    """Whether ``directory`` is where distributions are installed (it holds their
    ``.dist-info`` or ``.egg-info`` metadata)."""
    return any(n.endswith((".dist-info", ".egg-info")) for n in _listdir(directory))


# -- reading imports ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ImportSite:
    """One ``import`` statement's target.

    Attributes:
        module: the module imported (absolute dotted name; for ``from . import x`` the
            package, resolved when the file's package is known, else "").
        names: for ``from M import a, b``: ``("a", "b")``; else ``()``.
        level: the number of leading dots of a relative import (0: absolute).
        line: the line number.
        guarded: not checked: inside ``try`` whose handlers catch ``ImportError``, or
            ``if TYPE_CHECKING:`` (a missing package is handled), or code that runs only on
            the client (``if __name__ == "__main__":``, a ``@hog.harness()`` function).
    """

    module: str
    names: tuple[str, ...]
    level: int
    line: int
    guarded: bool


_IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


def _catches_import_error(handler: ast.expr | None) -> bool:
    if handler is None:  # a bare except
        return True
    if isinstance(handler, ast.Tuple):
        return any(_catches_import_error(e) for e in handler.elts)
    if isinstance(handler, ast.Name):
        return handler.id in _IMPORT_ERRORS
    if isinstance(handler, ast.Attribute):
        return handler.attr in _IMPORT_ERRORS
    return False


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either way round): code that runs only on the client."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return (any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides)
            and any(isinstance(x, ast.Constant) and x.value == "__main__" for x in sides))


def _is_harness(decorator: ast.expr) -> bool:
    """``@hog.harness()``, ``@harness``...: the function runs on the client (``hog run``)."""
    if isinstance(decorator, ast.Call):
        decorator = decorator.func
    if isinstance(decorator, ast.Attribute):
        return decorator.attr == "harness"
    return isinstance(decorator, ast.Name) and decorator.id == "harness"


class _Collector(ast.NodeVisitor):
    def __init__(self) -> None:
        self.sites: list[ImportSite] = []
        self.guarded = 0

    def _try(self, node: ast.Try) -> None:
        catches = any(_catches_import_error(h.type) for h in node.handlers)
        self.guarded += catches
        for stmt in node.body:
            self.visit(stmt)
        self.guarded -= catches
        for part in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(part)

    visit_Try = _try
    visit_TryStar = _try  # Python 3.11+

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        client = any(_is_harness(d) for d in node.decorator_list)
        self.guarded += client
        self.generic_visit(node)
        self.guarded -= client

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test) or _is_main_guard(node.test):
            self.guarded += 1
            for stmt in node.body:
                self.visit(stmt)
            self.guarded -= 1
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.sites.append(ImportSite(alias.name, (), 0, node.lineno, self.guarded > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.sites.append(ImportSite(node.module or "", tuple(a.name for a in node.names),
                                     node.level, node.lineno, self.guarded > 0))


@lru_cache(maxsize=256)
def scan_imports(source: str, package: str = "") -> tuple[ImportSite, ...]:
    """Every import in ``source``: module level, inside functions, classes and blocks.

    ``package`` is the package the code belongs to (``""`` for a script or a top-level
    module): relative imports are resolved against it. Text that does not parse has no
    imports (the script's own import will report the syntax error).
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ()
    collector = _Collector()
    collector.visit(tree)
    if not package:
        return tuple(collector.sites)
    resolved = []
    for s in collector.sites:
        if s.level:
            parts = package.split(".")
            base = parts[:len(parts) - (s.level - 1)] if s.level - 1 < len(parts) else []
            name = ".".join([*base, *([s.module] if s.module else [])]) if base else ""
            s = ImportSite(name, s.names, 0 if name else s.level, s.line, s.guarded)
        resolved.append(s)
    return tuple(resolved)


# -- the script's local modules ----------------------------------------------------------------

@dataclass(frozen=True)
class LocalModule:
    """A module of the script's directory that the script imports (directly or not).

    Attributes:
        name: its module name (``helpers``, ``pkg.sub``).
        path: the file on this machine.
        relpath: where it goes next to the script remotely (``pkg/sub.py``).
    """

    name: str
    path: str
    relpath: str


@dataclass(frozen=True)
class ScriptImports:
    """What a script imports, and the local modules that travel with it.

    Attributes:
        script: the script's path.
        sites: ``(file, site)`` for every import of the script and of its local modules
            (``file`` is the script's or the module's path).
        local: the local modules to ship, in the order found.
        local_names: top-level names that resolve to the script's directory (shipped or
            not: an extension module found there is local too).
        stamps: ``(path, mtime_ns, size)`` of each local module when read.
        skipped: local modules left out because of the size limits.
    """

    script: str
    sites: tuple[tuple[str, ImportSite], ...]
    local: tuple[LocalModule, ...]
    local_names: frozenset[str]
    stamps: tuple[tuple[str, int, int], ...]
    skipped: tuple[str, ...] = ()


def _resolve_local(root: str, name: str) -> tuple[list[tuple[str, str]], bool]:
    """Files of module ``name`` found under ``root``: ``[(module name, path)]`` for the
    module and its parent packages (their ``__init__.py``), and whether its top-level name
    resolves there at all (as Python's path finder would: package, module, namespace)."""
    from importlib.machinery import BYTECODE_SUFFIXES, EXTENSION_SUFFIXES

    parts = name.split(".")
    where = root
    chain: list[tuple[str, str]] = []
    for i, part in enumerate(parts):
        if not part.isidentifier():
            break
        full = ".".join(parts[:i + 1])
        pkg = os.path.join(where, part)
        is_dir = os.path.isdir(pkg)
        if is_dir and os.path.isfile(os.path.join(pkg, "__init__.py")):
            chain.append((full, os.path.join(pkg, "__init__.py")))
            where = pkg
            continue
        compiled = (*EXTENSION_SUFFIXES, *BYTECODE_SUFFIXES)
        if is_dir and any(os.path.isfile(os.path.join(pkg, "__init__" + s)) for s in compiled):
            return chain, True  # a compiled package: local, nothing to ship
        if any(os.path.isfile(pkg + s) for s in EXTENSION_SUFFIXES):
            return chain, True  # an extension module
        if os.path.isfile(pkg + ".py"):
            chain.append((full, pkg + ".py"))
            return chain, True
        if any(os.path.isfile(pkg + s) for s in BYTECODE_SUFFIXES):
            return chain, True
        if is_dir:  # a namespace package portion
            where = pkg
            continue
        return chain, i > 0
    return chain, bool(chain) or where != root


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _package_of(name: str, path: str) -> str:
    """The package relative imports in module ``name`` (file ``path``) resolve against."""
    if os.path.basename(path) == "__init__.py":
        return name
    return name.rpartition(".")[0]


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _stamp(path: str) -> tuple[str, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (path, -1, -1)
    return (path, st.st_mtime_ns, st.st_size)


def _analyze(script: str, source: str) -> ScriptImports:
    root = os.path.dirname(os.path.realpath(script))
    script_real = os.path.realpath(script)
    sites: list[tuple[str, ImportSite]] = [(script, s) for s in scan_imports(source)]
    local: dict[str, LocalModule] = {}
    local_names: set[str] = set()
    skipped: list[str] = []
    total = 0
    queue = [s for _, s in sites]
    while queue:
        site_ = queue.pop(0)
        if site_.level or not site_.module:
            continue
        top = site_.module.partition(".")[0]
        if top in _NEVER:
            continue
        candidates = [site_.module, *(f"{site_.module}.{n}" for n in site_.names if n != "*")]
        for candidate in candidates:
            chain, is_local = _resolve_local(root, candidate)
            if is_local:
                local_names.add(top)
            for name, path in chain:
                if name in local or os.path.realpath(path) == script_real:
                    continue
                text = _read(path)
                if text is None:
                    continue
                size = len(text.encode())
                if len(local) >= MAX_LOCAL_FILES or total + size > MAX_LOCAL_BYTES:
                    skipped.append(name)
                    continue
                total += size
                relpath = Path(os.path.relpath(path, root)).as_posix()
                local[name] = LocalModule(name, path, relpath)
                found = scan_imports(text, _package_of(name, path))
                sites.extend((path, s) for s in found)
                queue.extend(found)
    return ScriptImports(script, tuple(sites), tuple(local.values()), frozenset(local_names),
                         tuple(_stamp(m.path) for m in local.values()), tuple(skipped))


_analyses: dict[tuple[str, str], ScriptImports] = {}
_analyses_lock = threading.Lock()


def analyze(script: str, source: str) -> ScriptImports:
    """The imports of ``script`` (text ``source``) and the local modules it needs.

    Local modules are the modules of the script's directory that it imports, directly or
    through other local modules (``script.py`` -> ``helpers.py`` -> ``helpers2.py``;
    packages too). Cached per script text; read again when a local module's file changed.
    """
    key = (script, source)
    found = _analyses.get(key)
    if found is not None and all(_stamp(p) == (p, m, s) for p, m, s in found.stamps):
        return found
    found = _analyze(script, source)
    with _analyses_lock:
        if len(_analyses) > 256:
            _analyses.clear()
        _analyses[key] = found
    return found


# -- distributions -----------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _top_level_map() -> dict[str, tuple[str, ...]]:
    """Top-level import name -> the installed distributions providing it."""
    from importlib.metadata import packages_distributions

    return {k: tuple(dict.fromkeys(v)) for k, v in packages_distributions().items()}


def _canonical(name: str) -> str:
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


@lru_cache(maxsize=1024)
def _owners(module: str) -> tuple[str, ...]:
    """The distributions that provide module ``module`` (most specific first)."""
    top = module.partition(".")[0]
    candidates = _top_level_map().get(top, ())
    if len(candidates) <= 1 or "." not in module:
        return candidates
    # A namespace package shared by several distributions: the one holding the submodule.
    from importlib.metadata import PackageNotFoundError, distribution

    prefix = module.replace(".", "/")
    exact = []
    for name in candidates:
        try:
            files = distribution(name).files or []
        except PackageNotFoundError:
            continue
        if any(str(f).startswith((prefix + "/", prefix + ".")) for f in files):
            exact.append(name)
    return tuple(exact) or candidates


def distribution_of(module: str) -> str | None:
    """The installed distribution providing ``module`` (None: not installed, or stdlib)."""
    if module.partition(".")[0] in _NEVER:
        return None
    owners = _owners(module)
    return owners[0] if owners else None


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# -- the import check --------------------------------------------------------------------------

@dataclass(frozen=True)
class Undeclared:
    """An import the script's block does not declare.

    Attributes:
        module: the module imported.
        distribution: the installed distribution providing it.
        version: its version on this machine.
        file: the file with the import (the script or one of its local modules).
        line: the line of the import.
    """

    module: str
    distribution: str
    version: str
    file: str
    line: int


@lru_cache(maxsize=64)
def _accepted(dependencies: tuple[str, ...]) -> frozenset[str]:
    """Canonical names the remote environment will have: the declared distributions, what
    they require (per this machine's metadata), and hog-executor's runtime."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import InvalidRequirement, Requirement

    names = set(RUNTIME_DISTRIBUTIONS)
    stack: list[tuple[str, frozenset[str]]] = []
    for dep in dependencies:
        try:
            req = Requirement(dep)
        except InvalidRequirement:
            continue
        stack.append((req.name, frozenset(req.extras)))
    seen: set[tuple[str, frozenset[str]]] = set()
    while stack:
        name, extras = stack.pop()
        canonical = _canonical(name)
        if (canonical, extras) in seen:
            continue
        seen.add((canonical, extras))
        names.add(canonical)
        if canonical in RUNTIME_DISTRIBUTIONS:
            continue
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for text in reqs:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            if req.marker is not None and not any(
                    req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                continue
            stack.append((req.name, frozenset(req.extras)))
    return frozenset(names)


@lru_cache(maxsize=256)
def undeclared_imports(found: ScriptImports, dependencies: tuple[str, ...]
                       ) -> tuple[Undeclared, ...]:
    """The imports of ``found`` that would fail remotely with ``dependencies``.

    An import counts when it is not guarded (``try/except ImportError``,
    ``if TYPE_CHECKING:``), not relative, not of the standard library or of the script's
    directory, and its module belongs to a distribution installed on this machine that is
    neither declared, nor required by a declared one, nor hog-executor's runtime
    (cloudpickle, hog-executor).
    """
    accepted = _accepted(dependencies)
    out: dict[tuple[str, str], Undeclared] = {}
    for file, s in found.sites:
        if s.guarded or s.level or not s.module:
            continue
        top = s.module.partition(".")[0]
        if top in _NEVER or top in found.local_names:
            continue
        owners = _owners(s.module)
        if not owners or any(_canonical(d) in accepted for d in owners):
            continue
        dist = owners[0]
        key = (file, _canonical(dist))
        if key not in out:
            out[key] = Undeclared(s.module, dist, _version(dist) or "?", file, s.line)
    return tuple(out.values())


def installed_imports(found: ScriptImports) -> tuple[str, ...]:
    """The modules ``found`` imports (unguarded) that installed distributions provide: what
    a script without a block needs remotely (see `requirements_for`)."""
    return tuple(dict.fromkeys(m.module for m in undeclared_imports(found, ())))


def _display(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def undeclared_message(script: str, missing: Iterable[Undeclared]) -> str:
    """What `UndeclaredImportError` says: each import, its distribution, and the fix."""
    missing = list(missing)
    shown = _display(script)
    lines = [f"{shown} imports packages its PEP 723 block does not declare (installed here, "
             "they would be missing from the remote environment):"]
    for m in missing:
        lines.append(f"  {_display(m.file)}:{m.line}: import {m.module}: distribution "
                     f"{m.distribution} {m.version} is installed here, not declared")
    names = " ".join(dict.fromkeys(m.distribution for m in missing))
    lines.append(f"Fix: hog add {shown} {names}")
    lines.append("(or guard the import with try/except ImportError, or set "
                 "check_imports = false to skip this check)")
    return "\n".join(lines)


def check_script(script: str, meta: ScriptMetadata) -> ScriptImports:
    """The script's imports, checked against its block (cached per script text).

    Raises:
        UndeclaredImportError: an import belongs to a distribution installed on this
            machine that the block does not declare.
    """
    found = analyze(script, meta.source)
    missing = undeclared_imports(found, tuple(meta.dependencies))
    if missing:
        raise UndeclaredImportError(undeclared_message(script, missing), script=script,
                                    missing=missing)
    return found


# -- inferred dependencies ---------------------------------------------------------------------

def _pin(dist: str) -> str | None:
    """``dist`` as a requirement for the version installed here (None: cannot be pinned:
    installed from a local directory)."""
    import json
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        found = distribution(dist)
    except PackageNotFoundError:
        return None
    name = found.metadata["Name"] or dist
    direct = found.read_text("direct_url.json")
    if direct:
        try:
            info = json.loads(direct)
        except ValueError:
            info = {}
        url = info.get("url", "")
        vcs = info.get("vcs_info")
        if vcs and url:
            commit = vcs.get("commit_id")
            return f"{name} @ {vcs.get('vcs', 'git')}+{url}" + (f"@{commit}" if commit else "")
        if url.startswith("file://"):
            return None
        if url:
            return f"{name} @ {url}"
    return f"{name}=={found.version}"


def requirements_for(modules: Iterable[str]) -> tuple[str, ...]:
    """Pinned requirements (``name==version``, as installed here) for the distributions
    providing ``modules``: the standard library, local modules, hog-executor and cloudpickle
    are left out, and so are distributions installed from a local directory."""
    pins: dict[str, str] = {}
    for name in sorted(set(modules)):
        if not name or name.partition(".")[0] in _NEVER or is_local_module(name):
            continue
        dist = distribution_of(name)
        if dist is None:
            continue
        canonical = _canonical(dist)
        if canonical in RUNTIME_DISTRIBUTIONS or canonical in pins:
            continue
        pin = _pin_cached(dist)
        if pin is not None:
            pins[canonical] = pin
    return tuple(pins[k] for k in sorted(pins))


@lru_cache(maxsize=512)
def _pin_cached(dist: str) -> str | None:
    return _pin(dist)
