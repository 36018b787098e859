"""Connectors and keys in a form any process can rebuild, and the one adapter to a store.

A store is named by its connector's `ConnectorSpec` (what ProxyStore's ``config()`` and
``from_config()`` exchange), and an object in it by a `RawKey`: both unpickle without
importing proxystore. `frame_store` gives the `FrameStore` of a spec: a file store is read
and written directly (`hog_executor.store.files`), any other connector is rebuilt from its
spec, never as a whole ``Store``: that keeps pydantic, and about a second of imports, out of
every call.

Standard library only at import time: the runner imports this remotely.
"""

from __future__ import annotations

import importlib
import pickle
import threading
from typing import TYPE_CHECKING, Any, Protocol

from .files import FILE_CONNECTOR, FileFrames

if TYPE_CHECKING:
    from collections.abc import Sequence

#: How a remote process rebuilds a connector: ``("module:Class", connector.config())``.
ConnectorSpec = tuple[str, dict[str, Any]]
#: A connector key in a form that unpickles without importing the key's class:
#: ``("module:Class", fields)`` for ProxyStore's named-tuple keys, ``("", key)`` otherwise.
RawKey = tuple[str, Any]

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


def key_from(raw: RawKey) -> Any:
    """The connector's own key for ``raw`` (imports its class)."""
    return _import(raw[0])(*raw[1]) if raw[0] else raw[1]


class FrameStore(Protocol):
    """How frames are put into a store, read, and evicted: the same for every kind of store.

    Obtained from `frame_store`; keys are `RawKey` values.
    """

    def put(self, parts: Sequence[Any]) -> RawKey:
        """Store a frame given as its `frame_parts`; return its key."""
        ...

    def get(self, raw: RawKey) -> Any:
        """The stored bytes of a frame (a writable buffer for a file store), or None."""
        ...

    def evict(self, raw: RawKey) -> None:
        """Remove a frame (no error if it is gone already)."""
        ...

    def file_path(self, raw: RawKey) -> str | None:
        """The file holding a frame, for a store read directly (else None)."""
        ...


class ConnectorFrames:
    """Frames through a ProxyStore connector: each one joined into bytes to be put.

    Args:
        spec: the connector's spec; the connector is rebuilt from it when first needed.
        store: the client's ``Store`` of that connector, used instead when given (its
            ``evict`` also drops the object from the store's cache).
    """

    def __init__(self, spec: ConnectorSpec, store: Any = None) -> None:
        self.spec = spec
        self.store = store

    @property
    def connector(self) -> Any:
        """The connector (rebuilt from the spec once per process, without a store)."""
        return self.store.connector if self.store is not None else connector_from(self.spec)

    def put(self, parts: Sequence[Any]) -> RawKey:
        return raw_key(self.connector.put(b"".join(parts)))

    def get(self, raw: RawKey) -> Any:
        return self.connector.get(key_from(raw))

    def evict(self, raw: RawKey) -> None:
        (self.store if self.store is not None else self.connector).evict(key_from(raw))

    def file_path(self, raw: RawKey) -> None:
        return None


def frame_store(spec: ConnectorSpec, store: Any = None) -> FrameStore:
    """The `FrameStore` for the connector of ``spec``: a file store is read and written
    directly (`FileFrames`, in the connector's own layout), other connectors through
    themselves (`ConnectorFrames`, with ``store`` when the caller has one)."""
    if spec[0] == FILE_CONNECTOR:
        return FileFrames(str(spec[1]["store_dir"]))
    return ConnectorFrames(spec, store)


def put_frame(spec: ConnectorSpec, parts: Sequence[Any]) -> RawKey:
    """Put a frame into the store of ``spec``; return its key (in raw form)."""
    return frame_store(spec).put(parts)


def get_frame(spec: ConnectorSpec, raw: RawKey) -> Any:
    """The stored bytes of a frame (a writable buffer for a file store), or None."""
    return frame_store(spec).get(raw)
