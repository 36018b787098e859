"""A backend that keeps the jobs it is given and runs nothing: what ``hog bundle`` uses to
show the exact bundle a submission would send (and tests, to look at jobs)."""

from __future__ import annotations

from collections.abc import Sequence

from . import Backend, Job

__all__ = ["CapturingBackend"]


class CapturingBackend(Backend):
    """Keeps each job handed to it in `jobs` (and counts the `submit` calls); shutting it
    down cancels them."""

    def __init__(self, workers: int = 1) -> None:
        self.jobs: list[Job] = []
        self.submits = 0
        self._workers = workers

    @property
    def workers(self) -> int:
        return self._workers

    def submit(self, jobs: Sequence[Job]) -> None:
        self.submits += 1
        self.jobs.extend(jobs)

    def cancel(self, job: Job) -> bool:
        return job.future.cancel()

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        for job in self.jobs:
            job.future.cancel()
