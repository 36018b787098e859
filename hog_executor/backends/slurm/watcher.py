"""One thread per process that watches every Slurm job of every slurm backend.

Each round asks the controller about all watched jobs at once (one ``squeue`` for any number
of jobs and array tasks), then reports what changed to the jobs: :meth:`Watched.started`
once a job runs, :meth:`Watched.requeued` when a job that ran is back in the queue (Slurm
requeued it: preemption, ``scontrol requeue``, a node failure; jobs are submitted with
``--requeue``, and the watcher follows them to their end), :meth:`Watched.settle` while it is
finished or missing from the queue. The
delay between rounds starts at the smallest ``poll_interval`` of the watched jobs and grows
while nothing changes (up to ``BACKOFF_SPAN`` times that, at most ``MAX_INTERVAL``), so long
jobs cost the controller little; a new submission brings it back down.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "STARTED_STATES",
    "TERMINAL_STATES",
    "WAITING_STATES",
    "SlurmQueryError",
    "Watched",
    "Watcher",
    "parse_squeue",
    "query_states",
    "watcher",
]

#: States in which a job has ended (``PREEMPTED`` and ``NODE_FAIL`` may still turn into a
#: requeue: see `hog_executor.backends.slurm.states.REQUEUE_GRACE`).
TERMINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
})
#: States in which a job's script has started.
STARTED_STATES = frozenset({
    "COMPLETING", "RESIZING", "RUNNING", "SIGNALING", "STAGE_OUT", "STOPPED", "SUSPENDED",
})
#: States of a job waiting to run (again, after a requeue).
WAITING_STATES = frozenset({
    "PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "CONFIGURING",
})

#: Growth of the delay between rounds while nothing changes.
BACKOFF = 1.5
#: The delay grows to at most this many times the poll interval ...
BACKOFF_SPAN = 10.0
#: ... and never beyond this many seconds (unless the poll interval itself is larger).
MAX_INTERVAL = 30.0
#: After the controller has not answered for this long, the watched jobs fail.
CONTROLLER_GRACE = 600.0
#: Seconds one squeue may take.
QUERY_TIMEOUT = 60.0
#: Jobs named per squeue command line.
QUERY_BATCH = 500

logger = logging.getLogger(__name__)


class SlurmQueryError(RuntimeError):
    """squeue failed (the controller did not answer, or the command is missing)."""


class Watched(Protocol):
    """A Slurm job the watcher follows: a plain job, or one task of a job array."""

    @property
    def slurm_id(self) -> str:
        """``"123"`` for a plain job, ``"123_4"`` for task 4 of array job 123."""

    @property
    def array_id(self) -> str:
        """The job id given to squeue (``"123"`` for both forms above)."""

    @property
    def poll_interval(self) -> float:
        """The shortest delay between rounds this job's backend wants."""

    def started(self) -> None:
        """Called once, when the job is first seen running."""

    def requeued(self) -> None:
        """Called each time a job seen running is seen waiting in the queue again."""

    def settle(self, state: str | None, missing_for: float, settling_for: float) -> bool:
        """The job has ended (``state``) or is missing from squeue (``state`` None).

        Args:
            state: the final state, or None when squeue no longer lists the job.
            missing_for: seconds the job has been missing from squeue (0 when listed).
            settling_for: seconds since settle was first called for this job.

        Returns:
            True when the job is finished with; False to be asked again next round.
        """

    def abandon(self, message: str) -> None:
        """The watcher gives up on the job (the controller has not answered for long)."""


@dataclass(eq=False)
class _Followed:
    """A followed job and what the watcher has seen of it."""

    job: Watched
    state: str | None = None
    started: bool = False
    running: bool = False  # seen running since it was last seen waiting
    missing_since: float | None = None
    settling_since: float | None = None


def parse_squeue(text: str) -> dict[str, tuple[str, str]]:
    """Parse ``squeue -h -r -o '%i|%T|%r'``: job or array-task id -> (state, reason)."""
    states: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) < 2 or not parts[0]:
            continue
        states[parts[0]] = (parts[1].strip().upper(), parts[2].strip() if len(parts) > 2 else "")
    return states


