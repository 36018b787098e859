"""ProxyStore for data too large to travel inline: build the store, put, fetch, evict.

The executor's ``store`` setting is one of:

- a directory (``"/shared/scratch/hog-store"``): a ProxyStore ``FileConnector`` there; the
  directory must be reachable from where calls run (a shared filesystem);
- a Redis URL (``"redis://host:6379"``): a ``RedisConnector``;
- a ``proxystore.store.Store`` built by the caller, used as it is.

The local endpoint gets a private file store in a temporary directory when none is set.

Large objects are pickled once by the client (or the runner) with pickle protocol 5, their
large buffers (NumPy arrays...) out of band, and go into the store as one *frame* (see
`frame_parts`); what travels inline is a `StoredRef` handle, well under a kilobyte.

A file store's frames are written and read by this module directly, in the connector's own
layout (one file per object named by its key, a ``.ready`` marker beside it): buffers go from
the array to the file and from the file into the array's final memory without intermediate
copies, and remote processes need neither proxystore nor its imports (NumPy among them) to
reach the store. Files are created mode ``0600``. Other connectors are rebuilt remotely from
their configuration (``Connector.from_config``), never as a whole ``Store``: that keeps
pydantic, and about a second of imports, out of every call.

This module imports only the standard library at import time: it is imported remotely to
resolve arguments.
"""

from __future__ import annotations

import importlib
import os
import pickle
import shutil
import struct
import tempfile
import threading
import uuid
from typing import Any

from .runner import STORE_FRAME_MAGIC

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["ClientStore", "StoredRef", "check_store", "fetch", "load_ref", "open_store"]

#: Default ``proxy_threshold``: objects whose pickle is larger travel through the store.
DEFAULT_PROXY_THRESHOLD = 1_000_000


def _ps(module: str) -> Any:
    """Import a part of proxystore (lazily: only code paths that use a store need it)."""
    return importlib.import_module(module)


#: How a remote process rebuilds a connector: ``("module:Class", connector.config())``.
ConnectorSpec = tuple[str, dict[str, Any]]
#: A connector key in a form that unpickles without importing the key's class:
#: ``("module:Class", fields)`` for ProxyStore's named-tuple keys, ``("", key)`` otherwise.
RawKey = tuple[str, Any]

FILE_CONNECTOR = "proxystore.connectors.file:FileConnector"
FILE_KEY = "proxystore.connectors.file:FileKey"

_connectors: dict[bytes, Any] = {}
_connectors_lock = threading.Lock()


def connector_spec(connector: Any) -> ConnectorSpec:
    """What rebuilds ``connector`` elsewhere (ProxyStore's ``config()``/``from_config()``)."""
    kind = type(connector)
    return (f"{kind.__module__}:{kind.__qualname__}", dict(connector.config()))


def connector_from(spec: ConnectorSpec) -> Any:
    """The connector for ``spec``, built once per process."""
    ident = pickle.dumps(spec)
    with _connectors_lock:
        connector = _connectors.get(ident)
        if connector is None:
            connector = _connectors[ident] = _import(spec[0]).from_config(spec[1])
    return connector


