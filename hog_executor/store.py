"""ProxyStore for data too large to travel inline: build the store, put, fetch, evict.

The executor's ``store`` setting is one of:

- a directory (``"/shared/scratch/hog-store"``): a ProxyStore ``FileConnector`` there; the
  directory must be reachable from where calls run (a shared filesystem);
- a Redis URL (``"redis://host:6379"``): a ``RedisConnector``;
- a ``proxystore.store.Store`` built by the caller, used as it is.

The local endpoint gets a private file store in a temporary directory when none is set.

Large objects are pickled once by the client (or the runner) and the bytes go into the store
through its ProxyStore connector; what travels inline is a ProxyStore proxy of them
(arguments) or a `StoredRef` (results and graph intermediates), each well under a kilobyte.
Remote processes rebuild only the connector (``Connector.from_config``), never a whole
``Store``: that keeps pydantic, and about a second of imports, out of every call.

This module imports only the standard library at import time: it is imported remotely to
resolve arguments.
"""

from __future__ import annotations

import importlib
import os
import pickle
import shutil
import tempfile
import threading
import uuid
from typing import Any

__all__ = ["ClientStore", "StoredRef", "check_store", "fetch", "load_proxied", "open_store"]

#: Default ``proxy_threshold``: objects whose pickle is larger travel through the store.
DEFAULT_PROXY_THRESHOLD = 1_000_000


def _ps(module: str) -> Any:
    """Import a part of proxystore (lazily: only code paths that use a store need it)."""
    return importlib.import_module(module)


#: How a remote process rebuilds a connector: ``("module:Class", connector.config())``.
ConnectorSpec = tuple[str, dict[str, Any]]

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
            module, _, name = spec[0].partition(":")
            cls = getattr(importlib.import_module(module), name)
            connector = _connectors[ident] = cls.from_config(spec[1])
    return connector


class StoredRef:
    """An opaque handle to bytes in a store: a pickled value that stayed remote.

    Handles are what the executor keeps for results above ``proxy_threshold`` that are not
    needed on the client (Dask intermediates, persisted chunks). They are deliberately not
    ProxyStore proxies: a proxy resolves itself wherever something touches it (Dask's own
    type checks included), a handle only where the executor resolves it.

    Attributes:
        connector: how to rebuild the store's connector (`ConnectorSpec`).
        key: the connector's key.
        size: the number of pickled bytes.
    """

    __slots__ = ("connector", "key", "size")

    def __init__(self, connector: ConnectorSpec, key: Any, size: int) -> None:
        self.connector = connector
        self.key = key
        self.size = size

    def __reduce__(self) -> tuple[Any, ...]:
        return (StoredRef, (self.connector, self.key, self.size))

    def __repr__(self) -> str:
        kind = self.connector[0].rpartition(":")[2]
        return f"<StoredRef {self.size:,} bytes in {kind}>"

    def __call__(self) -> bytes:
        """The stored bytes (what makes a handle usable as a ProxyStore proxy factory)."""
        data = connector_from(self.connector).get(self.key)
        if data is None:
            raise KeyError(f"{self!r} is no longer in the store (evicted)")
        return bytes(data)

    @property
    def ident(self) -> str:
        """A string naming the stored object (for bookkeeping)."""
        return repr(self.key)


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
        return value
    name = f"hog-{uuid.uuid4().hex[:12]}"
    if value.startswith("redis://"):
        host, port = _redis_address(value)
        connector: Any = _ps("proxystore.connectors.redis").RedisConnector(host, port)
    else:
        path = value[len("file://"):] if value.startswith("file://") else value
        connector = _ps("proxystore.connectors.file").FileConnector(
            os.path.abspath(os.path.expanduser(path)), clear=False)
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
        self._lock = threading.Lock()
        self._live: dict[str, Any] = {}  # ident -> key: everything put and not yet evicted
        self.closed = False

    @property
    def config_bytes(self) -> bytes:
        """The pickled `ConnectorSpec`, as the runner receives it (to put large results)."""
        return pickle.dumps(self.spec, protocol=5)

    def _ident(self, key: Any) -> str:
        return repr(key)

    def put(self, data: bytes) -> StoredRef:
        """Put pickled bytes into the store; return a handle (tracked until evicted)."""
        key = self.store.connector.put(data)
        with self._lock:
            self._live[self._ident(key)] = key
        return StoredRef(self.spec, key, len(data))

    def proxy(self, ref: StoredRef) -> Any:
        """A ProxyStore proxy of the bytes behind ``ref`` (resolves lazily, wherever the
        connector is reachable)."""
        return _ps("proxystore.proxy").Proxy(ref)

    def adopt(self, key: Any, size: int) -> StoredRef:
        """Track bytes a remote process put into the store; return their handle."""
        with self._lock:
            self._live[self._ident(key)] = key
        return StoredRef(self.spec, key, size)

    def get(self, ref: StoredRef) -> bytes:
        """The bytes behind ``ref``.

        Raises:
            KeyError: they are no longer in the store (evicted).
        """
        data = self.store.connector.get(ref.key)
        if data is None:
            raise KeyError(f"{ref!r} is no longer in the store (evicted)")
        return bytes(data)

    def evict(self, ref_or_key: Any) -> None:
        """Remove an object from the store (no error if it is already gone)."""
        key = ref_or_key.key if isinstance(ref_or_key, StoredRef) else ref_or_key
        with self._lock:
            self._live.pop(self._ident(key), None)
        try:
            self.store.evict(key)
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
            keys = list(self._live.values())
            self._live.clear()
            self.closed = True
        for key in keys:
            try:
                self.store.evict(key)
            except Exception:
                pass
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


def load_proxied(proxy: Any) -> Any:
    """Unpickle the bytes a proxy stands for (an argument that travelled through the store)."""
    return pickle.loads(bytes(_ps("proxystore.proxy").extract(proxy)))


def fetch(ref: StoredRef) -> Any:
    """The value behind a handle, in any process that can reach its store."""
    return pickle.loads(ref())