def query_states(job_ids: Iterable[str], run: Callable[..., subprocess.CompletedProcess[str]]
                 = subprocess.run) -> dict[str, tuple[str, str]]:
    """The state of every listed job and of each task of listed arrays (one squeue per batch).

    Jobs the controller no longer knows are simply absent.

    Raises:
        SlurmQueryError: squeue failed.
    """
    ids = sorted(set(job_ids))
    states: dict[str, tuple[str, str]] = {}
    for start in range(0, len(ids), QUERY_BATCH):
        batch = ids[start:start + QUERY_BATCH]
        if len(batch) == 1:
            batch = batch * 2  # squeue fails on one unknown id, not on a list of them
        try:
            proc = run(
                ["squeue", "--noheader", "--array", "--states=all", "--jobs=" + ",".join(batch),
                 "--format=%i|%T|%r"],
                capture_output=True, text=True, timeout=QUERY_TIMEOUT, stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SlurmQueryError(f"squeue could not run: {exc}") from None
        if proc.returncode != 0:
            message = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
            raise SlurmQueryError(f"squeue failed: {message}")
        states.update(parse_squeue(proc.stdout))
    return states


class Watcher:
    """Follows Slurm jobs until they settle; one instance per process (see :func:`watcher`)."""

    def __init__(self, query: Callable[[Iterable[str]], dict[str, tuple[str, str]]]
                 = query_states) -> None:
        self._query = query
        self._cond = threading.Condition()
        self._entries: dict[str, _Followed] = {}
        self._kicked = False
        self._thread: threading.Thread | None = None

    def track(self, jobs: Sequence[Watched]) -> None:
        """Start following ``jobs`` (the delay between rounds drops to its minimum)."""
        with self._cond:
            for job in jobs:
                self._entries[job.slurm_id] = _Followed(job)
            self._kicked = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="hog-slurm-watcher",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def kick(self) -> None:
        """Bring the delay between rounds back to its minimum (something is expected soon)."""
        with self._cond:
            self._kicked = True
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Block until ``predicate()`` holds (checked after every round); return whether it does."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def watching(self) -> int:
        """How many jobs are followed."""
        with self._cond:
            return len(self._entries)

    def _wait_round(self, last: float, interval: float) -> tuple[list[_Followed], float, float]:
        """Wait for the next round; return the entries, the base interval and the interval."""
        with self._cond:
            while True:
                while not self._entries:
                    self._cond.wait()
                    last = 0.0
                base = min(e.job.poll_interval for e in self._entries.values())
                if self._kicked:
                    self._kicked = False
                    interval = base
                remaining = last + interval - time.monotonic()
                if remaining <= 0:
                    return list(self._entries.values()), base, max(interval, base)
                self._cond.wait(remaining)

    def _loop(self) -> None:
        last = 0.0
        interval = 0.0
        failing_since: float | None = None
        while True:
            entries, base, interval = self._wait_round(last, interval)
            cap = max(base, min(MAX_INTERVAL, base * BACKOFF_SPAN))
            try:
                changed = self._round(entries)
                failing_since = None
            except SlurmQueryError as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since >= CONTROLLER_GRACE:
                    self._give_up(entries, f"{exc} (for {now - failing_since:.0f} s)")
                    failing_since = None
                changed = False
            except Exception as exc:  # a bug: never let the thread die silently
                logger.exception("the Slurm watcher failed")
                self._give_up(entries, f"the Slurm watcher failed: {exc!r}")
                changed = True
            interval = base if changed else min(interval * BACKOFF, cap)
            last = time.monotonic()
            # Hold no settled job while waiting: each references its backend, which must be
            # free to be collected (and clean up) once its owner drops it.
            del entries
            with self._cond:
                self._cond.notify_all()

    def _round(self, entries: list[_Followed]) -> bool:
        states = self._query({e.job.array_id for e in entries})
        now = time.monotonic()
        changed = False
        for entry in entries:
            listed = states.get(entry.job.slurm_id)
            state = listed[0] if listed else None
            if state != entry.state:
                changed = True
                entry.state = state
            if listed is not None:
                entry.missing_since = None
                if state in STARTED_STATES:
                    entry.running = True
                    if not entry.started:
                        entry.started = True
                        self._call(entry, entry.job.started, "start")
                elif state in WAITING_STATES and entry.running:
                    entry.running = False
                    self._call(entry, entry.job.requeued, "requeue")
                if state not in TERMINAL_STATES:
                    entry.settling_since = None  # back in the queue (requeued): not ending
                    continue
            elif entry.missing_since is None:
                entry.missing_since = now
            if entry.settling_since is None:
                entry.settling_since = now
            missing_for = 0.0 if entry.missing_since is None else now - entry.missing_since
            try:
                settled = entry.job.settle(state, missing_for, now - entry.settling_since)
            except Exception as exc:  # a bug: fail this job, keep watching the others
                logger.exception("settling Slurm job %s failed", entry.job.slurm_id)
                self._give_up([entry], f"settling Slurm job {entry.job.slurm_id} failed: "
                                       f"{exc!r}")
                settled = False
                changed = True
            if settled:
                self._forget(entry)
                changed = True
        return changed

    @staticmethod
    def _call(entry: _Followed, callback: Callable[[], None], what: str) -> None:
        try:
            callback()
        except Exception:  # a bug: the job is followed all the same
            logger.exception("the %s callback of Slurm job %s failed", what, entry.job.slurm_id)

    def _give_up(self, entries: list[_Followed], message: str) -> None:
        for entry in entries:
            self._forget(entry)
            try:
                entry.job.abandon(message)
            except Exception:  # a bug: the other jobs are given up on all the same
                logger.exception("abandoning Slurm job %s failed", entry.job.slurm_id)

    def _forget(self, entry: _Followed) -> None:
        with self._cond:
            if self._entries.get(entry.job.slurm_id) is entry:
                del self._entries[entry.job.slurm_id]
            self._cond.notify_all()


_watcher: Watcher | None = None
_watcher_lock = threading.Lock()


def watcher() -> Watcher:
    """The process's watcher."""
    global _watcher
    with _watcher_lock:
        if _watcher is None:
            _watcher = Watcher()
        return _watcher
