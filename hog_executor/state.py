"""What an executor and all of its ``options()`` views share: the backend, the jobs in flight,
the shutdown flag, and the lifetime of the store large data travels through."""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from .backends.lifecycle import at_exit_after
from .errors import ConfigError

if TYPE_CHECKING:
    from .backends import Backend
    from .results import JobResults
    from .store import ClientStore

__all__ = ["SHUTDOWN_MESSAGE", "ExecutorState"]

#: What submitting after shutdown raises (as ``RuntimeError``), in the standard library's words.
SHUTDOWN_MESSAGE = "cannot schedule new futures after shutdown"


class ExecutorState:
    """The state an executor shares with its views.

    Attributes:
        backend: runs the jobs.
        lock: guards ``jobs`` and the store; never held while calling into the backend.
        submit_lock: orders submissions against shutdown; held across ``backend.submit``
            (whose jobs may finish, and take ``lock``, before it returns).
        shutdown: no new calls are accepted.
        jobs: the jobs in flight, with their calls' futures.
    """

    def __init__(self, backend: Backend, store: Any = None, default_store: bool = False) -> None:
        self.backend = backend
        self.lock = threading.Lock()
        self.submit_lock = threading.RLock()
        self.shutdown = False
        self.jobs: set[JobResults] = set()
        self.store_setting = store
        self.default_store = default_store
        self.no_default_store = False
        self._store: ClientStore | None = None
        # An executor dropped without shutdown lets its backend go: warm runners leave, and
        # the work directory is removed once the jobs still queued are done.
        weakref.finalize(self, backend.shutdown, False).atexit = False

    def check_open(self) -> None:
        """Raise ``RuntimeError`` once the executor is shut down."""
        if self.shutdown:
            raise RuntimeError(SHUTDOWN_MESSAGE)

    @property
    def may_store(self) -> bool:
        """Whether large data can go through a store (one exists or can be created)."""
        return self._store is not None or self.store_setting is not None or (
            self.default_store and not self.no_default_store)

    def client_store(self, create: bool = True) -> ClientStore | None:
        """The executor's store (None: there is none).

        A configured store is built on first use. The local endpoint's default private
        store is built only when ``create`` is set (something is large enough to need it),
        and only if proxystore is installed.

        Raises:
            ConfigError: a store is configured but proxystore (or redis) is not installed.
        """
        if self._store is not None or (self.store_setting is None and not self.default_store):
            return self._store
        if self.store_setting is None and (not create or self.no_default_store):
            return None
        with self.lock:
            if self._store is None:
                from . import store as _store

                try:
                    if self.store_setting is not None:
                        self._store = _store.ClientStore(_store.open_store(self.store_setting),
                                                         explicit=True)
                    else:
                        self._store = _store.private_file_store()
                except ImportError as exc:
                    if self.store_setting is None:  # no proxystore: no default store
                        self.no_default_store = True
                        return None
                    raise ConfigError(
                        f"store= needs proxystore on the client ({exc}); install "
                        "hog-executor[proxystore]"
                    ) from exc
                # Closed when the executor is collected, or at exit once its calls are done.
                weakref.finalize(self, self._store.close).atexit = False
                at_exit_after(self.backend, self.close_store)
        return self._store

    def close_store(self) -> None:
        if self._store is not None:
            self._store.close()

    def track(self, jobs: list[JobResults]) -> None:
        with self.lock:
            self.jobs.update(jobs)

    def forget(self, *jobs: JobResults) -> None:
        with self.lock:
            self.jobs.difference_update(jobs)

    def in_flight(self) -> list[JobResults]:
        with self.lock:
            return list(self.jobs)
