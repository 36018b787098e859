"""Endpoint resolution: builtin < user file < script < executor kwargs < per-call options.

An *endpoint* is a name that resolves to a backend plus configuration values. Names come from
the builtin backends (``local``, ...), a bare Globus Compute endpoint UUID, ``[tool.hog.<name>]``
tables in the script's PEP 723 block, and the same tables in the user's config file. A dotted
name (``anvil.gpu``) is a variant: it inherits every key of ``anvil`` and overrides some.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .script import check_requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "COMMON_KEYS",
    "Endpoint",
    "Key",
    "parse_walltime",
    "resolve_endpoint",
    "user_config_path",
]

#: Linux's limit on one ``NAME=value`` string of a process's environment (MAX_ARG_STRLEN,
#: counting its terminating NUL): a longer variable makes starting the call fail (E2BIG).
MAX_ENV_STRING = 128 * 1024

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Key:
    """One configuration key: its meaning, how its value is checked, and where it applies.

    Attributes:
        name: the key as written in TOML and keyword arguments.
        doc: one line saying what it does.
        check: returns the normalized value or raises ``ValueError`` with a reason.
        per_call: whether ``ex.options(...)`` may override it.
    """

    name: str
    doc: str
    check: Callable[[Any], Any]
    per_call: bool = True


def _typed(*types: type, what: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool) and bool not in types:
            raise ValueError(f"expected {what}")
        if not isinstance(value, types):
            raise ValueError(f"expected {what}, got {type(value).__name__}")
        return value

    return check


def positive_int(value: Any) -> int:
    """Check a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def parse_walltime(value: Any) -> float | None:
    """Parse a walltime: seconds (int/float) or ``[D-]HH:MM:SS`` / ``MM:SS`` text; None = none."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("expected seconds or [D-]HH:MM:SS")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"walltime must be a positive number of seconds, got {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        # Slurm's forms: MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
        m = re.fullmatch(r"(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", text)
        d = re.fullmatch(r"(\d+)-(\d+)(?::(\d+))?(?::(\d+(?:\.\d+)?))?", text)
        total = 0.0
        if m:
            hours, minutes, seconds = m.groups()
            total = int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
        elif d:
            days, hours, minutes, seconds = d.groups()
            total = (int(days) * 86400 + int(hours) * 3600 + int(minutes or 0) * 60
                     + float(seconds or 0))
        if (m or d) and total > 0:
            return total
        elif re.fullmatch(r"\d+(\.\d+)?", text):
            return parse_walltime(float(text))
    raise ValueError(f"expected seconds or [D-]HH:MM:SS, got {value!r}")


def _env(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of NAME = \"value\"")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            raise ValueError(f"{k!r} is not a valid environment variable name")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ValueError(f"value of {k} must be a string or number")
        out[k] = str(v)
        size = len(k) + 1 + len(out[k].encode("utf-8", "surrogateescape")) + 1
        if size > MAX_ENV_STRING:
            raise ValueError(
                f"{k} is {size - len(k) - 2:,} bytes: one environment variable may hold at most "
                f"128 KiB on Linux (the call could not start); send data as an argument of "
                "the call instead"
            )
    return out


def _lines(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise ValueError("expected bash text or a list of lines")


def _deps(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError("expected a list of requirements")
    for dep in value:
        if not isinstance(dep, str):
            raise ValueError(f"{dep!r} is not a requirement string")
        check_requirement(dep, "dependencies")
    return tuple(value)


def _requires_python(value: Any) -> str:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    if not isinstance(value, str):
        raise ValueError("expected a specifier string such as \">=3.10\"")
    try:
        SpecifierSet(value)
    except InvalidSpecifier:
        raise ValueError(f"{value!r} is not a version specifier") from None
    return value


def _size(value: Any) -> int:
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?)?[bB]?\s*", value)
        if not m:
            raise ValueError(f"expected bytes or a size like \"10MB\", got {value!r}")
        number, unit = float(m.group(1)), (m.group(2) or "").lower()
        base = 1024 if unit.endswith("i") else 1000
        power = {"": 0, "k": 1, "m": 2, "g": 3}[unit[:1]]
        value = int(number * base**power)
    return positive_int(value)


def _path(value: Any) -> str:
    # "~" is kept: it means the home directory where the bundle runs, not the client's.
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError("expected a path")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise ValueError("expected a path as text")
    return path


def _cache_dir(value: Any) -> str:
    path = _path(value)
    if path == "~":
        path = "~/"
    if not path.startswith(("/", "~/")):
        raise ValueError(
            "expected an absolute path of the executing machine, or one starting with ~/ "
            "(its home directory): a relative path would depend on the directory each call "
            "starts in"
        )
    return path


def _ranks(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of processes, at least 1 (1: the call runs "
                         f"in one process, as without ranks), got {value!r}")
    return value


def _launcher(value: Any) -> str:
    from .launchers import check_launcher_name

    return check_launcher_name(value)


def _launcher_flags(value: Any) -> tuple[str, ...]:
    from .launchers import check_launcher_flags

    return check_launcher_flags(value)


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def _retry_on(value: Any) -> Any:
    if callable(value) and not isinstance(value, type):
        return value
    kinds = (value,) if isinstance(value, type) else value
    if not (isinstance(kinds, tuple) and kinds
            and all(isinstance(k, type) and issubclass(k, BaseException) for k in kinds)):
        raise ValueError("expected exception types (a class or a tuple of classes) or a "
                         "predicate taking the exception")
    return kinds
def _cache(value: Any) -> Any:
    if isinstance(value, bool):
        return value or None
    if value is None:
        return None
    path = os.path.expanduser(_path(value))  # a path of the client: ~ is expanded here
    if not os.path.isabs(path):
        raise ValueError("expected true, false or an absolute path (~/ allowed)")
    return path


def _store(value: Any) -> Any:
    from .store import check_store

    return check_store(value)


#: Keys every backend understands.
COMMON_KEYS: dict[str, Key] = {
    k.name: k
    for k in [
        Key("backend", "which backend runs this endpoint", _typed(str, what="a backend name"),
            per_call=False),
        Key("walltime", "kill a call running longer than this (seconds or [D-]HH:MM:SS)",
            parse_walltime),
        Key("env", "environment variables set for the call", _env),
        Key("worker_init", "bash lines run before the call (module load, ...)", _lines),
        Key("payload_limit", "largest serialized call accepted (bytes or \"10MB\")", _size),
        Key("requires_python", "Python for calls without a script block", _requires_python),
        Key("dependencies", "extra requirements installed into the call's environment", _deps),
        Key("cache_dir", "parent of the remote environment cache (sets HOG_CACHE_DIR)",
            _cache_dir),
        Key("store", "ProxyStore store for large data: a shared directory, a redis:// URL or "
            "a proxystore Store", _store, per_call=False),
        Key("proxy_threshold", "objects whose pickle is larger travel through the store "
            "(bytes or \"1MB\"; default 1 MB)", _size),
        Key("retries", "times a call runs again when its process or node died without an "
            "answer (a signal, OOM, NODE_FAIL, PREEMPTED, a lost worker); default 0",
            _non_negative_int),
        Key("max_requeues", "continuations (hog_executor.Continue) one call may ask for; "
            "one more is an error (default 3)", _non_negative_int),
        Key("retry_on", "exception types (a tuple) or a predicate: calls that raised them also "
            "run again, within retries (executor argument or options() only)", _retry_on),
        Key("cache", "keep each call's result, keyed by its code, arguments and environment, "
            "and never run a call whose result is kept (true, or a directory of the client)",
            _cache),
        Key("cache_failures", "also keep failures in the result cache",
            _typed(bool, what="true or false")),
        Key("fresh_process", "run each call (or map chunk) in a process of its own instead of "
            "a warm runner", _typed(bool, what="true or false")),
        Key("check_imports", "at submit, an import of an installed package the script's "
            "PEP 723 block does not declare is an error (default true)",
            _typed(bool, what="true or false")),
        Key("ranks", "processes (MPI ranks) each call runs on, started by the launcher "
            "(default 1)", _ranks),
        Key("all_ranks", "with ranks > 1, the call's value is the list of every rank's "
            "value in rank order (default: rank 0's value)", _typed(bool, what="true or false")),
        Key("launcher", "what starts the ranks: mpiexec, mpirun, srun, endpoint, or a "
            "launcher of the hog_executor.launchers entry-point group (default: srun on "
            "slurm, endpoint on globus, else mpiexec)", _launcher),
        Key("launcher_flags", "extra words for the launcher's command line", _launcher_flags),
    ]
}

DEFAULT_PAYLOAD_LIMIT = 10_000_000


@dataclass(frozen=True)
class Endpoint:
    """A resolved endpoint.

    Attributes:
        name: the name the user gave.
        backend: the backend name.
        values: every configured key (validated).
        sources: for each key, where its value came from.
    """

    name: str
    backend: str
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def with_overrides(self, overrides: Mapping[str, Any], keys: Mapping[str, Key],
                       source: str = "options()") -> Endpoint:
        """Return a copy with per-call ``overrides`` applied.

        Raises:
            ConfigError: a key is unknown or may not change per call.
        """
        values = dict(self.values)
        sources = dict(self.sources)
        for name, raw in overrides.items():
            key = _lookup_key(name, keys, self.name)
            if not key.per_call:
                raise ConfigError(
                    f"{name!r} cannot change per call; create another HogExecutor for it"
                )
            _merge(values, sources, name, _check(key, raw, f"{source}"), source)
        return Endpoint(self.name, self.backend, values, sources)


def user_config_path() -> Path:
    """The user-level config file: ``$HOG_CONFIG_FILE``, else the XDG config dir."""
    explicit = os.environ.get("HOG_CONFIG_FILE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "hog-executor" / "config.toml"


def _read_user_config() -> tuple[dict[str, Any], str]:
    path = user_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, str(path)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return data, str(path)


def _lookup_key(name: str, keys: Mapping[str, Key], endpoint: str, why: str = "") -> Key:
    try:
        return keys[name]
    except KeyError:
        raise ConfigError(
            f"unknown key {name!r} for endpoint {endpoint!r}; known keys: "
            f"{', '.join(sorted(keys))}" + (f"; {why}" if why else "")
        ) from None


def _nul(value: Any, depth: int = 0) -> bool:
    """Whether a NUL character is in ``value``: its text, or a table's or list's items."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, (bytes, bytearray)):
        return b"\x00" in value
    if depth < 8 and isinstance(value, Mapping):
        return any(_nul(k, depth + 1) or _nul(v, depth + 1) for k, v in value.items())
    if depth < 8 and isinstance(value, (list, tuple)):
        return any(_nul(v, depth + 1) for v in value)
    return False


