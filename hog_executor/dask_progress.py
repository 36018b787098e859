"""Progress of a ``dask.compute`` through hog-executor's logging, as for ``map``.

::

    from hog_executor.dask_progress import DaskProgress

    with DaskProgress("simulation"):
        dask.compute(*results)            # any scheduler that runs dask callbacks

It reads the scheduler state that dask's local schedulers (and schedulers built on
``dask.local``) hand to callbacks, and shows done/running/queued/failed counts and the rate
with the same bar or plain lines as ``map(..., progress=True)``
(see `hog_executor.progress`). This module imports dask; import it only where dask is used.
"""

from __future__ import annotations

import threading
from typing import Any

from dask.callbacks import Callback  # type: ignore[import-not-found,unused-ignore]

from .progress import Counts, Tracker, ensure_console

__all__ = ["DaskProgress"]


class DaskProgress(Callback):  # type: ignore[misc,unused-ignore]
    """A dask callback that shows the progress of each ``compute`` on the hog_executor logger.

    Args:
        label: what the lines are about (default ``dask``).
        interval: seconds between plain lines when not on a terminal.
    """

    def __init__(self, label: str = "dask", interval: float | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call,unused-ignore]
        self.label = label
        self.interval = interval
        self._lock = threading.Lock()
        self._state: dict[str, Any] | None = None
        self._failed = 0
        self._tracker: Tracker | None = None

    def _counts(self, elapsed: float) -> Counts:
        with self._lock:
            state = self._state
            if state is None:
                return Counts(0, 0, 0, 0, 0, elapsed)
            done = len(state["finished"])
            running = len(state["running"])
            queued = len(state["ready"]) + len(state["waiting"])
            failed = self._failed
        return Counts(done + running + queued + failed, done, failed, running, queued, elapsed)

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        ensure_console()
        with self._lock:
            self._state = state
            self._failed = 0
        self._tracker = Tracker([], self.label, self.interval, source=self._counts).begin()

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict[str, Any],
                  worker_id: Any) -> None:
        if self._tracker is not None:
            self._tracker.wake()

    def _finish(self, dsk: Any, state: dict[str, Any], errored: bool) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            return
        with self._lock:
            if errored:  # whatever did not finish is counted as failed
                self._failed = len(state["running"]) + len(state["ready"]) + len(
                    state["waiting"])
                self._state = {"finished": state["finished"], "running": (), "ready": (),
                               "waiting": ()}
        tracker.stop()
        tracker.join(timeout=5)
