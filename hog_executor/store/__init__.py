"""ProxyStore for data too large to travel inline: build the store, put, fetch, evict.

The executor's ``store`` setting is one of:

- a directory (``"/shared/scratch/hog-store"``): a ProxyStore ``FileConnector`` there; the
  directory must be reachable from where calls run (a shared filesystem);
- a Redis URL (``"redis://host:6379"``): a ``RedisConnector``;
- a ``proxystore.store.Store`` built by the caller, used as it is.

The local endpoint gets a private file store in a temporary directory when none is set.

Large objects are pickled once by the client (or the runner) with pickle protocol 5, their
large buffers (NumPy arrays...) out of band, and go into the store as one *frame*; what
travels inline is a `StoredRef` handle, well under a kilobyte.

One module per job:

- `hog_executor.store.frames`: the frame format (`frame_parts`, `split_frame`);
- `hog_executor.store.files`: the file store, read and written directly, in the
  connector's own layout: buffers go from the array to the file and from the file into the
  array's final memory without intermediate copies, and remote processes need neither
  proxystore nor its imports (NumPy among them) to reach the store. Files are ``0600``, the
  directory must be private;
- `hog_executor.store.connectors`: connectors and keys in a form any process rebuilds, and
  `frame_store`, the one adapter through which frames reach any kind of store (other
  connectors are rebuilt remotely from their configuration, never as a whole ``Store``:
  that keeps pydantic, and about a second of imports, out of every call);
- `hog_executor.store.client`: the executor's side (`open_store`, `ClientStore`) and the
  `StoredRef` handles.

This package imports only the standard library at import time: it is imported remotely to
resolve arguments.
"""

from __future__ import annotations

# The "as" form re-exports each name (what other modules and the runner import from here).
from .client import DEFAULT_PROXY_THRESHOLD as DEFAULT_PROXY_THRESHOLD
from .client import ClientStore as ClientStore
from .client import StoredRef as StoredRef
from .client import check_store as check_store
from .client import fetch as fetch
from .client import load_ref as load_ref
from .client import open_store as open_store
from .client import private_file_store as private_file_store
from .client import requirements_for as requirements_for
from .connectors import ConnectorSpec as ConnectorSpec
from .connectors import FrameStore as FrameStore
from .connectors import RawKey as RawKey
from .connectors import connector_from as connector_from
from .connectors import connector_spec as connector_spec
from .connectors import frame_store as frame_store
from .connectors import get_frame as get_frame
from .connectors import put_frame as put_frame
from .connectors import raw_key as raw_key
from .files import FILE_CONNECTOR as FILE_CONNECTOR
from .files import FILE_KEY as FILE_KEY
from .files import check_private_dir as check_private_dir
from .files import prefetch as prefetch
from .frames import ALIGN as ALIGN
from .frames import MAGIC as MAGIC
from .frames import _loads_parts as _loads_parts
from .frames import frame_parts as frame_parts
from .frames import frame_size as frame_size
from .frames import loads_frame as loads_frame
from .frames import split_frame as split_frame

__all__ = ["ClientStore", "StoredRef", "check_store", "fetch", "load_ref", "open_store"]
