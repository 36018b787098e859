"""The result cache: a call whose key has a stored outcome does not run again.

A call's key (`call_key`) hashes what decides its outcome:

- the function as cloudpickle would send it *by value* (`function_key`): its code, the
  helpers and globals its code reaches, closures and defaults; file names and line numbers
  are left out, so moving code keeps the key and editing it changes it. A function of the
  script normally travels by reference (its name); for the key it is pickled by value all
  the same, so editing another function of the script keeps the key;
- the pickled arguments, as they are sent, with each handle of an argument that went
  through a store replaced by the SHA-256 of its stored bytes (`content_item`);
- the resolved environment (`env_digest`): the environment key (the PEP 723 block, Python,
  the hog-executor and cloudpickle requirements) and the versions uv locks the block's
  requirements to;
- the ``env`` values, and the format version of this module and of hog-executor.

Entries are private files (``0600`` in ``0700`` directories) authenticated with an
HMAC-SHA256 before anything in them is unpickled; the HMAC key lives in the user's cache
directory (``0600``). An entry that fails authentication (tampered, truncated) is refused
with a warning and counts as a miss. Entries also go where the endpoint writes results
(`make_result_cache`: a Slurm ``shared_dir``, a Globus Compute endpoint's store), so other
clients holding the same key find them.

The path of a hit or a miss is kept short: a context's key prefix is hashed once, a process
remembers the outcomes it read or wrote (`Memory`), and entry files and most journal lines
are written by one background thread in batches (`later`, `flush`). See
``docs/concepts/cache.md``.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import io
import json
import logging
import os
import pickle
import secrets
import struct
import subprocess
import tempfile
import threading
import time
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures._base import FINISHED
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle

from . import payload as _payload
from ._version import __version__
from .futures import CallTimings, HogFuture
from .imports import is_local_module
from .runner import OUTCOME_ERROR, OUTCOME_STORED, OUTCOME_VALUE, PROTOCOL

if TYPE_CHECKING:
    from .context import CallContext
    from .environment import EnvSpec
    from .executor import HogExecutor
    from .payload import Outcome
    from .results import JobResults
    from .store import ClientStore

__all__ = [
    "CacheEntry",
    "ResultCache",
    "ResultDir",
    "call_key",
    "default_root",
    "env_digest",
    "explicit_keys",
    "function_key",
    "result_cache",
    "submit_cached",
    "value_digest",
]

logger = logging.getLogger(__name__)

#: Changes whenever what a key hashes, or the layout of an entry, changes.
CACHE_FORMAT = "hog-cache-1"
#: First bytes of every entry file.
MAGIC = b"hog-result-1\n"
#: Bytes of the HMAC key.
KEY_BYTES = 32
#: Seconds ``uv export`` may take to lock an environment's requirements.
LOCK_TIMEOUT = 120.0
#: Name of the directory of entries written next to a Slurm endpoint's jobs.
SHARED_NAME = "hog-results"
#: Function keys remembered per process.
FUNCTION_KEYS = 1024

_DIGEST = hashlib.sha256().digest_size

try:  # the interpreter's own SHA-256: the same digests, and copied in a fraction of the
    # time OpenSSL 3 takes (a key copies the prefix's hash once per call)
    from _sha256 import sha256 as _sha256  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # Python 3.12 and later
    try:
        from _sha2 import sha256 as _sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:  # pragma: no cover - an interpreter built without them
        _sha256 = hashlib.sha256
_HEADER = struct.Struct(">I")


# -- where entries live ------------------------------------------------------------------------

def user_cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/hog-executor``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hog-executor"


def default_root() -> Path:
    """Where the client keeps entries by default: ``<user cache dir>/results``."""
    return user_cache_dir() / "results"


def private_dir(path: Path) -> Path:
    """``path`` as a directory of this user only (created ``0700``).

    Raises:
        PermissionError: it exists but belongs to another user or others may use it.
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        try:
            p.mkdir(mode=0o700)
        except FileExistsError:
            pass
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(
            f"{path} must belong to this user with mode 0700 (it is {st.st_mode & 0o777:o}): "
            "cached results are private"
        )
    return path


_key_lock = threading.Lock()
_hmac_key: bytes | None = None


def hmac_key() -> bytes:
    """The key authenticating entries and journals (created once, ``0600``)."""
    global _hmac_key
    with _key_lock:
        if _hmac_key is not None:
            return _hmac_key
        path = private_dir(user_cache_dir()) / "results.key"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            st = path.stat()
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise PermissionError(
                    f"{path} must be private to this user (mode 0600)") from None
            text = path.read_text().strip()
            key = bytes.fromhex(text)
            if len(key) < 16:
                raise ValueError(f"{path} does not hold a key") from None
        else:
            key = secrets.token_bytes(KEY_BYTES)
            with open(fd, "w") as f:
                f.write(key.hex() + "\n")
        _hmac_key = key
        return key


# -- entries -----------------------------------------------------------------------------------

class CacheEntry:
    """One authenticated entry.

    Attributes:
        key: the call key.
        raw: the runner's outcome tuple (value or exception, pickled).
        size: bytes of the entry file.
        ok: whether the call succeeded (False: a stored failure).
        created: when it was stored (epoch seconds).
        what: the call, for humans (``script.py:function``).
        path: the file (or where the entry was read from).
    """

    __slots__ = ("_header", "_meta", "key", "name", "raw", "size")

    def __init__(self, key: str, raw: tuple[Any, ...], size: int, name: str,
                 header: bytes) -> None:
        self.key = key
        self.raw = raw
        self.size = size
        self.name = name
        self._header = header
        self._meta: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return bool(self.raw[0] != OUTCOME_ERROR)

    def _fields(self) -> dict[str, Any]:
        if self._meta is None:  # read only when asked for (`hog results`): hits skip it
            meta = json.loads(self._header)
            self._meta = meta if isinstance(meta, dict) else {}
        return self._meta

    @property
    def created(self) -> float:
        return float(self._fields().get("created", 0))

    @property
    def what(self) -> str:
        return str(self._fields().get("what", ""))

    @property
    def path(self) -> Path:
        return Path(self.name)


