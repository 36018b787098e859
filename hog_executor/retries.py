"""Which failed calls run again: infrastructure failures, within a budget.

A call whose process or node died without an answer (a signal such as the OOM killer's
SIGKILL, a Slurm ``NODE_FAIL``, ``BOOT_FAIL``, ``OUT_OF_MEMORY`` or ``PREEMPTED``, a lost Dask
worker, a lost Globus Compute endpoint worker) runs again, up to ``retries`` times. A call
that raised, or ran past its walltime, runs again only when ``retry_on`` (exception types,
or a predicate) says so. Preemption does not use up the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import RemoteProcessError, WalltimeExceeded

__all__ = ["INFRASTRUCTURE_STATES", "RetryPolicy", "is_infrastructure"]

#: Scheduler states that say the infrastructure, not the call, failed.
INFRASTRUCTURE_STATES = frozenset({"NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                                   "KilledWorker", "WorkerLost"})
#: States whose retries do not count against the budget.
FREE_STATES = frozenset({"PREEMPTED"})

RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool] | None


def is_infrastructure(error: BaseException) -> bool:
    """Whether ``error`` says the call's process or node died without an answer."""
    if isinstance(error, WalltimeExceeded) or not isinstance(error, RemoteProcessError):
        return False
    if error.state in INFRASTRUCTURE_STATES:
        return True
    rc = error.returncode
    return rc is not None and (rc < 0 or 128 < rc < 160)  # killed by a signal


@dataclass(frozen=True)
class RetryPolicy:
    """How many times, and on what, a call runs again.

    Attributes:
        retries: runs after the first one for infrastructure failures (and ``retry_on``).
        retry_on: exception types, or a predicate of the exception, that also run again.
    """

    retries: int = 0
    retry_on: RetryOn = None

    @classmethod
    def of(cls, values: dict[str, Any]) -> RetryPolicy | None:
        """The policy of resolved endpoint values (None: no retries)."""
        retries = values.get("retries") or 0
        return cls(retries, values.get("retry_on")) if retries else None

    def decide(self, error: BaseException, counted: int) -> tuple[bool, bool]:
        """``(run again, counts against the budget)`` for a call that failed with ``error``
        after ``counted`` counted retries."""
        wanted = is_infrastructure(error) or self._asked(error)
        if not wanted:
            return False, False
        if isinstance(error, RemoteProcessError) and error.state in FREE_STATES:
            return True, False
        return counted < self.retries, True

    def _asked(self, error: BaseException) -> bool:
        if self.retry_on is None:
            return False
        if isinstance(self.retry_on, tuple):
            return isinstance(error, self.retry_on)
        try:
            return bool(self.retry_on(error))
        except Exception:  # a predicate that fails says no
            return False
