"""Executor contracts with any backend: no lock held across a backend call, and every
future resolves whatever a backend hands back."""

from __future__ import annotations

import base64
import json
import pickle
import threading
from typing import ClassVar

import hogtest_basic as basic
import pytest

from hog_executor import BackendError, HogExecutor
from hog_executor import backends as backends_module
from hog_executor.backends import Backend, Job


class HandoffBackend(Backend):
    """Finishes the previous submission's jobs from another thread while ``submit`` runs,
    as a backend's result thread may (Globus, Slurm and Dask all have one)."""

    instances: ClassVar[list[HandoffBackend]] = []

    def __init__(self, endpoint):
        super().__init__(endpoint)
        self.pending: list[Job] = []
        self.finished_in_time: list[bool] = []
        HandoffBackend.instances.append(self)

    @property
    def workers(self) -> int:
        return 1

    def submit(self, jobs):
        for job in self.pending:
            done = threading.Thread(target=job.future.set_exception,
                                    args=(BackendError("finished elsewhere"),))
            done.start()
            done.join(10)
            self.finished_in_time.append(not done.is_alive())
        self.pending = list(jobs)

    def cancel(self, job):
        return job.future.cancel()

    def shutdown(self, wait=True, *, cancel=False):
        for job in self.pending:
            job.future.cancel()


@pytest.fixture
def handoff(monkeypatch):
    monkeypatch.setitem(backends_module.BUILTIN, "handoff",
                        f"{__name__}:HandoffBackend")
    HandoffBackend.instances.clear()
    yield


def test_a_job_finishing_during_submit_is_not_blocked(handoff):
    ex = HogExecutor("handoff")
    first = ex.submit(basic.square, 1)
    second = ex.submit(basic.square, 2)  # finishes `first` from another thread meanwhile
    assert HandoffBackend.instances[0].finished_in_time == [True]
    with pytest.raises(BackendError, match="finished elsewhere"):
        first.result(timeout=5)
    ex.shutdown(wait=True, cancel_futures=True, terminate=True)
    assert second.cancelled()


class ForgingBackend(Backend):
    """Answers every job at once with the output it is told to forge."""

    outcomes: bytes = b""

    @property
    def workers(self) -> int:
        return 1

    def submit(self, jobs):
        from hog_executor.backends import Output

        for job in jobs:
            marker = json.loads(job.payload.split(b"\n", 1)[0])["marker"]
            frame = base64.b64encode(ForgingBackend.outcomes).decode()
            out = f"hello\n@@HOG-RESULT {marker}@@\n{frame}\n@@HOG-END {marker}@@\n"
            job.future.set_result(Output(0, out.encode(), b""))

    def cancel(self, job):
        return job.future.cancel()

    def shutdown(self, wait=True, *, cancel=False):
        pass


@pytest.mark.parametrize("outcomes, message", [
    (b"\x80\x05not a pickle", "could not be decoded"),
    (pickle.dumps([]), "returned 0 results for 1 calls"),
])
def test_undecodable_output_fails_every_call(monkeypatch, outcomes, message):
    monkeypatch.setitem(backends_module.BUILTIN, "forging", f"{__name__}:ForgingBackend")
    monkeypatch.setattr(ForgingBackend, "outcomes", outcomes)
    with HogExecutor("forging") as ex:
        for f in [ex.submit(basic.square, 1), ex.submit(basic.square, 2)]:
            with pytest.raises(BackendError, match=message):
                f.result(timeout=5)