class Refused(Exception):
    """An entry that fails authentication or cannot be parsed."""


def _digest(key: bytes, call: str, header: bytes, body: bytes | memoryview) -> bytes:
    return hmac.digest(key, b"".join((call.encode(), b"\0", header, body)), "sha256")


def encode_entry(call: str, raw: tuple[Any, ...], what: str) -> bytes:
    """The bytes of an entry file for the outcome ``raw`` of call ``call``."""
    header = json.dumps({"key": call, "ok": raw[0] != OUTCOME_ERROR, "created": time.time(),
                         "what": what, "hog": __version__}).encode()
    body = pickle.dumps(raw, protocol=PROTOCOL)
    return b"".join((MAGIC, _digest(hmac_key(), call, header, body), _HEADER.pack(len(header)),
                     header, body))


_START = len(MAGIC) + _DIGEST + _HEADER.size


def decode_entry(call: str, data: bytes, path: Path | str) -> CacheEntry:
    """Authenticate and read an entry file.

    Raises:
        Refused: the file is truncated, tampered with, or was not written for ``call``.
    """
    if len(data) < _START or not data.startswith(MAGIC):
        raise Refused("it is truncated or not an entry")
    view = memoryview(data)
    digest = view[len(MAGIC):len(MAGIC) + _DIGEST]
    (size,) = _HEADER.unpack_from(data, len(MAGIC) + _DIGEST)
    header, body = data[_START:_START + size], view[_START + size:]
    if len(header) != size or not hmac.compare_digest(
            digest, _digest(hmac_key(), call, header, body)):
        raise Refused("its HMAC does not match (tampered with, truncated, or written with "
                      "another key)")
    raw = pickle.loads(body)  # authenticated: written by this user's client
    if type(raw) is not tuple or not raw:
        raise Refused("it holds no outcome")
    return CacheEntry(call, raw, len(data), str(path), header)


_tmp_names = iter(range(1 << 62))
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
#: Bytes read from an entry file at first (most entries are smaller).
_READ_SIZE = 1 << 16


