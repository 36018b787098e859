"""The file store, read and written directly: no proxystore needed, no intermediate copies.

A file store is a directory in the layout of ProxyStore's ``FileConnector``: one file per
object, named by its key, and an empty marker file beside it (`READY_SUFFIX`) once the object
is complete. Frames are written from the objects' buffers straight to the file, and read
straight into the memory the unpickled objects keep using. Files are created mode
``0600``; the directory must be private to this user (`check_private_dir`): results are
unpickled from it.

Standard library only: the runner imports this remotely.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .connectors import RawKey

#: The connector whose layout this module reads and writes (as ``"module:Class"``).
FILE_CONNECTOR = "proxystore.connectors.file:FileConnector"
#: That connector's key class (a named tuple of the file's name).
FILE_KEY = "proxystore.connectors.file:FileKey"
#: The marker file that says an object is complete: ``<key>.ready``.
READY_SUFFIX = ".ready"
#: Mode of a store directory created here, and of every file written into a store.
DIR_MODE = 0o700
FILE_MODE = 0o600
#: Permission bits that let other users write into a directory (refused for a store).
_OTHERS_WRITE = 0o022
#: Objects at least this large are read into ``mmap`` memory (see `_buffer`).
MMAP_MIN_SIZE = 1 << 20

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


class FileFrames:
    """Frames in the file store at ``store_dir``: the `FrameStore` of a file store."""

    def __init__(self, store_dir: str) -> None:
        self.store_dir = store_dir

    def file_path(self, raw: RawKey) -> str:
        """The file holding the object of key ``raw``."""
        return os.path.join(self.store_dir, str(raw[1][0]))

    def put(self, parts: Sequence[Any]) -> RawKey:
        """Write a frame into a new file (then its marker); return its key."""
        return (FILE_KEY, (write_file(self.store_dir, parts),))

    def get(self, raw: RawKey) -> Any:
        """The stored bytes in a new writable buffer (None: not in the store)."""
        return read_file(self.file_path(raw))

    def evict(self, raw: RawKey) -> None:
        """Remove an object and its marker (no error if they are gone already)."""
        path = self.file_path(raw)
        for name in (path, path + READY_SUFFIX):
            try:
                os.remove(name)
            except FileNotFoundError:
                pass  # evicted already: evicting twice is not an error


def write_file(store_dir: str, parts: Sequence[Any], name: str | None = None) -> str:
    """Write the pieces of a frame into a new file of ``store_dir``, as ``FileConnector.put``
    lays it out, the directory created ``0700`` if need be; return the file's name.

    ``name``: the file's name, chosen beforehand (a result key the client chose: see
    ``result_keys`` in `hog_executor.runner`); default: a new UUID.
    """
    os.makedirs(store_dir, mode=DIR_MODE, exist_ok=True)
    if name is None:
        name = str(uuid.uuid4())
    path = os.path.join(store_dir, name)
    fd = os.open(path, _CREATE_FLAGS, FILE_MODE)
    try:
        with open(fd, "wb", buffering=0) as f:
            for part in parts:
                view = memoryview(part).cast("B")
                while view:  # a raw write may be partial
                    written = f.write(view)
                    view = view[written:]
        os.close(os.open(path + READY_SUFFIX, _CREATE_FLAGS, FILE_MODE))
    except BaseException:
        for leftover in (path, path + READY_SUFFIX):
            try:
                os.remove(leftover)
            except OSError:
                pass  # best effort: the error being raised is the one to report
        raise
    return name


def _buffer(size: int) -> Any:
    """``size`` writable bytes to read a stored object into.

    Private anonymous memory from ``mmap``, with transparent huge pages where the system
    offers them: unlike ``bytearray(size)`` it is not zero-filled first, and it faults in
    fewer, larger pages (about twice as fast for 200 MB). What is unpickled from it keeps it
    alive (arrays use it in place).
    """
    import mmap

    private = getattr(mmap, "MAP_PRIVATE", None)
    if size < MMAP_MIN_SIZE or private is None:
        return bytearray(size)
    buf = mmap.mmap(-1, size, flags=private)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            buf.madvise(advice)
        except OSError:
            pass  # huge pages are only a hint: the memory works without them
    return buf


_prefetching: dict[str, threading.Thread] = {}
_prefetched: dict[str, Any] = {}


def prefetch(paths: Sequence[str]) -> None:
    """Start reading files of a file store in a background thread.

    The runner calls this with the files of a call's arguments before it imports the
    script, so that reading them overlaps the imports; `read_file` then takes what was read.
    """

    def read_all() -> None:
        for path in paths:
            try:
                _prefetched[path] = read_file(path, wait=False)
            except Exception:
                pass  # read again (and fail there, with the error) when it is needed

    thread = threading.Thread(target=read_all, name="hog-prefetch", daemon=True)
    for path in paths:
        _prefetching[path] = thread
    thread.start()


def read_file(path: str, wait: bool = True) -> Any:
    """A stored file's bytes read into a new writable buffer (None: not in the store).

    With ``wait``, a file being prefetched is taken from `prefetch` once it is read.
    """
    thread = _prefetching.pop(path, None) if wait else None
    if thread is not None:
        thread.join()
        data = _prefetched.pop(path, None)
        if data is not None:
            return data
    if not os.path.exists(path + READY_SUFFIX):
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


def private_dir(path: str) -> None:
    """Make ``path`` a store directory: created ``0700`` if missing, else checked
    (`check_private_dir`)."""
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    check_private_dir(path)


def check_private_dir(path: str) -> None:
    """Refuse a store directory that someone else owns or can write into.

    Results are unpickled from it, so it must be as trustworthy as this process: only its
    owner (this user) may create files there.

    Raises:
        ConfigError: the directory belongs to another user or is writable by others.
    """
    from ..errors import ConfigError

    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise ConfigError(
            f"store directory {path} belongs to another user (uid {st.st_uid}); results are "
            "unpickled from it, so it must be yours: choose a directory of your own"
        )
    if st.st_mode & _OTHERS_WRITE:
        raise ConfigError(
            f"store directory {path} is writable by other users (mode {st.st_mode & 0o777:o}); "
            f"results are unpickled from it, so nobody else may write there: chmod 700 {path}"
        )
