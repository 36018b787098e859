"""Serialize calls for the runner and decode what it sends back.

Objects defined in the user's script (functions, classes) travel *by reference* to the module
the runner imports the script as (``__hog_script__``), in both directions: a ``Point`` made on
the client is a ``Point`` of the remote script, and a ``Point`` returned by the remote function
is the client's own ``Point`` again.

What else travels by value is decided for each pickle from the pickled objects alone
(nothing is registered with cloudpickle process-wide): functions, classes and modules of
*local* modules (`hog_executor.imports.is_local_module`: ``__main__``, a file outside the
standard library and site-packages) are pickled by value, except the script's local modules
that travel with it (`set_remote_modules`). Lambdas and closures travel by value as
cloudpickle does; everything else by reference.
"""

from __future__ import annotations

import io
import operator
import pickle
import sys
import types
import typing
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle

from .errors import PayloadTooLargeError, RemoteError, RemoteTraceback, SerializationError
from .imports import is_local_module
from .runner import (
    DYNAMIC_CODE,
    OUTCOME_STORED,
    OUTCOME_VALUE,
    PROTOCOL,
    SCRIPT_MODULE,
    STORE_FRAME_MAGIC,
    code_with_source,
)

__all__ = ["Outcome", "by_reference", "decode_outcome", "dumps", "loads", "pack_payload",
           "references", "set_remote_modules"]

_cp = cloudpickle.cloudpickle  # its reducers for what travels by value (3.0 to 3.1.x)
_NO_MODULES: frozenset[str] = frozenset()

#: For the client module of a script: the names of the local modules that travel with the
#: script (its siblings): their objects pickle by reference, the remote side imports them.
_remote_modules: weakref.WeakKeyDictionary[types.ModuleType, frozenset[str]] = (
    weakref.WeakKeyDictionary())


def set_remote_modules(module: types.ModuleType, names: frozenset[str]) -> None:
    """Local modules named ``names`` travel with the script whose client module is
    ``module``: pickles made for that script refer to them by name."""
    _remote_modules[module] = names


def remote_modules(module: types.ModuleType | None) -> frozenset[str]:
    """The local modules travelling with ``module``'s script (see `set_remote_modules`)."""
    if module is None:
        return _NO_MODULES
    return _remote_modules.get(module, _NO_MODULES)


def by_reference(fn: Any, module: types.ModuleType | None) -> bool:
    """Whether ``fn`` pickles as a name only (its pickle never changes), for calls of the
    script whose client module is ``module``."""
    if not isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, type)):
        return False
    qualname = getattr(fn, "__qualname__", "")
    name = getattr(fn, "__module__", None)
    if "<" in qualname or not isinstance(name, str):
        return False
    if module is not None and name == module.__name__:
        return True  # the script's own functions travel as __hog_script__.<name>
    return name in remote_modules(module) or not is_local_module(name)



def _resolve(module: types.ModuleType, qualname: str) -> Any:
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class _ScriptModule:
    """Stands for the remote script module inside a pickle."""

    def __reduce__(self) -> tuple[Any, ...]:
        import importlib

        return (importlib.import_module, (SCRIPT_MODULE,))


#: Puts a pickle and its out-of-band buffers into a store and returns what stands for them
#: inline (an object whose ``__reduce__`` rebuilds the original remotely, such as `Proxied`).
Offload = Callable[[bytes, list[pickle.PickleBuffer]], Any]


def _large(obj: Any, threshold: int) -> bool:
    """Whether ``obj`` is cheaply known to be larger than ``threshold`` bytes."""
    kind = type(obj)
    if kind in (bytes, bytearray, str):
        return len(obj) > threshold
    # Only the type is inspected before ``nbytes``: touching a ProxyStore proxy (even
    # isinstance) would resolve it.
    if issubclass(kind, type) or getattr(kind, "nbytes", None) is None:
        return False
    try:
        size = obj.nbytes
    except Exception:
        return False
    return isinstance(size, int) and size > threshold


class Proxied:
    """Stands for an argument in the store: unpickles remotely as the argument itself.

    ``ref`` is the `hog_executor.store.StoredRef` of its frame.
    """

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def __reduce__(self) -> tuple[Any, ...]:
        from .store import load_ref

        return (load_ref, (self.ref,))


#: Source files larger than this are not sent along with their code.
SOURCE_LIMIT = 1_000_000


