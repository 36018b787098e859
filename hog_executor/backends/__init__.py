"""Backends run bundles somewhere and hand back what they printed.

A backend knows nothing about Python functions: it receives `Job` objects (bash text
plus an id), runs them, and resolves one ``Future[Output]`` per job. Backends are registered
by name in the ``hog_executor.backends`` entry-point group, so a site can ship its own.

Words used throughout: a *call* is one function invocation; a *chunk* is the calls of a
``map`` packed into one payload; a *job* is what a backend runs for one bundle, that is one
chunk (a `Job` here; a process, a Slurm job or array task, a Dask or Globus Compute task
there). :mod:`.lifecycle` holds what all backends share around their jobs: resolving their
futures, and their shutdown at interpreter exit.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..config import COMMON_KEYS, Endpoint, Key
from ..errors import BackendError, ConfigError
from .outputs import CallOutput, Output

__all__ = ["Backend", "CallOutput", "Job", "Output", "backend_class", "backend_keys",
           "backend_names"]

ENTRY_POINT_GROUP = "hog_executor.backends"

#: Backends that ship with hog-executor, found without reading entry points.
BUILTIN: dict[str, str] = {
    "local": "hog_executor.backends.local:LocalBackend",
    "slurm": "hog_executor.backends.slurm:SlurmBackend",
    "globus": "hog_executor.backends.globus:GlobusBackend",
    "dask": "hog_executor.backends.dask:DaskBackend",
}


@dataclass(eq=False)
class Job:
    """One job: a bundle to run, carrying one call or one chunk of a ``map``.

    The bundle text is ``head + payload_line(payload) + tail``; ``head`` and ``tail`` are the
    same for every call of one function through one executor view, so a backend that can
    keep them remotely (a registered Globus function) needs to send only the payload.

    Attributes:
        id: a unique job id (shown on the calls' futures as ``task_id``).
        head: the bundle up to the payload line.
        payload: the serialized call(s).
        tail: the bundle after the payload line.
        walltime: the call's walltime in seconds, for backends whose scheduler wants one.
        config: the resolved endpoint values for this call (``options()`` overrides applied).
        description: what runs, for humans (``script.py:function``).
        calls: how many calls the payload carries.
        on_start: called by the backend once when the bundle starts running.
        on_task_id: called by the backend with the id its service assigned to the job.
        runner_key: jobs with the same key may share a warm runner process (the same
            environment, script text and process-level settings); None: the job runs in a
            process of its own.
        on_call: called by a backend running the job on a warm runner with each call's
            `CallOutput` as it arrives; the job's output is then marked ``streamed``.
        future: resolved by the backend with an `Output`, or with an exception: a
            `BackendError` when the bundle could not be run, or another `HogError` (such as
            `RemoteProcessError`) that the backend determined itself.
    """

    id: str
    head: str
    payload: bytes
    tail: str
    walltime: float | None = None
    config: Mapping[str, Any] = field(default_factory=dict, repr=False)
    description: str = ""
    calls: int = 1
    on_start: Callable[[], None] = field(default=lambda: None, repr=False)
    on_task_id: Callable[[str], None] = field(default=lambda task_id: None, repr=False)
    runner_key: str | None = None
    on_call: Callable[[CallOutput], None] = field(default=lambda call: None, repr=False)
    future: Future[Output] = field(default_factory=Future, repr=False)

    @property
    def bundle(self) -> str:
        """The complete bash text (rendered on each access)."""
        from ..bundle import payload_line

        return self.head + payload_line(self.payload) + self.tail


class Backend(abc.ABC):
    """The interface every backend implements."""

    #: Configuration keys this backend understands besides `COMMON_KEYS`.
    keys: ClassVar[Mapping[str, Key]] = {}
    #: What a backend registered with `~.lifecycle.stop_at_exit` does at interpreter exit:
    #: run its queued jobs to the end (True, as a process pool does), or cancel them.
    drains_at_exit: ClassVar[bool] = False
    #: Set by ``shutdown``; `_ensure_open` refuses new jobs from then on.
    _closed: bool = False

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._closed = False

    def _ensure_open(self) -> None:
        """Refuse to take jobs once shut down.

        Raises:
            BackendError: ``shutdown`` was called.
        """
        if self._closed:
            raise BackendError(f"the {self.endpoint.backend} backend is shut down")

    @property
    @abc.abstractmethod
    def workers(self) -> int:
        """How many bundles can run at once (used to size ``map`` chunks)."""

    def payload_limit(self, head: str, tail: str) -> int | None:
        """The largest payload this backend carries with ``head`` and ``tail`` (None: any).

        ``map`` packs its chunks under this limit.
        """
        return None

    @abc.abstractmethod
    def submit(self, jobs: Sequence[Job]) -> None:
        """Start running ``jobs``; resolve each ``job.future`` with an `Output`.

        Raises:
            BackendError: the jobs could not be submitted (nothing was started).
        """

    @abc.abstractmethod
    def cancel(self, job: Job) -> bool:
        """Stop ``job`` if it has not finished; return whether it was stopped."""

    def leave_at_exit(self) -> bool:
        """At interpreter exit, leave the jobs that are still queued or running to finish on
        their own, if this backend can and should (a result cache's journal lets a later
        client collect them); returns whether it did. Default: it cannot."""
        return False

    @abc.abstractmethod
    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        """Release resources; with ``cancel``, stop queued and running jobs first."""


def backend_names() -> list[str]:
    """Names of every installed backend."""
    return sorted({*BUILTIN, *_entry_points()})


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``.

    Raises:
        ConfigError: no backend of that name is installed.
    """
    target = BUILTIN.get(name)
    if target is not None:
        import importlib

        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    else:
        ep = _entry_points().get(name)
        if ep is None:
            raise ConfigError(
                f"no backend named {name!r} is installed; installed backends: "
                f"{', '.join(backend_names())}"
            )
        cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"backend {name!r} does not implement hog_executor.backends.Backend")
    return cls


def backend_keys(name: str) -> dict[str, Key]:
    """Every key an endpoint of backend ``name`` accepts."""
    return {**COMMON_KEYS, **backend_class(name).keys}