def _write_private(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by this user only."""
    path = str(path)
    tmp = f"{os.path.dirname(path)}{os.sep}.tmp-{os.getpid()}-{threading.get_ident()}-" \
          f"{next(_tmp_names)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                 0o600)
    try:
        try:
            view = memoryview(data)
            while view:  # one write unless the system takes less
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Memory:
    """The outcomes of entries this process read or wrote, most recently used kept: a call
    seen before is answered without reading its file again. Entries are immutable (a key
    names one call), so what was authenticated once stays valid."""

    #: Bytes of pickled values kept, and the largest one kept.
    LIMIT = 64 << 20
    ITEM_LIMIT = 1 << 20

    def __init__(self) -> None:
        self.items: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self.size = 0
        self.lock = threading.Lock()

    @staticmethod
    def _size(raw: tuple[Any, ...]) -> int:
        return sum(len(x) for x in raw if isinstance(x, (bytes, str))) + 100

    def get(self, call: str) -> tuple[Any, ...] | None:
        raw = self.items.get(call)  # one dictionary operation: no lock needed
        if raw is not None:
            try:
                self.items.move_to_end(call)
            except KeyError:  # dropped meanwhile by another thread
                pass
        return raw

    def add(self, call: str, raw: tuple[Any, ...]) -> None:
        size = self._size(raw)
        if size > self.ITEM_LIMIT:
            return
        with self.lock:
            old = self.items.pop(call, None)
            if old is not None:
                self.size -= self._size(old)
            self.items[call] = raw
            self.size += size
            while self.size > self.LIMIT:
                self.size -= self._size(self.items.popitem(last=False)[1])

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.size = 0


def checked(call: str, data: bytes, where: str) -> CacheEntry | None:
    """`decode_entry`, with a refused entry logged as a warning and read as a miss."""
    try:
        return decode_entry(call, data, where)
    except Refused as exc:
        logger.warning("cached result %s refused: %s; the call runs again", where, exc)
    except Exception as exc:
        logger.warning("cached result %s refused: it cannot be read (%s: %s); the call "
                       "runs again", where, type(exc).__name__, exc)
    return None


class ResultDir:
    """One directory of entries: ``<root>/<key[:2]>/<key>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._prefix = str(root) + os.sep
        self._checked = False
        self._subdirs: set[str] = set()
        self.memory = Memory()

    def _ready(self) -> Path:
        if not self._checked:
            private_dir(self.root)
            self._checked = True
        return self.root

    def path(self, call: str) -> Path:
        return Path(self._name(call))

    def _name(self, call: str) -> str:
        return f"{self._prefix}{call[:2]}{os.sep}{call}"

    @property
    def where(self) -> str:
        return str(self.root)

    def name(self, call: str) -> str:
        """Where the entry of ``call`` is, for messages."""
        return self._name(call)

    def load(self, call: str) -> bytes | None:
        """The bytes of the entry file of ``call``, not authenticated (None: none)."""
        name = self._name(call)
        if not os.access(name, os.F_OK):  # a miss raises nothing: cheaper than catching
            return None
        try:
            fd = os.open(name, _READ_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("cached result %s cannot be read (%s): running the call", name, exc)
            return None
        try:
            data = os.read(fd, _READ_SIZE)
            if len(data) == _READ_SIZE:  # a large entry: read the rest
                parts = [data]
                while chunk := os.read(fd, 1 << 20):
                    parts.append(chunk)
                data = b"".join(parts)
            return data
        except OSError as exc:
            logger.warning("cached result %s cannot be read (%s): running the call", name, exc)
            return None
        finally:
            os.close(fd)

    def get(self, call: str) -> CacheEntry | None:
        """The authenticated entry for ``call`` (None: none, or refused with a warning)."""
        data = self.load(call)
        return None if data is None else checked(call, data, self._name(call))

    def put(self, call: str, data: bytes) -> None:
        sub = call[:2]
        if sub not in self._subdirs:
            self._ready()
            os.makedirs(self._prefix + sub, mode=0o700, exist_ok=True)
            self._subdirs.add(sub)
        _write_private(self._name(call), data)

    def entries(self) -> Iterator[Path]:
        """Every entry file (not authenticated)."""
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if len(sub.name) == 2 and sub.is_dir():
                for path in sorted(sub.iterdir()):
                    if not path.name.startswith("."):
                        yield path

    def read(self, path: Path) -> CacheEntry:
        """Authenticate the entry file ``path``.

        Raises:
            Refused, OSError: it cannot be read or is not authentic.
        """
        return decode_entry(path.name, path.read_bytes(), path)


class StoreEntries:
    """Entries kept in a ProxyStore store other than a directory (Redis...), each under a key
    named after the call key: what a Globus Compute endpoint's store holds for every client
    that uses it.

    Args:
        connector: the store's connector (``get`` and ``set`` of keys of ``key_type``).
        key_type: the connector's key class, a named tuple of one string.
        where: the store, for messages.
    """

    PREFIX = "hog-result-"

    def __init__(self, connector: Any, key_type: Any, where: str) -> None:
        self.connector = connector
        self.key_type = key_type
        self.where = where

    def _ready(self) -> None:
        """Nothing to prepare: the store exists."""

    def name(self, call: str) -> str:
        return f"{self.where} {self.PREFIX}{call}"

    def load(self, call: str) -> bytes | None:
        try:
            data = self.connector.get(self.key_type(f"{self.PREFIX}{call}"))
        except Exception as exc:
            logger.warning("cached result %s cannot be read (%s): running the call",
                           self.name(call), exc)
            return None
        return None if data is None else bytes(data)

    def put(self, call: str, data: bytes) -> None:
        self.connector.set(self.key_type(f"{self.PREFIX}{call}"), data)


def store_entries(store: ClientStore) -> ResultDir | StoreEntries | None:
    """Where entries are kept in ``store``: ``<directory>/hog-results`` for a file store, keys
    named after the call keys for a connector that can set chosen keys (Redis); None for a
    store that cannot hold them."""
    from .store import FILE_CONNECTOR

    spec = store.spec
    if spec[0] == FILE_CONNECTOR:
        return _result_dir(Path(str(spec[1]["store_dir"])) / SHARED_NAME)
    connector = store.store.connector
    try:
        key_type = type(connector.new_key())
    except Exception:
        return None
    fields = getattr(key_type, "_fields", ())
    if not callable(getattr(connector, "set", None)) or len(fields) != 1:
        return None
    return StoreEntries(connector, key_type, spec[0].rpartition(":")[2])


class ResultCache:
    """Where one executor view's entries are: the client's directory first, then the
    endpoint's (a Slurm ``shared_dir``, a Globus Compute endpoint's store).

    An entry found only at the endpoint is copied to the client's directory."""

    def __init__(self, dirs: Sequence[ResultDir | StoreEntries], failures: bool) -> None:
        self.dirs = list(dirs)
        first = self.dirs[0]
        assert isinstance(first, ResultDir), "the client's directory comes first"
        self.local = first
        self.failures = failures
        #: Outcomes delivered whose entries are being written: key -> (outcome, what).
        self._staged: dict[str, tuple[tuple[Any, ...], str]] = {}
        self._queue: list[str] = []  # their keys, in order, for the writer thread
        self._scheduled = False

    @property
    def root(self) -> Path:
        return self.local.root

    def get(self, call: str) -> CacheEntry | None:
        """The entry of ``call``: remembered by this process, else read from the first place
        that has an authentic one (None: a miss)."""
        first = self.local
        raw = first.memory.get(call)
        if raw is None:
            staged = self._staged.get(call)
            raw = None if staged is None else staged[0]
        if raw is not None:
            return CacheEntry(call, raw, 0, first.name(call), b"{}") if (
                raw[0] != OUTCOME_ERROR or self.failures) else None
        for d in self.dirs:
            data = d.load(call)
            if data is None:
                continue
            entry = checked(call, data, d.name(call))
            if entry is not None and (entry.ok or self.failures):
                if d is not first:
                    try:
                        first.put(call, data)
                    except OSError as exc:
                        logger.debug("cannot copy %s: %s", d.name(call), exc)
                first.memory.add(call, entry.raw)
                return entry
        return None

    def stage(self, call: str, raw: tuple[Any, ...], what: str) -> None:
        """Keep an outcome (`get` answers from it) and have its entry written by the writer
        thread, off the path that delivers results (`flush` waits for it; so does the
        exit). Called before the call's future is settled: it only records the outcome."""
        if raw[0] == OUTCOME_ERROR and not self.failures:
            return
        self._staged[call] = (raw, what)
        self._queue.append(call)
        if not self._scheduled:
            self._scheduled = True
            later(self._write_queued)

    def _write_queued(self) -> None:
        """Write the entries of the outcomes staged so far (the writer thread)."""
        self._scheduled = False  # first: an outcome staged from now on schedules another
        calls, self._queue = self._queue, []
        for call in calls:
            self.write_staged(call)

    def write_staged(self, call: str) -> None:
        """Remember a staged outcome and write its entry."""
        staged = self._staged.get(call)
        if staged is None:
            return
        try:
            self.local.memory.add(call, staged[0])
            self.put(call, *staged)
        except Exception as exc:
            logger.warning("cannot store the result of %s: %s", staged[1], exc)
        finally:
            self._staged.pop(call, None)

    def put(self, call: str, raw: tuple[Any, ...], what: str) -> None:
        """Write the entry of ``call`` everywhere this cache keeps entries."""
        if raw[0] == OUTCOME_ERROR and not self.failures:
            return
        data = encode_entry(call, raw, what)
        for d in self.dirs:
            try:
                d.put(call, data)
            except Exception as exc:
                logger.warning("cannot store the result of %s in %s: %s", what, d.where, exc)


class _Writer:
    """The thread that writes staged entries and journal lines, a batch at a time: a burst
    of outcomes costs the threads delivering them one list append each.

    While work keeps coming the writer wakes on its own every `LINGER` seconds; only an
    idle writer is woken by the first task of a burst (waking a thread costs the waker
    more than the append)."""

    #: Seconds the writer waits for more work before it writes a batch.
    LINGER = 0.02
    #: Seconds the exit waits for entries being written.
    EXIT_WAIT = 30.0

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.queue: list[Callable[[], None]] = []
        self.busy = 0  # tasks taken from the queue and not yet done
        self.thread: threading.Thread | None = None
        self.idle = False
        self.hurry = False

    def add(self, task: Callable[[], None]) -> None:
        with self.cond:
            self.queue.append(task)
            if self.thread is None or not self.thread.is_alive():
                if self.thread is None:
                    import atexit

                    atexit.register(self.wait)
                self.thread = threading.Thread(target=self._run, name="hog-cache-writer",
                                               daemon=True)
                self.thread.start()
            elif self.idle:
                self.idle = False
                self.cond.notify_all()

    def _take(self) -> list[Callable[[], None]]:
        """The next batch (blocks; the lock is held)."""
        lingered = False
        while True:
            if self.hurry and self.queue:
                break
            if not lingered:  # work is likely to come: wait for it on a timer
                self.cond.wait(self.LINGER)
                lingered = True
                continue
            if self.queue:
                break
            self.idle = True
            self.cond.wait()
            self.idle = False
            lingered = False
        batch, self.queue = self.queue, []
        self.busy += len(batch)
        return batch

    def _run(self) -> None:
        while True:
            with self.cond:
                batch = self._take()
            try:
                for task in batch:
                    try:
                        task()
                    except Exception as exc:  # each task reports its own errors
                        logger.debug("cache writer: %s", exc)
            finally:
                with self.cond:
                    self.busy -= len(batch)
                    self.cond.notify_all()

    def wait(self, timeout: float = EXIT_WAIT) -> bool:
        """Wait until every task queued so far is done; whether they all were."""
        with self.cond:
            self.hurry = True
            self.cond.notify_all()
            try:
                return self.cond.wait_for(lambda: not self.queue and not self.busy, timeout)
            finally:
                self.hurry = False


_writer = _Writer()


def forget() -> None:
    """Forget the entries this process remembers: the next hits read their files."""
    with _dirs_lock:
        dirs = list(_dirs.values())
    for d in dirs:
        d.memory.clear()


def later(task: Callable[[], None]) -> None:
    """Have ``task`` run by the writer thread, with others, within `_Writer.LINGER` seconds."""
    _writer.add(task)


def flush(timeout: float = _Writer.EXIT_WAIT) -> bool:
    """Wait until the entries of the outcomes delivered so far are written; whether they were."""
    return _writer.wait(timeout)


_dirs: dict[str, ResultDir] = {}
_dirs_lock = threading.Lock()


def _result_dir(root: Path) -> ResultDir:
    with _dirs_lock:
        found = _dirs.get(str(root))
        if found is None:
            found = _dirs[str(root)] = ResultDir(root)
        return found


_caches: dict[tuple[Any, bool, int, int], tuple[Any, Any, ResultCache]] = {}


def result_cache(setting: Any, failures: bool, backend: Any,
                 store: ClientStore | None = None) -> ResultCache:
    """`make_result_cache`, remembered per setting, backend and store.

    Raises:
        ConfigError: a directory of the cache cannot be used (not private, not creatable).
    """
    ident = (setting, failures, id(backend), id(store))
    found = _caches.get(ident)
    if found is not None and found[0] is backend and found[1] is store:
        return found[2]
    made = make_result_cache(setting, failures, backend, store)
    if len(_caches) > 64:
        _caches.clear()
    _caches[ident] = (backend, store, made)
    return made


def make_result_cache(setting: Any, failures: bool, backend: Any,
                      store: ClientStore | None = None) -> ResultCache:
    """The cache for a ``cache=`` setting (True: the default directory; a path) on a backend.

    Entries also go where the endpoint writes results, so that other clients find them: a
    Slurm backend adds a directory next to its jobs (``<shared_dir>/hog-results``); a Globus
    Compute endpoint with a ``store`` adds that store (`store_entries`).

    Raises:
        ConfigError: a directory cannot be used (not private to this user, not creatable).
    """
    root = default_root() if setting is True else Path(os.path.expanduser(str(setting)))
    dirs: list[ResultDir | StoreEntries] = [_result_dir(root)]
    kind = getattr(getattr(backend, "endpoint", None), "backend", "")
    shared = getattr(backend, "shared_dir", None)
    if kind == "slurm" and isinstance(shared, str):
        dirs.append(_result_dir(Path(shared) / SHARED_NAME))
    elif kind == "globus" and store is not None and store.explicit:
        remote = store_entries(store)
        if remote is None:
            logger.info("the store %s cannot keep cached results: they stay on this client",
                        store.spec[0])
        else:
            dirs.append(remote)
    for d in dirs:
        try:
            d._ready()
        except OSError as exc:
            from .errors import ConfigError

            raise ConfigError(f"the result cache cannot use {d.where}: {exc}") from None
    return ResultCache(dirs, failures)


# -- keys --------------------------------------------------------------------------------------

class Unkeyable(Exception):
    """The function (or what it reaches) cannot be pickled for its key."""


def _code(*parts: Any) -> None:
    """Stands for a code object in key pickles (never called)."""


def _class(*parts: Any) -> None:
    """Stands for a class pickled by value in key pickles (never called)."""


def _module(*parts: Any) -> None:
    """Stands for a module in key pickles (never called)."""


_CODE_FIELDS = ("co_name", "co_qualname", "co_argcount", "co_posonlyargcount",
                "co_kwonlyargcount", "co_nlocals", "co_flags", "co_code", "co_consts",
                "co_names", "co_varnames", "co_freevars", "co_cellvars", "co_exceptiontable")
_SKIPPED_MEMBERS = frozenset({"__dict__", "__weakref__", "__module__"})
_DESCRIPTORS = (types.MemberDescriptorType, types.GetSetDescriptorType)


class _KeyPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, with every object of ``by_value`` modules pickled by value, and nothing
    that depends on where code sits (file names, line numbers) or on the process (string
    identity, set order, class tracker ids). Its output is hashed, never unpickled."""

    def __init__(self, file: io.BytesIO, by_value: frozenset[str]) -> None:
        super().__init__(file, protocol=PROTOCOL)
        self._forced = by_value

    def persistent_id(self, obj: Any) -> Any:
        # Equal strings pickle alike whether or not they are one object (interning).
        if type(obj) is str:
            return obj.encode("utf-8", "surrogatepass")
        return None

    def _by_value(self, obj: Any) -> bool:
        name = getattr(obj, "__module__", None)
        if name in self._forced or (isinstance(name, str) and is_local_module(name)):
            return True  # what travels by value (local modules) is keyed by its code
        try:
            return not cloudpickle.cloudpickle._should_pickle_by_reference(obj)
        except Exception:
            return False

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is types.CodeType:
            return (_code, tuple(getattr(obj, f, None) for f in _CODE_FIELDS))
        if kind is types.FunctionType and self._by_value(obj):
            reduced = self._dynamic_function_reduce(obj)
            code, _, _, _, closure = reduced[1]
            state, slots = reduced[2]
            slots = {k: v for k, v in slots.items() if k != "__module__"}
            return (reduced[0], (code, {}, None, None, closure), (state, slots), None, None,
                    reduced[5])
        if isinstance(obj, type) and self._by_value(obj):
            members = {k: v for k, v in vars(obj).items()
                       if k not in _SKIPPED_MEMBERS and not k.startswith("_abc_")
                       and not isinstance(v, _DESCRIPTORS)}
            return (_class, (obj.__qualname__, obj.__bases__), members)
        if kind is types.ModuleType and obj.__name__ in self._forced:
            defined = {k: v for k, v in vars(obj).items()
                       if isinstance(v, (types.FunctionType, type))
                       and getattr(v, "__module__", None) == obj.__name__}
            return (_module, (), defined)
        if kind in (set, frozenset):
            return (kind, (sorted(obj, key=repr),))
        return super().reducer_override(obj)


def value_digest(obj: Any, by_value: frozenset[str] = frozenset()) -> str:
    """A hex digest of ``obj`` as a key sees it (functions by value, see `function_key`).

    Raises:
        Unkeyable: ``obj`` cannot be pickled.
    """
    buf = io.BytesIO()
    try:
        _KeyPickler(buf, by_value).dump(obj)
    except Exception as exc:
        raise Unkeyable(f"{type(exc).__name__}: {exc}") from exc
    return hashlib.sha256(buf.getvalue()).hexdigest()


def function_key(fn: Any, module: types.ModuleType | None = None,
                 by_value: frozenset[str] = frozenset()) -> str:
    """The digest of ``fn`` pickled by value: its code and what it reaches.

    ``module`` is the client's module of the script: its functions and classes are keyed by
    value although they travel by reference. File names and line numbers are not part of
    the key.

    Raises:
        Unkeyable: ``fn`` (or a global it reaches) cannot be pickled.
    """
    forced = set(by_value) | {"__main__"}
    if module is not None:
        forced.add(module.__name__)
    return value_digest(fn, frozenset(forced))


_fn_keys: OrderedDict[tuple[bytes, int], str | Unkeyable] = OrderedDict()
_fn_keys_lock = threading.Lock()


def _context_function_key(ctx: CallContext, by_value: frozenset[str]) -> str:
    """The function key of a context's function (remembered per pickled function)."""
    ident = (hashlib.sha256(ctx.fn_bytes).digest(), id(ctx.module))
    with _fn_keys_lock:
        found = _fn_keys.get(ident)
    if found is None:
        try:
            fn = _payload.loads(ctx.fn_bytes, ctx.module)
            found = function_key(fn, ctx.module, by_value)
        except Unkeyable as exc:
            found = exc
            logger.warning("calls of %s are not cached: the function cannot be keyed (%s)",
                           ctx.description, exc)
        except Exception as exc:
            found = Unkeyable(f"{type(exc).__name__}: {exc}")
            logger.warning("calls of %s are not cached: %s", ctx.description, found)
        with _fn_keys_lock:
            _fn_keys[ident] = found
            while len(_fn_keys) > FUNCTION_KEYS:
                _fn_keys.popitem(last=False)
    if isinstance(found, Unkeyable):
        raise found
    return found


_env_digests: dict[str, str] = {}
_env_lock = threading.Lock()


def _lock_requirements(env: EnvSpec) -> str:
    """The versions uv resolves the environment's requirements to (``uv export --script``);
    offline from uv's cache when the index cannot be reached; '' when there is nothing to
    lock or uv cannot lock it (then only the declared requirements are in the key)."""
    from .script import parse_metadata

    meta = parse_metadata(env.metadata)
    if not meta.dependencies:
        return ""
    from .backends.processes import uv_binary

    uv = uv_binary()
    if uv is None:
        logger.warning("uv not found: the cache key holds the declared requirements only")
        return "unlocked\n"
    with tempfile.TemporaryDirectory(prefix="hog-lock-") as tmp:
        script = os.path.join(tmp, "env.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(env.metadata)
        cmd = [uv, "export", "--script", script, "--no-header", "--no-hashes", "--quiet",
               "--python", env.python]
        last = ""
        for extra in ([], ["--offline"]):
            try:
                proc = subprocess.run([*cmd, *extra], capture_output=True, text=True,
                                      timeout=LOCK_TIMEOUT, stdin=subprocess.DEVNULL, cwd=tmp)
            except (OSError, subprocess.SubprocessError) as exc:
                last = str(exc)
                continue
            if proc.returncode == 0:
                return proc.stdout
            last = proc.stderr.strip()
    logger.warning("uv could not lock the environment's requirements (%s): the cache key "
                   "holds the declared requirements only", last[-500:])
    return "unlocked\n"


def env_digest(env: EnvSpec, root: Path) -> str:
    """The environment's part of a key: its key and the versions its requirements lock to.

    The lock is computed once per environment key and kept in ``<root>/envs/<key>`` (a
    cached environment is also built once per key and reused until pruned).
    """
    with _env_lock:
        found = _env_digests.get(env.key)
    if found is not None:
        return found
    path = root / "envs" / env.key
    try:
        lock = path.read_text(encoding="utf-8")
    except OSError:
        lock = _lock_requirements(env)
        if lock != "unlocked\n":
            try:
                private_dir(path.parent)  # root is private already (result_cache)
                _write_private(path, lock.encode())
            except OSError as exc:
                logger.debug("cannot keep the lock of %s: %s", env.key, exc)
    found = hashlib.sha256(f"{env.key}\0{lock}".encode()).hexdigest()
    with _env_lock:
        _env_digests[env.key] = found
    return found


def _key_prefix(fn_key: str, env: str, env_vars: dict[str, str]) -> Any:
    """The SHA-256 of a call key's parts before the arguments (copied for each call)."""
    h = _sha256(f"{CACHE_FORMAT}\0{__version__}\0{fn_key}\0{env}\0".encode())
    h.update(json.dumps(env_vars, sort_keys=True).encode())
    h.update(b"\0")
    return h


def call_key(fn_key: str, env: str, env_vars: dict[str, str], item: bytes) -> str:
    """The key of one call: the function's, the environment's, ``env`` and the arguments."""
    h = _key_prefix(fn_key, env, env_vars)
    h.update(item)
    return str(h.hexdigest())


#: What stands for an argument that went through a store, in the bytes a key hashes.
STORED_MARK = b"\0hog-stored-sha256:"


def content_item(item: bytes, refs: Sequence[Any], store: ClientStore | None) -> bytes | None:
    """A call's pickled arguments with each handle of an argument that went through the store
    (named at random) replaced by the digest of the argument's stored bytes; None when a
    digest cannot be had (the call is then not cached)."""
    if store is None:
        return None
    for ref in refs:
        wire = ref.wire
        if wire not in item:
            return None
        try:
            digest = store.digest(ref)
        except Exception as exc:  # evicted, or the store cannot be read
            logger.debug("no digest for %r: %s", ref, exc)
            return None
        item = item.replace(wire, STORED_MARK + digest.encode() + b"\0")
    return STORED_MARK + item

def content_call_key(content: str, env: str, env_vars: dict[str, str]) -> str:
    """The key of a call whose content key was computed by the caller (a Dask task)."""
    return call_key("content", env, env_vars, content.encode())


#: Keys chosen by the caller for the next submission (the Dask adapter): one per call,
#: None for a call that is not cached.
_explicit: contextvars.ContextVar[Sequence[str | None] | None] = contextvars.ContextVar(
    "hog_cache_explicit", default=None)


class explicit_keys:
    """``with explicit_keys(keys): submit_calls(...)``: the calls' content keys are ``keys``."""

    def __init__(self, keys: Sequence[str | None]) -> None:
        self.keys = keys
        self.token: contextvars.Token[Sequence[str | None] | None] | None = None

    def __enter__(self) -> None:
        self.token = _explicit.set(self.keys)

    def __exit__(self, *exc: object) -> None:
        assert self.token is not None
        _explicit.reset(self.token)


class _View:
    """What `submit_cached` needs for the calls of one context through one backend and
    store, worked out once (a context is the same object for every call of a function
    through one executor view until its script changes): the cache, the environment digest,
    the hash of the key's parts before the arguments (None: the calls are not cached), the
    journal, the context without the cache settings (what is sent)."""

    __slots__ = (
        "backend",
        "cache",
        "ctx",
        "describes",
        "env",
        "followable",
        "journal",
        "kind",
        "plain",
        "prefix",
        "store",
    )

    def __init__(self, ex: HogExecutor, ctx: CallContext, store: ClientStore | None) -> None:
        import dataclasses

        from .journal import journal_for

        values = ctx.values
        backend = ex.backend
        self.ctx, self.backend, self.store = ctx, backend, store
        self.cache = result_cache(values["cache"], bool(values.get("cache_failures")),
                                  backend, store)
        root = self.cache.root
        self.env = env_digest(ctx.spec.env, root)
        try:
            self.prefix: Any = _key_prefix(_context_function_key(ctx, frozenset()), self.env,
                                           ctx.spec.env_vars)
        except Unkeyable:
            self.prefix = None
        self.journal = journal_for(root)
        self.plain = dataclasses.replace(ctx, values={
            k: v for k, v in values.items() if k not in ("cache", "cache_failures")})
        self.kind = ex.endpoint.backend
        # Another client could follow its jobs (Slurm, Globus Compute): journaled before
        # they go.
        self.followable = callable(getattr(backend, "attach", None))
        # The backend has its own identity for a job to journal once it is sent.
        self.describes = callable(getattr(backend, "job_record", None))

    def keys(self, items: Sequence[bytes], call_refs: Sequence[Sequence[Any]],
             store: ClientStore | None) -> list[str | None]:
        """Each call's key (None: the call is not cached).

        An argument that went through ``store`` counts by the digest of its stored bytes,
        not by its handle (see `content_item`)."""
        explicit = _explicit.get()
        if explicit is not None and len(explicit) == len(items):
            env, env_vars = self.env, self.ctx.spec.env_vars
            return [None if c is None else content_call_key(c, env, env_vars)
                    for c in explicit]
        prefix = self.prefix
        if prefix is None:
            return [None] * len(items)
        keys: list[str | None] = []
        for item, refs in zip(items, call_refs, strict=True):
            if refs:
                found = content_item(item, refs, store)
                if found is None:
                    keys.append(None)
                    continue
                item = found
            h = prefix.copy()
            h.update(item)
            keys.append(h.hexdigest())
        return keys


_views: dict[int, _View] = {}


def _view(ex: HogExecutor, ctx: CallContext, store: ClientStore | None) -> _View:
    """The `_View` of ``ctx`` through ``ex`` and ``store`` (one per context: a context
    belongs to one executor view, and its store rarely changes)."""
    found = _views.get(id(ctx))
    if (found is not None and found.ctx is ctx and found.backend is ex._state.backend
            and found.store is store):
        return found
    made = _View(ex, ctx, store)
    if len(_views) > 1024:
        _views.clear()
    _views[id(ctx)] = made
    return made


def context_keys(ex: HogExecutor, ctx: CallContext, items: Sequence[bytes],
                 call_refs: Sequence[Sequence[Any]], store: ClientStore | None = None
                 ) -> list[str | None]:
    """Each call's key through executor ``ex`` (None: the call is not cached); see
    `_View.keys`."""
    return _view(ex, ctx, store).keys(items, call_refs, store)


# -- submission --------------------------------------------------------------------------------

class Sending:
    """The cache's view of one submission: the keys of the calls sent, in order.

    Called by the executor for each job it builds (`on_job`), before any is sent, it gives
    each job's results the keys of its calls, so that outcomes are stored as they arrive,
    and records the job in the journal: before it is sent when another client could follow
    it (``followable``: Slurm, Globus Compute), else by the writer thread
    (`_journal_later`).
    """

    __slots__ = ("backend", "cache", "cursor", "followable", "jobs", "journal", "keys", "what")

    def __init__(self, cache: ResultCache, keys: list[str | None], what: str,
                 journal: Any, backend: str = "", followable: bool = True) -> None:
        self.backend = backend
        self.followable = followable
        self.cache = cache
        self.keys = keys
        self.what = what
        self.journal = journal
        self.cursor = 0
        self.jobs: list[JobResults] = []

    def on_job(self, results: JobResults) -> None:
        n = len(results.futures)
        cursor = self.cursor
        keys = self.keys if cursor == 0 and n == len(self.keys) else \
            self.keys[cursor:cursor + n]
        self.cursor = cursor + n
        if len(keys) != n:  # the executor packed calls otherwise: store nothing
            return
        attach_outcomes(results, keys, self.cache, self.what)
        self.jobs.append(results)
        if self.journal is None:
            return
        if self.followable:
            self.journal.record(results, keys, self.backend, True)
        else:
            _journal_later(self.journal, results, keys, self.backend)


#: Jobs to be journaled by the writer thread: (journal, results, keys, backend).
_unjournaled: list[tuple[Any, JobResults, Sequence[str | None], str]] = []
_journal_scheduled = False


def _journal_later(journal: Any, results: JobResults, keys: Sequence[str | None],
                   backend: str) -> None:
    """Have the writer thread journal a job that no other client could follow (it dies with
    this one): a job over by then needs no line at all, and the submitting thread pays one
    list append."""
    global _journal_scheduled
    _unjournaled.append((journal, results, keys, backend))
    if not _journal_scheduled:
        _journal_scheduled = True
        later(_journal_batch)


def _journal_batch() -> None:
    """Journal the jobs handed to `_journal_later` that are still running (the writer
    thread)."""
    global _journal_scheduled
    _journal_scheduled = False  # first: a job handed over from now on schedules another
    batch = _unjournaled[:]
    del _unjournaled[:len(batch)]
    for journal, results, keys, backend in batch:
        if not results.job.future.done():
            try:
                journal.record(results, list(keys), backend, False)
            except Exception as exc:  # the call runs all the same
                logger.warning("cannot journal %s: %s", results.job.description, exc)


class _Outcomes:
    """``JobResults.on_outcome`` of a job whose calls are cached: stages each call's outcome
    under its key (see `attach_outcomes`)."""

    __slots__ = ("cache", "keys", "results", "what")

    def __init__(self, keys: Sequence[str | None], cache: ResultCache, what: str,
                 results: JobResults) -> None:
        self.keys, self.cache, self.what, self.results = keys, cache, what, results

    def __call__(self, index: int, raw: tuple[Any, ...], outcome: Outcome) -> None:
        key = self.keys[index]
        if key is None or (not outcome.ok and raw[0] != OUTCOME_ERROR):
            return  # not cached, or the client could not decode the value
        try:
            if raw[0] == OUTCOME_STORED:
                raw = (OUTCOME_VALUE, _stored_bytes(outcome.value, self.results))
            self.cache.stage(key, raw, self.what)
        except Exception as exc:  # the call's outcome is delivered all the same
            logger.warning("cannot store the result of %s: %s", self.what, exc)


def attach_outcomes(results: JobResults, keys: Sequence[str | None], cache: ResultCache,
                    what: str) -> None:
    """Store each call's outcome of ``results`` under its key (one per call, None: not
    cached) as it arrives.

    The outcome is taken before the call's future is settled (a value that came through the
    store is pickled then, before the caller can change it); its entry is written by the
    writer thread (`ResultCache.stage`).
    """
    if len(keys) != len(results.futures):
        raise ValueError(f"{len(keys)} keys for {len(results.futures)} calls")
    results.on_outcome = _Outcomes(keys, cache, what, results)


def _stored_bytes(value: Any, results: JobResults) -> bytes:
    """The pickle of a value that came back through the store."""
    from .store import StoredRef

    store: ClientStore | None = results.store
    if isinstance(value, StoredRef) and store is not None:
        return bytes(store.get(value))
    return _payload.dumps(value, results.module)


def _hit_future(entry: CacheEntry, ctx: CallContext, submitted: float) -> HogFuture[Any]:
    f: HogFuture[Any] = HogFuture()
    f.cached = True
    f.timings = CallTimings(submitted, received=time.time())
    f.stdout = f.stderr = ""
    outcome = _payload.decode_outcome(entry.raw, ctx.module)
    # A new future nobody else holds yet: no waiter to wake, no callback to run, no race.
    if outcome.ok:
        f._result = outcome.value
    else:
        f._exception = outcome.error
    f._state = FINISHED
    return f


def submit_cached(ex: HogExecutor, ctx: CallContext, items: list[bytes],
                  call_refs: list[list[Any]], chunksize: int | None, store: ClientStore | None,
                  threshold: int, keep_stored: bool, optional: bool,
                  submitted: float) -> list[HogFuture[Any]]:
    """`HogExecutor._submit_items` with the cache on: hits resolve at once, calls a previous
    client sent are taken over (see `hog_executor.journal`), the others are sent."""
    view = _view(ex, ctx, store)
    cache = view.cache
    if store is not None:
        store.digests = True  # arguments put from now on are hashed as they are written
    keys = view.keys(items, call_refs, store)
    if len(keys) == 1:  # one call (a submit): the same steps, without the bookkeeping of many
        key = keys[0]
        entry = None if key is None else cache.get(key)
        if entry is not None:
            if store is not None:
                _evict_unsent(store, call_refs, ())
            return [_hit_future(entry, ctx, submitted)]
        journal = view.journal
        if key is not None and journal.may_adopt():
            taken = journal.adopt(ex, ctx, {0: key}, cache, submitted)
            if taken:
                if store is not None:
                    _evict_unsent(store, call_refs, ())
                return [taken[0]]
        return _send(ex, view, keys, items, call_refs, chunksize, store, threshold,
                     keep_stored, optional, submitted)
    futures: list[HogFuture[Any] | None] = [None] * len(items)
    misses: list[int] = []
    get = cache.get
    for i, key in enumerate(keys):
        entry = get(key) if key is not None else None
        if entry is None:
            misses.append(i)
        else:
            futures[i] = _hit_future(entry, ctx, submitted)
    if len(misses) < len(items) and store is not None:
        _evict_unsent(store, call_refs, misses)
    if not misses:
        return futures  # type: ignore[return-value]
    journal = view.journal
    adopted: dict[int, HogFuture[Any]] = {}
    if journal.may_adopt():
        keyed = {i: key for i in misses if (key := keys[i]) is not None}
        if keyed:
            adopted = journal.adopt(ex, ctx, keyed, cache, submitted)
    for i, f in adopted.items():
        futures[i] = f
    rest = [i for i in misses if i not in adopted] if adopted else misses
    if adopted and store is not None:
        _evict_unsent(store, call_refs, rest)
    if len(rest) == len(items):
        return _send(ex, view, keys, items, call_refs, chunksize, store, threshold,
                     keep_stored, optional, submitted)
    if rest:
        sent = _send(ex, view, [keys[i] for i in rest], [items[i] for i in rest],
                     [call_refs[i] for i in rest], chunksize, store, threshold, keep_stored,
                     optional, submitted)
        for i, f in zip(rest, sent, strict=True):
            futures[i] = f
    return futures  # type: ignore[return-value]


def _send(ex: HogExecutor, view: _View, keys: list[str | None], items: list[bytes],
          call_refs: list[list[Any]], chunksize: int | None, store: ClientStore | None,
          threshold: int, keep_stored: bool, optional: bool,
          submitted: float) -> list[HogFuture[Any]]:
    """Send the calls that missed the cache, their jobs registered with the cache
    (`Sending`) and, once the backend has them, their identities journaled."""
    journal = view.journal
    sending = Sending(view.cache, keys, view.ctx.description, journal, view.kind,
                      view.followable)
    sent = ex._submit_items(view.plain, items, call_refs, chunksize, store, threshold,
                            keep_stored, optional, submitted, on_job=sending.on_job)
    if view.describes:
        journal.sent(ex.backend, sending.jobs)
    return sent


def _evict_unsent(store: ClientStore, call_refs: Sequence[Sequence[Any]],
                  sent: Sequence[int]) -> None:
    """Evict the stored arguments of the calls not sent (answered from the cache)."""
    keep = set(sent)
    for i, refs in enumerate(call_refs):
        if i not in keep:
            for ref in refs:
                store.evict(ref)


def describe_entry(entry: CacheEntry) -> dict[str, Any]:
    """What ``hog results show`` prints about an entry (nothing is unpickled but the
    outcome tuple: the value itself stays a pickle)."""
    raw = entry.raw
    out: dict[str, Any] = {"key": entry.key, "what": entry.what, "ok": entry.ok,
                           "created": entry.created, "size": entry.size,
                           "path": str(entry.path)}
    if raw[0] == OUTCOME_ERROR:
        out["error"] = f"{raw[2]}: {raw[3]}"
    return out


def stored_value(entry: CacheEntry) -> Any:
    """The value an entry holds, unpickled (script objects need the script importable)."""
    outcome = _payload.decode_outcome(entry.raw, None)
    return outcome.value if outcome.ok else outcome.error


# For `hog results`: an iterator over the authenticated entries of a root.
def iter_entries(root: Path, on_refused: Callable[[Path, str], None] | None = None
                 ) -> Iterator[CacheEntry]:
    d = ResultDir(root)
    for path in d.entries():
        try:
            yield d.read(path)
        except Exception as exc:
            if on_refused is not None:
                on_refused(path, str(exc))