def _source_lines(filename: str) -> list[str] | None:
    """The lines of ``filename`` as ``linecache`` has them (one list object per file, so a
    pickle holds it once), or None when unknown or too large."""
    import linecache

    lines = linecache.getlines(filename)
    if not lines or sum(map(len, lines)) > SOURCE_LIMIT:
        return None
    return lines


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    def __init__(self, file: Any, module: types.ModuleType | None,
                 offload: Offload | None = None, threshold: int = 0,
                 buffers: list[pickle.PickleBuffer] | None = None,
                 refs: set[str] | None = None) -> None:
        super().__init__(file, protocol=PROTOCOL,
                         buffer_callback=None if buffers is None else buffers.append)
        self._module = module
        self._module_name = module.__name__ if module is not None else None
        self._offload = offload
        self._threshold = threshold
        self._remote = remote_modules(module)
        self._refs = refs

    def _note(self, obj: Any, kind: type) -> None:
        """Remember the modules ``obj`` refers to (for inferred dependencies)."""
        assert self._refs is not None
        name = getattr(kind, "__module__", None)
        if isinstance(name, str):
            self._refs.add(name)
        if kind is types.ModuleType:
            self._refs.add(obj.__name__)
        elif kind in (types.FunctionType, types.BuiltinFunctionType) or issubclass(kind, type):
            name = getattr(obj, "__module__", None)
            if isinstance(name, str):
                self._refs.add(name)

    def _local(self, obj: Any, kind: type) -> bool:
        """Whether ``obj`` (a function, class, module or type variable) belongs to a local
        module that the remote side cannot import: it then travels by value."""
        if kind is types.ModuleType:
            name = obj.__name__
        elif kind is types.FunctionType or kind is typing.TypeVar or issubclass(kind, type):
            name = getattr(obj, "__module__", None)
        else:
            return False
        return isinstance(name, str) and name not in self._remote and is_local_module(name)

    def _by_value(self, obj: Any, kind: type) -> Any:
        """The reduction of a local function, class, module or type variable by value,
        for this pickle only (cloudpickle's own reducers; no process-wide registration)."""
        if kind is types.FunctionType:
            return self._dynamic_function_reduce(obj)
        if kind is types.ModuleType:
            # Created empty, then filled: a module reached again from its own functions
            # (helpers -> helpers2 -> helpers) is the same module remotely.
            state = {k: v for k, v in vars(obj).items() if k != "__builtins__"}
            return (_cp.dynamic_subimport, (obj.__name__, {}), state)
        if kind is typing.TypeVar:
            return (_cp._make_typevar, _cp._decompose_typevar(obj))
        return _cp._dynamic_class_reduce(obj)

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is types.CodeType and obj.co_filename != DYNAMIC_CODE:
            # Code sent by value keeps its file name and source lines (cloudpickle renames
            # the file): remote tracebacks show the user's code. The stub pickles as usual.
            return (code_with_source, (obj.replace(co_filename=DYNAMIC_CODE), obj.co_filename,
                                       _source_lines(obj.co_filename)))
        if kind.__name__ == "Proxy" and kind.__module__ == "proxystore.proxy":
            # Its own reduction: any isinstance() check would resolve the proxy here.
            return obj.__reduce_ex__(PROTOCOL)
        if self._refs is not None:
            self._note(obj, kind)
        if self._offload is not None and _large(obj, self._threshold):
            # Large buffers out of band: they go from the object to the store uncopied.
            buffers: list[pickle.PickleBuffer] = []
            data = dumps(obj, self._module, buffers=buffers)
            if len(data) + sum(b.raw().nbytes for b in buffers) > self._threshold:
                return self._offload(data, buffers).__reduce__()
            return (pickle.loads, (dumps(obj, self._module),))
        if (
            self._module_name is not None
            and isinstance(obj, (type, types.FunctionType))
            and getattr(obj, "__module__", None) == self._module_name
            and "<" not in obj.__qualname__
        ):
            try:
                found = _resolve(self._module, obj.__qualname__)  # type: ignore[arg-type]
            except AttributeError:
                found = None
            if found is obj:
                return (operator.attrgetter(obj.__qualname__), (_ScriptModule(),))
        if obj is self._module and self._module is not None:
            return _ScriptModule().__reduce__()
        try:
            if self._local(obj, kind):
                return self._by_value(obj, kind)
        except TypeError:  # an exotic type (issubclass refused it): cloudpickle decides
            pass
        return super().reducer_override(obj)


class _Discard:
    """A file that forgets what is written to it (pickling only to see what is reached)."""

    def write(self, data: Any) -> int:
        return len(data)


def references(obj: Any, module: types.ModuleType | None = None) -> set[str]:
    """The names of the modules a pickle of ``obj`` refers to (its objects' modules and
    the modules it imports by name). Nothing is kept: out-of-band buffers are dropped.

    Raises whatever pickling raises.
    """
    refs: set[str] = set()
    _Pickler(_Discard(), module, buffers=[], refs=refs).dump(obj)
    return refs


