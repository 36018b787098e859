"""The executor's side of a store: open it from the ``store`` setting, put, get, evict.

Also `StoredRef`, the handle that travels instead of a stored value, and `load_ref`, which
resolves one in any process that can reach the store. proxystore is imported only when a
store is opened (this module imports only the standard library at import time).
"""

from __future__ import annotations

import importlib
import os
import pickle
import shutil
import tempfile
import threading
import uuid
from typing import TYPE_CHECKING, Any

from .connectors import ConnectorSpec, RawKey, connector_spec, frame_store, key_from
from .files import check_private_dir, private_dir
from .frames import frame_parts, frame_size, loads_frame

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Default ``proxy_threshold``: objects whose pickle is larger travel through the store.
DEFAULT_PROXY_THRESHOLD = 1_000_000
#: The port of a ``redis://`` URL that names none.
REDIS_DEFAULT_PORT = 6379
#: The stores opened here are named ``hog-`` and this many hex digits of a random UUID.
_STORE_NAME_DIGITS = 12


def _ps(module: str) -> Any:
    """Import a part of proxystore (lazily: only code paths that use a store need it)."""
    return importlib.import_module(module)


class StoredRef:
    """An opaque handle to a frame in a store: a pickled value that stayed remote.

    Handles are what travels inline for arguments over ``proxy_threshold``, and what the
    executor keeps for results that are not needed on the client (Dask intermediates,
    persisted chunks). They are deliberately not ProxyStore proxies: a proxy resolves itself
    wherever something touches it (Dask's own type checks included), a handle only where the
    executor resolves it. Unpickling one imports nothing but `hog_executor.store` (standard
    library only).

    A handle pickles as one bytes object (`wire`), so that the result cache can find it in
    a call's pickled arguments and key the call by the stored bytes' digest instead.

    Attributes:
        connector: how to rebuild the store's connector (`ConnectorSpec`).
        raw: the connector's key (`RawKey`).
        size: the number of stored bytes.
        digest: the SHA-256 of the stored bytes (hex), when the client computed it as it put
            them (None: not known; it is not sent).
    """

    __slots__ = ("_wire", "connector", "digest", "raw", "size")

    def __init__(self, connector: ConnectorSpec, raw: RawKey, size: int,
                 digest: str | None = None) -> None:
        self.connector = connector
        self.raw = raw
        self.size = size
        self.digest = digest
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        """What the handle pickles as: its connector, key and size, pickled."""
        if self._wire is None:
            self._wire = pickle.dumps((self.connector, self.raw, self.size), protocol=5)
        return self._wire

    def __reduce__(self) -> tuple[Any, ...]:
        return (_ref_from_wire, (self.wire,))

    def __repr__(self) -> str:
        kind = self.connector[0].rpartition(":")[2]
        return f"<StoredRef {self.size:,} bytes in {kind}>"

    @property
    def key(self) -> Any:
        """The connector's key (imports its class)."""
        return key_from(self.raw)

    def __call__(self) -> Any:
        """The stored bytes (a frame).

        Raises:
            KeyError: they are no longer in the store (evicted).
        """
        data = frame_store(self.connector).get(self.raw)
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
        return frame_store(self.connector).file_path(self.raw)


def _ref_from_wire(wire: bytes) -> StoredRef:
    """A handle from its `StoredRef.wire` bytes."""
    connector, raw, size = pickle.loads(wire)
    ref = StoredRef(connector, raw, size)
    ref._wire = wire
    return ref


def _file_store_path(value: str) -> str:
    """The absolute directory of a file store setting (a path or a ``file://`` URL)."""
    path = value[len("file://"):] if value.startswith("file://") else value
    return os.path.abspath(os.path.expanduser(path))


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
            path = _file_store_path(value)
            if os.path.isdir(path):  # an existing directory is checked now, a new one made 0700
                from ..errors import ConfigError

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
        port = parsed.port or REDIS_DEFAULT_PORT
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
    name = f"hog-{uuid.uuid4().hex[:_STORE_NAME_DIGITS]}"
    if value.startswith("redis://"):
        host, port = _redis_address(value)
        connector: Any = _ps("proxystore.connectors.redis").RedisConnector(host, port)
    else:
        path = _file_store_path(value)
        private_dir(path)
        connector = _ps("proxystore.connectors.file").FileConnector(path, clear=False)
    # cache_size=0: a fetched 200 MB result must not stay alive in the store's cache.
    return Store(name, connector, cache_size=0, register=True)


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
        self._frames = frame_store(self.spec, store)
        self._lock = threading.Lock()
        self._live: dict[str, RawKey] = {}  # ident -> key: everything put, not yet evicted
        self.closed = False
        #: Hash what is put as it is written (set by the result cache, which keys calls by
        #: the digests of their stored arguments).
        self.digests = False

    @property
    def config_bytes(self) -> bytes:
        """The pickled `ConnectorSpec`, as the runner receives it (to put large results)."""
        return pickle.dumps(self.spec, protocol=5)

    def put(self, meta: bytes, buffers: Sequence[pickle.PickleBuffer] = ()) -> StoredRef:
        """Put a pickle and its out-of-band buffers into the store as one frame; return a
        handle (tracked until evicted)."""
        parts = frame_parts(meta, buffers)
        ref = self.adopt(self._frames.put(parts), frame_size(parts))
        if self.digests:
            ref.digest = _sha256(parts)
        return ref

    def digest(self, ref: StoredRef) -> str:
        """The SHA-256 (hex) of the bytes stored behind ``ref``: the one computed as they were
        put, else read back from the store and remembered.

        Raises:
            KeyError: they are no longer in the store (evicted).
        """
        if ref.digest is None:
            ref.digest = _sha256([self.get(ref)])
        return ref.digest

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
        data = self._frames.get(ref.raw)
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
            self._frames.evict(raw)
        except Exception:
            # Best effort: eviction is cleanup, run from callbacks and at close; an object
            # that cannot be removed (server gone...) stays behind rather than failing them.
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
                pass  # best effort: the directory goes below whether or not this worked
            shutil.rmtree(self.owned_dir, ignore_errors=True)


def _sha256(parts: Sequence[Any]) -> str:
    import hashlib

    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def private_file_store() -> ClientStore:
    """A file store in a new private temporary directory (the local endpoint's default)."""
    path = tempfile.mkdtemp(prefix="hog-store-")
    return ClientStore(open_store(path), owned_dir=path, explicit=False)


def load_ref(ref: StoredRef) -> Any:
    """The value behind a handle, in any process that can reach its store (what an argument
    that travelled through the store unpickles as)."""
    return loads_frame(ref())


def fetch(ref: StoredRef) -> Any:
    """The value behind a handle (`load_ref`)."""
    return load_ref(ref)