def _import(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def raw_key(key: Any) -> RawKey:
    """``key`` in the form a `StoredRef` pickles it (see `RawKey`)."""
    kind = type(key)
    if isinstance(key, tuple) and hasattr(kind, "_fields"):
        return (f"{kind.__module__}:{kind.__qualname__}", tuple(key))
    return ("", key)


def _key_from(raw: RawKey) -> Any:
    return _import(raw[0])(*raw[1]) if raw[0] else raw[1]


# -- frames: a pickle with its out-of-band buffers --------------------------------------------
#
# MAGIC, then little-endian u64: the pickle's length and the number of buffers, one u64 length
# per buffer; the pickle; each buffer, starting at a multiple of ALIGN from the frame's start.

MAGIC = STORE_FRAME_MAGIC
ALIGN = 64
_U64 = struct.Struct("<Q")


def frame_parts(meta: bytes, buffers: Sequence[pickle.PickleBuffer] = ()) -> list[Any]:
    """The pieces of the frame holding ``meta`` (a protocol 5 pickle) and its out-of-band
    ``buffers``, to be written one after another (the buffers are not copied)."""
    views = [b.raw() for b in buffers]
    head = MAGIC + struct.pack(f"<{2 + len(views)}Q", len(meta), len(views),
                               *(v.nbytes for v in views))
    parts: list[Any] = [head, meta]
    offset = len(head) + len(meta)
    for view in views:
        pad = -offset % ALIGN
        if pad:
            parts.append(bytes(pad))
        parts.append(view)
        offset += pad + view.nbytes
    return parts


def frame_size(parts: Sequence[Any]) -> int:
    """The number of bytes of a frame's `frame_parts`."""
    return sum(memoryview(p).nbytes for p in parts)


def split_frame(data: Any) -> tuple[memoryview, list[Any]]:
    """The pickle and the buffers of a frame (or of a plain pickle: no buffers).

    Buffers are views of ``data`` when it is writable (read from a file store: no copy),
    else writable copies: arrays unpickled from them are writable either way.
    """
    view = memoryview(data).cast("B")
    if bytes(view[:len(MAGIC)]) != MAGIC:
        return view, []
    at = len(MAGIC)
    meta_len, count = struct.unpack_from("<QQ", view, at)
    lengths = struct.unpack_from(f"<{count}Q", view, at + 16)
    at += 16 + 8 * count
    meta = view[at:at + meta_len]
    at += meta_len
    buffers: list[Any] = []
    for n in lengths:
        at += -at % ALIGN
        part = view[at:at + n]
        buffers.append(part if not view.readonly else bytearray(part))
        at += n
    if at != view.nbytes:
        raise ValueError(f"a stored frame is {view.nbytes:,} bytes, expected {at:,}")
    return meta, buffers


def loads_frame(data: Any) -> Any:
    """Unpickle a frame (or a plain pickle) with the standard unpickler."""
    meta, buffers = split_frame(data)
    return pickle.loads(meta, buffers=buffers)


def _loads_parts(meta: bytes, buffers: list[Any]) -> Any:
    """Rebuild an object from a pickle and its buffers (an argument kept inline)."""
    return pickle.loads(meta, buffers=buffers)


# -- reading and writing a file store directly --------------------------------------------------


def _file_path(spec: ConnectorSpec, raw: RawKey) -> str:
    return os.path.join(str(spec[1]["store_dir"]), str(raw[1][0]))


def _write_file(store_dir: str, parts: Sequence[Any]) -> RawKey:
    """Write a frame into a file store, as ``FileConnector.put`` lays it out; 0600 files."""
    os.makedirs(store_dir, mode=0o700, exist_ok=True)
    name = str(uuid.uuid4())
    path = os.path.join(store_dir, name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    try:
        with open(fd, "wb", buffering=0) as f:
            for part in parts:
                view = memoryview(part).cast("B")
                while view:  # a raw write may be partial
                    written = f.write(view)
                    view = view[written:]
        os.close(os.open(path + ".ready", flags, 0o600))
    except BaseException:
        for leftover in (path, path + ".ready"):
            try:
                os.remove(leftover)
            except OSError:
                pass
        raise
    return (FILE_KEY, (name,))


def _buffer(size: int) -> Any:
    """``size`` writable bytes to read a stored object into.

    Private anonymous memory from ``mmap``, with transparent huge pages where the system
    offers them: unlike ``bytearray(size)`` it is not zero-filled first, and it faults in
    fewer, larger pages (about twice as fast for 200 MB). What is unpickled from it keeps it
    alive (arrays use it in place).
    """
    import mmap

    private = getattr(mmap, "MAP_PRIVATE", None)
    if size < 1 << 20 or private is None:
        return bytearray(size)
    buf = mmap.mmap(-1, size, flags=private)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            buf.madvise(advice)
        except OSError:
            pass
    return buf


_prefetching: dict[str, threading.Thread] = {}
_prefetched: dict[str, Any] = {}


def prefetch(paths: Sequence[str]) -> None:
    """Start reading the files of a file store in a background thread.

    The runner calls this with the files of a call's arguments before it imports the
    script, so that reading them overlaps the imports; `_read_file` then takes what was read.
    """

    def read_all() -> None:
        for path in paths:
            try:
                _prefetched[path] = _read_file(path, wait=False)
            except Exception:
                pass  # read again (and fail there, with the error) when it is needed

    thread = threading.Thread(target=read_all, name="hog-prefetch", daemon=True)
    for path in paths:
        _prefetching[path] = thread
    thread.start()


def _read_file(path: str, wait: bool = True) -> Any:
    """A stored file's bytes read into a new writable buffer (None: not in the store)."""
    thread = _prefetching.pop(path, None) if wait else None
    if thread is not None:
        thread.join()
        data = _prefetched.pop(path, None)
        if data is not None:
            return data
    if not os.path.exists(path + ".ready"):
        return None
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        data = _buffer(size)
        view = memoryview(data)
        at = 0
        while at < size:
            n = f.readinto(view[at:])
            if not n:
                raise OSError(f"{path} ended after {at:,} of {size:,} bytes")
            at += n
    return data


def put_frame(spec: ConnectorSpec, parts: Sequence[Any]) -> RawKey:
    """Put a frame into the store of ``spec``; return its key (in raw form)."""
    if spec[0] == FILE_CONNECTOR:
        return _write_file(spec[1]["store_dir"], parts)
    return raw_key(connector_from(spec).put(b"".join(parts)))


def get_frame(spec: ConnectorSpec, raw: RawKey) -> Any:
    """The stored bytes of a frame (a writable buffer for a file store), or None."""
    if spec[0] == FILE_CONNECTOR and raw[0] == FILE_KEY:
        return _read_file(_file_path(spec, raw))
    return connector_from(spec).get(_key_from(raw))


class StoredRef:
    """An opaque handle to a frame in a store: a pickled value that stayed remote.

    Handles are what travels inline for arguments over ``proxy_threshold``, and what the
    executor keeps for results that are not needed on the client (Dask intermediates,
    persisted chunks). They are deliberately not ProxyStore proxies: a proxy resolves itself
    wherever something touches it (Dask's own type checks included), a handle only where the
    executor resolves it. Unpickling one imports nothing but this module.

    Attributes:
        connector: how to rebuild the store's connector (`ConnectorSpec`).
        raw: the connector's key (`RawKey`).
        size: the number of stored bytes.
    """

    __slots__ = ("connector", "raw", "size")

    def __init__(self, connector: ConnectorSpec, raw: RawKey, size: int) -> None:
        self.connector = connector
        self.raw = raw
        self.size = size

    def __reduce__(self) -> tuple[Any, ...]:
        return (StoredRef, (self.connector, self.raw, self.size))

    def __repr__(self) -> str:
        kind = self.connector[0].rpartition(":")[2]
        return f"<StoredRef {self.size:,} bytes in {kind}>"

    @property
    def key(self) -> Any:
        """The connector's key (imports its class)."""
        return _key_from(self.raw)

    def __call__(self) -> Any:
        """The stored bytes (a frame).

        Raises:
            KeyError: they are no longer in the store (evicted).
        """
        data = get_frame(self.connector, self.raw)
        if data is None:
            raise KeyError(f"{self!r} is no longer in the store (evicted)")
        return data

    @property
    def ident(self) -> str:
        """A string naming the stored object (for bookkeeping)."""
        return repr(self.raw)

    @property
    def file_path(self) -> str | None:
        """The file holding the object, in a file store (None: another connector)."""
        if self.connector[0] == FILE_CONNECTOR and self.raw[0] == FILE_KEY:
            return _file_path(self.connector, self.raw)
        return None


def check_store(value: Any) -> Any:
    """Validate a ``store`` setting (config key check); raises ``ValueError`` with a reason."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("expected a directory, a redis:// URL or a proxystore Store")
        if "://" in value and not value.startswith(("redis://", "file://")):
            raise ValueError(
                f"unsupported store URL {value!r}: use a directory path, file:///path or "
                "redis://host:port, or pass a proxystore.store.Store"
            )
        if value.startswith("redis://"):
            _redis_address(value)
        else:
            path = value[len("file://"):] if value.startswith("file://") else value
            path = os.path.abspath(os.path.expanduser(path))
            if os.path.isdir(path):  # an existing directory is checked now, a new one made 0700
                from .errors import ConfigError

                try:
                    check_private_dir(path)
                except ConfigError as exc:
                    raise ValueError(str(exc)) from None
        return value
    if type(value).__module__.startswith("proxystore.") and hasattr(value, "connector"):
        return value
    raise ValueError(
        f"expected a directory, a redis:// URL or a proxystore.store.Store, got "
        f"{type(value).__name__}"
    )


def _redis_address(url: str) -> tuple[str, int]:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        port = parsed.port or 6379
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    if not parsed.hostname:
        raise ValueError(f"{url!r} names no host (redis://host:port)")
    return parsed.hostname, port


def open_store(value: str | Any) -> Any:
    """Build the ProxyStore ``Store`` for a ``store`` setting (a `Store` is returned as-is).

    Raises:
        ImportError: proxystore (or redis, for a Redis URL) is not installed.
    """
    Store = _ps("proxystore.store").Store

    if isinstance(value, Store):
        store_dir = getattr(value.connector, "store_dir", None)
        if isinstance(store_dir, str) and os.path.isdir(store_dir):
            check_private_dir(store_dir)
        return value
    name = f"hog-{uuid.uuid4().hex[:12]}"
    if value.startswith("redis://"):
        host, port = _redis_address(value)
        connector: Any = _ps("proxystore.connectors.redis").RedisConnector(host, port)
    else:
        path = value[len("file://"):] if value.startswith("file://") else value
        path = os.path.abspath(os.path.expanduser(path))
        os.makedirs(path, mode=0o700, exist_ok=True)  # private when created here
        check_private_dir(path)
        connector = _ps("proxystore.connectors.file").FileConnector(path, clear=False)
    # cache_size=0: a fetched 200 MB result must not stay alive in the store's cache.
    return Store(name, connector, cache_size=0, register=True)


def check_private_dir(path: str) -> None:
    """Refuse a store directory that someone else owns or can write into.

    Results are unpickled from it, so it must be as trustworthy as this process: only its
    owner (this user) may create files there.

    Raises:
        ConfigError: the directory belongs to another user or is writable by others.
    """
    from .errors import ConfigError

    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise ConfigError(
            f"store directory {path} belongs to another user (uid {st.st_uid}); results are "
            "unpickled from it, so it must be yours: choose a directory of your own"
        )
    if st.st_mode & 0o022:
        raise ConfigError(
            f"store directory {path} is writable by other users (mode {st.st_mode & 0o777:o}); "
            f"results are unpickled from it, so nobody else may write there: chmod 700 {path}"
        )


def requirements_for(store: Any) -> tuple[str, ...]:
    """Packages a remote environment needs to reach ``store`` (at the client's versions)."""
    from importlib.metadata import version

    reqs = [f"proxystore=={version('proxystore')}"]
    kind = type(store.connector).__module__
    if kind.startswith("proxystore.connectors.redis"):
        reqs.append(f"redis=={version('redis')}")
    return tuple(reqs)


class ClientStore:
    """The executor's view of its store: what it put there, so it can evict all of it.

    Args:
        store: the ProxyStore ``Store``.
        owned_dir: a directory this executor created for the store (removed at `close`).
        explicit: whether the user configured the store (then every call's environment gets
            proxystore, so results of any size can come back through it).
    """

    def __init__(self, store: Any, *, owned_dir: str | None = None, explicit: bool) -> None:
        self.store = store
        self.owned_dir = owned_dir
        self.explicit = explicit
        self.requirements = requirements_for(store)
        self.spec = connector_spec(store.connector)
        self._lock = threading.Lock()
        self._live: dict[str, RawKey] = {}  # ident -> key: everything put, not yet evicted
        self.closed = False

    @property
    def config_bytes(self) -> bytes:
        """The pickled `ConnectorSpec`, as the runner receives it (to put large results)."""
        return pickle.dumps(self.spec, protocol=5)

    def put(self, meta: bytes, buffers: Sequence[pickle.PickleBuffer] = ()) -> StoredRef:
        """Put a pickle and its out-of-band buffers into the store as one frame; return a
        handle (tracked until evicted)."""
        parts = frame_parts(meta, buffers)
        if self.spec[0] == FILE_CONNECTOR:
            raw = _write_file(self.spec[1]["store_dir"], parts)
        else:
            raw = raw_key(self.store.connector.put(b"".join(parts)))
        return self.adopt(raw, frame_size(parts))

    def adopt(self, raw: RawKey, size: int) -> StoredRef:
        """Track a frame a remote process put into the store; return its handle."""
        ref = StoredRef(self.spec, raw, size)
        with self._lock:
            self._live[ref.ident] = raw
        return ref

    def get(self, ref: StoredRef) -> Any:
        """The stored bytes behind ``ref`` (a frame: `payload.loads` unpickles it).

        Raises:
            KeyError: they are no longer in the store (evicted).
        """
        if ref.connector[0] == FILE_CONNECTOR and ref.raw[0] == FILE_KEY:
            data = _read_file(_file_path(self.spec, ref.raw))
        else:
            data = self.store.connector.get(ref.key)
        if data is None:
            raise KeyError(f"{ref!r} is no longer in the store (evicted)")
        return data

    def evict(self, ref: StoredRef) -> None:
        """Remove an object from the store (no error if it is already gone)."""
        with self._lock:
            self._live.pop(ref.ident, None)
        self._evict(ref.raw)

    def _evict(self, raw: RawKey) -> None:
        try:
            if self.spec[0] == FILE_CONNECTOR and raw[0] == FILE_KEY:
                path = _file_path(self.spec, raw)
                for name in (path, path + ".ready"):
                    try:
                        os.remove(name)
                    except FileNotFoundError:
                        pass
            else:
                self.store.evict(_key_from(raw))
        except Exception:
            pass

    @property
    def live(self) -> int:
        """How many objects this executor put (or adopted) and has not evicted."""
        with self._lock:
            return len(self._live)

    def close(self) -> None:
        """Evict everything left; remove a directory this executor created."""
        with self._lock:
            raws = list(self._live.values())
            self._live.clear()
            self.closed = True
        for raw in raws:
            self._evict(raw)
        if self.owned_dir is not None:
            try:
                _ps("proxystore.store").unregister_store(self.store.name)
            except Exception:
                pass
            shutil.rmtree(self.owned_dir, ignore_errors=True)


def private_file_store() -> ClientStore:
    """A file store in a new private temporary directory (the local endpoint's default)."""
    path = tempfile.mkdtemp(prefix="hog-store-")
    return ClientStore(open_store(path), owned_dir=path, explicit=False)


# -- remote side ----------------------------------------------------------------------------


def load_ref(ref: StoredRef) -> Any:
    """The value behind a handle, in any process that can reach its store (what an argument
    that travelled through the store unpickles as)."""
    return loads_frame(ref())


def fetch(ref: StoredRef) -> Any:
    """The value behind a handle (`load_ref`)."""
    return load_ref(ref)