def dumps(obj: Any, module: types.ModuleType | None = None, offload: Offload | None = None,
          threshold: int = 0, buffers: list[pickle.PickleBuffer] | None = None,
          refs: set[str] | None = None) -> bytes:
    """Pickle ``obj`` for the runner; ``module`` is the client's module of the script.

    With ``offload``, objects known to be over ``threshold`` bytes (bytes, str, arrays) are
    pickled separately, handed to ``offload`` and replaced by what it returns (a `Proxied`).
    With ``buffers``, buffers that support it (contiguous NumPy arrays...) are appended to it
    instead of being copied into the pickle (protocol 5 out-of-band data).

    With ``refs``, the names of the modules the pickle refers to are added to it.

    Raises whatever pickling raises (callers turn it into `SerializationError`).
    """
    buf = io.BytesIO()
    _Pickler(buf, module, offload, threshold, buffers, refs=refs).dump(obj)
    return buf.getvalue()


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, module: types.ModuleType | None,
                 buffers: Iterable[Any] | None = None) -> None:
        super().__init__(file, buffers=buffers)
        self._module = module

    def find_class(self, module: str, name: str) -> Any:
        if module == SCRIPT_MODULE and self._module is not None:
            return _resolve(self._module, name)
        found = super().find_class(module, name)
        if self._module is not None and (module, name) in _IMPORTERS:
            script_module = self._module

            def importer(modname: str, *rest: Any) -> Any:
                return script_module if modname == SCRIPT_MODULE else found(modname, *rest)

            return importer
        return found


_IMPORTERS = {("importlib", "import_module"), ("cloudpickle.cloudpickle", "subimport")}


_SCRIPT_REFERENCE = SCRIPT_MODULE.encode()


def loads(data: Any, module: types.ModuleType | None = None) -> Any:
    """Unpickle ``data`` from the runner, mapping the remote script module to ``module``.

    ``data`` is a pickle or a frame from the store (a pickle and its out-of-band buffers,
    which the unpickled object may keep using: see `hog_executor.store.split_frame`).
    """
    framed = data[:len(STORE_FRAME_MAGIC)] == STORE_FRAME_MAGIC
    if not framed and (module is None or _SCRIPT_REFERENCE not in data):
        return pickle.loads(data)  # nothing to map to the client's script module
    if framed:
        from .store import split_frame

        meta, buffers = split_frame(data)
        return _Unpickler(io.BytesIO(meta), module, buffers).load()
    return _Unpickler(io.BytesIO(data), module).load()


def _describe(obj: Any) -> str:
    text = repr(obj)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(obj).__qualname__} {text}"


#: Argument types a plain pickle writes as the value itself (no class, no module).
_PLAIN = frozenset({int, float, str, bool, type(None), complex})
#: Strings and bytes up to this size take the fast path (larger ones may go to a store).
_PLAIN_SIZE = 4096