def _short(raw: Any, limit: int = 80) -> str:
    text = repr(raw)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _check(key: Key, raw: Any, where: str) -> Any:
    try:
        value = key.check(raw)
        # Values reach bash, the environment, command lines or a scheduler: none of them
        # can hold a NUL, and it would cut the value short or fail late.
        if _nul(value):
            raise ValueError("contains a NUL character (\\x00), which no value may hold")
    except ValueError as exc:
        raise ConfigError(f"{where}: {key.name} = {_short(raw)}: {exc}") from None
    return value


def _merge(values: dict[str, Any], sources: dict[str, str], name: str, value: Any,
           source: str) -> None:
    if name == "env" and isinstance(values.get("env"), dict):
        value = {**values["env"], **value}
    values[name] = value
    sources[name] = source


def _own(layer: Mapping[str, Any], dotted: str) -> dict[str, Any] | None:
    """The values written in table ``a.b.c`` itself (its sub-tables included), or None."""
    node: Any = layer
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return None
    return dict(node)


def _names(layer: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in layer.items():
        if isinstance(v, dict) and k not in COMMON_KEYS:
            out.append(prefix + k)
            out.extend(_names(v, prefix + k + "."))
    return out


def resolve_endpoint(
    name: str,
    *,
    script_tables: Mapping[str, Any] | None = None,
    script_source: str = "script",
    kwargs: Mapping[str, Any] | None = None,
    backend_keys: Callable[[str], Mapping[str, Key]],
    builtin_backends: Callable[[], list[str]],
) -> Endpoint:
    """Resolve an endpoint name through every configuration layer.

    Args:
        name: ``"local"``, a table name (``"anvil"``, ``"anvil.gpu"``) or an endpoint UUID.
        script_tables: the script's ``[tool.hog]`` table.
        script_source: how to name the script in messages.
        kwargs: configuration given to the executor.
        backend_keys: maps a backend name to its keys (raises ConfigError if unknown).
        builtin_backends: the names of installed backends.

    Raises:
        ConfigError: the name is unknown, a key is unknown or a value is invalid; the message
            lists what is known.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"endpoint must be a non-empty string, got {name!r}")
    user, user_source = _read_user_config()
    files = ((user_source, user), (script_source, script_tables or {}))
    # ``anvil.gpu`` inherits ``anvil``: parents first, and within one level the later layer wins.
    parts = name.split(".")
    layers: list[tuple[str, dict[str, Any]]] = []
    for depth in range(1, len(parts) + 1):
        for source, tables in files:
            table = _own(tables, ".".join(parts[:depth]))
            if table is not None:
                if depth < len(parts):
                    table.pop(parts[depth], None)  # the child being resolved is not a value
                layers.append((source, table))
    if not any(_own(tables, name) is not None for _, tables in files):
        layers = []
    backends = builtin_backends()
    root = name.split(".", 1)[0]
    backend: str | None = None
    backend_source = "builtin"
    builtin: dict[str, Any] = {}
    if _UUID.match(name):
        backend, builtin = "globus", {"endpoint": name}
    elif root in backends:
        backend = root
    for source, table in layers:
        if "backend" in table:
            backend = _check(COMMON_KEYS["backend"], table["backend"], source)
            backend_source = source
        elif isinstance(table.get("endpoint"), str) and backend is None:
            backend, backend_source = "globus", source
    if backend is None:
        if layers:
            raise ConfigError(
                f"endpoint {name!r} does not say which backend runs it: add backend = "
                f"\"<name>\" (one of {', '.join(backends)}) or endpoint = \"<globus uuid>\""
            )
        known = sorted({*backends, *_names(user), *_names(script_tables or {})})
        raise ConfigError(
            f"unknown endpoint {name!r}; known endpoints: {', '.join(known)} (define others in "
            f"[tool.hog.<name>] of the script's PEP 723 block or in {user_source}, or pass a "
            "Globus Compute endpoint UUID)"
        )
    # ``backend=`` given to the executor is the last layer: it selects the backend too.
    chosen = (kwargs or {}).get("backend")
    if chosen is not None:
        if not isinstance(chosen, str) or not chosen:
            raise ConfigError(f"executor arguments: backend = {_short(chosen)}: expected a "
                              f"backend name (one of {', '.join(backends)})")
        backend, backend_source = chosen, "executor arguments"
    try:
        keys = backend_keys(backend)
    except ConfigError as exc:
        raise ConfigError(f"{backend_source}: backend = {_short(backend)}: {exc}") from None
    runs_on = f"endpoint {name!r} runs on the {backend} backend (set by {backend_source})"
    values: dict[str, Any] = {"backend": backend}
    sources: dict[str, str] = {"backend": backend_source}
    all_layers = [("builtin", builtin), *layers, ("executor arguments", dict(kwargs or {}))]
    for source, table in all_layers:
        for key_name, raw in table.items():
            if raw is None and source == "executor arguments":
                continue
            if isinstance(raw, dict) and key_name not in keys and source != "executor arguments":
                continue  # a variant table, not a value
            if key_name == "backend":
                continue  # decided above, with its source
            key = _lookup_key(key_name, keys, name, f"{source} sets it, and {runs_on}")
            _merge(values, sources, key_name, _check(key, raw, source), source)
    return Endpoint(name, backend, values, sources)