def _plain(args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """Whether every argument is a small plain value (numbers, short strings...)."""
    for value in (*args, *kwargs.values()):
        kind = type(value)
        if kind not in _PLAIN and not (kind is bytes and len(value) <= _PLAIN_SIZE):
            return False
        if kind is str and len(value) > _PLAIN_SIZE:
            return False
    return True


def dumps_call(
    args: Sequence[Any], kwargs: dict[str, Any], module: types.ModuleType | None,
    offload: Offload | None = None, threshold: int = 0, refs: set[str] | None = None,
) -> bytes:
    """Pickle one call's arguments.

    With ``offload``, arguments whose pickle is over ``threshold`` bytes go to the store
    through it and travel as store handles (see `dumps`). With ``refs``, the names of the
    modules the arguments' pickle refers to are added to it.

    Raises:
        SerializationError: an argument cannot be pickled; the message names it.
    """
    if (offload is None or threshold >= _PLAIN_SIZE) and _plain(args, kwargs):
        # nothing a plain pickle would write differently, and nothing for a store
        return pickle.dumps((tuple(args), kwargs), protocol=PROTOCOL)
    try:
        data = dumps((tuple(args), kwargs), module, offload, threshold, refs=refs)
        if offload is None or len(data) <= threshold:
            return data
        # Still large: offload each top-level argument that is over the threshold by itself.
        def small(value: Any) -> Any:
            buffers: list[pickle.PickleBuffer] = []
            item = dumps(value, module, offload, threshold, buffers)
            size = len(item) + sum(b.raw().nbytes for b in buffers)
            return offload(item, buffers) if size > threshold else value

        return dumps((tuple(small(a) for a in args), {k: small(v) for k, v in kwargs.items()}),
                     module, offload, threshold)
    except Exception as exc:
        named: Iterable[tuple[str, Any]] = [
            *((f"argument {i}", a) for i, a in enumerate(args)),
            *((f"keyword argument {k!r}", v) for k, v in kwargs.items()),
        ]
        for label, value in named:
            try:
                dumps(value, module)
            except Exception as inner:
                raise SerializationError(
                    f"{label} ({_describe(value)}) cannot be pickled: {inner}. Pass something "
                    "the function can rebuild remotely (a path, parameters) or create the object "
                    "inside the function."
                ) from exc
        raise SerializationError(f"the arguments cannot be pickled: {exc}") from exc


def dumps_function(fn: Any, module: types.ModuleType | None,
                   refs: set[str] | None = None) -> bytes:
    """Pickle the function to call; with ``refs``, add the names of the modules the pickle
    refers to (see `references`).

    Raises:
        SerializationError: the function (or something it references) cannot be pickled.
    """
    try:
        if refs is None:
            return dumps(fn, module)
        buf = io.BytesIO()
        _Pickler(buf, module, refs=refs).dump(fn)
        return buf.getvalue()
    except Exception as exc:
        raise SerializationError(
            f"function {getattr(fn, '__qualname__', fn)!r} cannot be pickled: {exc}. Define it at "
            "the top level of the script, or make sure what it references can be pickled."
        ) from exc


def pack_payload(header: bytes, fn_bytes: bytes, items: Sequence[bytes], limit: int,
                 store_config: bytes | None = None, has_store: bool = False) -> bytes:
    """Assemble the runner's payload file; check it against ``limit``.

    ``store_config`` (a pickled ProxyStore ``StoreConfig``) lets the runner put large
    results into the store.

    Raises:
        PayloadTooLargeError: the payload is over ``limit`` bytes.
    """
    parts: tuple[Any, ...] = (fn_bytes, list(items))
    if store_config is not None:
        parts = (*parts, store_config)
    body = pickle.dumps(parts, protocol=PROTOCOL)
    size = len(header) + 1 + len(body)
    if size > limit:
        if has_store:
            fix = ("Large arguments already travel through the store: lower proxy_threshold, "
                   "pass fewer arguments per call, or raise payload_limit.")
        else:
            fix = ("Set store= (a shared directory, a redis://host:port URL or a "
                   "proxystore.store.Store) so arguments over proxy_threshold travel through "
                   "ProxyStore, pass a path the function reads remotely instead of the data, or "
                   "raise payload_limit if the endpoint accepts more.")
        raise PayloadTooLargeError(
            f"the serialized call is {size:,} bytes, over the payload limit of {limit:,} "
            f"bytes. {fix}",
            size=size,
            limit=limit,
        )
    return header + b"\n" + body


@dataclass(frozen=True)
class Outcome:
    """One call's result as decoded on the client: a value or an exception to raise."""

    ok: bool
    value: Any = None
    error: BaseException | None = None


def decode_outcome(raw: tuple[Any, ...], module: types.ModuleType | None, store: Any = None,
                   keep_stored: bool = False) -> Outcome:
    """Turn one runner outcome into a value or the exception to raise on the client.

    A remote exception is re-created as its original type with the remote traceback attached
    as ``__cause__``; when that is impossible it becomes `RemoteError`. A result the runner put
    into ``store`` (a `ClientStore`) is fetched and evicted, or with ``keep_stored`` left there
    and returned as a `StoredRef`.
    """
    if raw[0] == OUTCOME_STORED:
        try:
            ref = store.adopt(pickle.loads(raw[1]), raw[2])
            if keep_stored:
                return Outcome(True, ref)
            try:
                data = store.get(ref)
            finally:
                store.evict(ref)
            return Outcome(True, loads(data, module))
        except Exception as exc:
            err = SerializationError(f"the result could not be fetched from the store: {exc}")
            err.__cause__ = exc
            return Outcome(False, error=err)
    if raw[0] == OUTCOME_VALUE:
        try:
            return Outcome(True, loads(raw[1], module))
        except Exception as exc:
            err = SerializationError(f"the result could not be unpickled on the client: {exc}")
            err.__cause__ = exc
            return Outcome(False, error=err)
    _, data, type_name, message, tb = raw
    error: BaseException | None = None
    if data is not None:
        try:
            error = loads(data, module)
        except Exception:
            error = None
    if not isinstance(error, BaseException):
        return Outcome(False, error=RemoteError(type_name, message, tb))
    error.__cause__ = RemoteTraceback(tb)
    return Outcome(False, error=error)


def client_module_for(script: str | None, fn: Any) -> types.ModuleType | None:
    """The module object on the client whose file is ``script`` (None if none is loaded)."""
    if script is None:
        return None
    fn_module = sys.modules.get(getattr(fn, "__module__", None) or "")
    candidates = [fn_module, sys.modules.get("__main__")]
    for mod in candidates:
        if mod is not None and _same_file(getattr(mod, "__file__", None), script):
            return mod
    for mod in list(sys.modules.values()):
        if _same_file(getattr(mod, "__file__", None), script):
            return mod
    return None


def _same_file(a: str | None, b: str) -> bool:
    if not a:
        return False
    import os

    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
