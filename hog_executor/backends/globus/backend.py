"""The ``globus`` backend: bundles run as Globus Compute ``ShellFunction`` tasks.

One ``ShellFunction`` is registered per bundle head and tail (a script and its resolved
configuration); each job sends only its payload as the function's format argument. Jobs go
through ``globus_compute_sdk.Executor`` objects (see :mod:`.sdk`), one per distinct
``user_endpoint_config``/``resource_specification``, so the SDK batches bursts of jobs into
few requests. Each job is one Globus Compute task.

Another client's task can be followed by its id (`GlobusBackend.attach`, the journal of the
result cache): its task group is loaded from the service and the task's outcome resolves the
job as if it had been sent here.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...config import Endpoint, Key
from ...errors import BackendError, ConfigError, PayloadTooLargeError, RemoteProcessError
from .. import Backend, Job
from ..lifecycle import resolve
from .keys import GLOBUS_KEYS, resource_specification, user_endpoint_config
from .sdk import (
    REQUEST_BUDGET,
    REQUEST_LIMIT,
    Group,
    SdkExecutors,
    task_request_size,
    track_task_id,
)
from .shell import (
    ARG_LIMIT,
    ARG_MARGIN,
    PAYLOAD_FIELD,
    command_size,
    encode_payload,
    output_from_result,
    payload_budget,
    shared_head,
)

__all__ = ["GlobusBackend"]

#: ``workers`` (how ``map`` sizes its chunks) when ``max_workers`` is not set.
DEFAULT_WORKERS = 16
#: Jobs per request when ``batch_size`` is not set (the SDK's default).
DEFAULT_BATCH_SIZE = 128
#: Bytes `payload_limit` keeps back for the executor's estimate of how a chunk is framed.
CHUNK_SLACK = 512
#: The service's limit for one task result.
RESULT_LIMIT = 10 * 1024 * 1024
#: Seconds queued jobs wait for more before they are handed to the SDK together.
LINGER = 0.02
#: Times a job dropped by an SDK executor that stopped itself (a failed batch) is sent again.
MAX_RESENDS = 3
#: Distinct scripts and configurations whose derived values are cached; beyond, the caches
#: are cleared (only a process running very many scripts gets there).
CACHE_LIMIT = 256

#: What the endpoint's engine says when the worker running a task died (Parsl's
#: ``WorkerLost`` and ``ManagerLost``, a process pool's abrupt termination): the task may
#: succeed on another worker, so it counts as an infrastructure failure (``retries=``).
_WORKER_LOST = re.compile(r"\b(WorkerLost|ManagerLost)\b|terminated abruptly while the future")

_RESULT_SIZE = re.compile(
    r"Task result of (\d+)B exceeded current limit of (\d+)B"
    r"|MaxResultSizeExceeded\((\d+), (\d+)\)"
)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


@dataclass(eq=False)
class _GlobusTask:
    """One job as a Globus Compute task: queued here, then handed to an SDK executor."""

    job: Job
    #: None: a task another client sent (`attached`).
    group: Group | None
    #: The SDK's future, once the job is handed to an SDK executor.
    sdk_future: Any = None
    cancel_requested: bool = False
    resends: int = 0
    retries: int = 0
    notified: set[str] = field(default_factory=set)
    #: The task id and task group the service assigned (the latest, after a resend).
    task_id: str | None = None
    task_group_id: str | None = None
    #: Sent by another client and followed here: never sent (again) from here.
    attached: bool = False


class GlobusBackend(Backend):
    """Runs bundles on a Globus Compute endpoint through ``globus_compute_sdk.Executor``.

    Jobs already sent to the service cannot be stopped: cancelling one resolves its future
    as cancelled at once and its result is discarded when it arrives. A task another client
    sent can be followed (`attach`) by the id `job_record` gives.
    """

    # Not registered with lifecycle.stop_at_exit: tasks sent cannot be stopped, and nothing
    # is left on this machine to clean up.
    keys: ClassVar[Mapping[str, Key]] = GLOBUS_KEYS

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        values = endpoint.values
        if "endpoint" not in values:
            raise ConfigError(
                f"endpoint {endpoint.name!r} uses the globus backend but names no endpoint: add "
                "endpoint = \"<Globus Compute endpoint UUID>\""
            )
        self._batch_size: int = values.get("batch_size", DEFAULT_BATCH_SIZE)
        self._retries: int = values.get("retries", 0)
        self._endpoint_id = str(values["endpoint"]).lower()
        self._workers: int = values.get("max_workers", DEFAULT_WORKERS)
        self._sdk = SdkExecutors(values["endpoint"], batch_size=self._batch_size,
                                 amqp_port=values.get("amqp_port"),
                                 given=values.get("globus_executor"))
        self._lock = threading.Condition(threading.RLock())
        self._queued: list[_GlobusTask] = []
        self._sender: threading.Thread | None = None
        self._shapes: dict[tuple[str, str], tuple[str, int]] = {}
        self._configs: dict[int, tuple[Any, str, str]] = {}
        self._tasks: dict[str, _GlobusTask] = {}
        self._cancelled = False

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def executors_created(self) -> int:
        """SDK executors taken into use so far (a failed batch retires one)."""
        return self._sdk.created

    def payload_limit(self, head: str, tail: str) -> int | None:
        """A ShellFunction command reaches bash as one argument: at most `ARG_LIMIT` bytes.

        A little is kept back for the executor's estimate of a chunk's framing.
        """
        return max(0, payload_budget(head, tail) - CHUNK_SLACK)

    # -- submission -------------------------------------------------------------------------

    def submit(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self._check_size(job)
        with self._lock:
            self._ensure_open()
            groups = [self._group(job) for job in jobs]
            # Everything that can fail without sending a task happens first.
            for job, group in zip(jobs, groups, strict=True):
                self._sdk.function_id(self._sdk.executor(group), self._function(job))
            tasks = [_GlobusTask(job, group) for job, group in zip(jobs, groups, strict=True)]
            for task in tasks:
                self._tasks[task.job.id] = task
            was_empty = not self._queued
            self._queued.extend(tasks)
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_queued, daemon=True,
                                                name="hog-globus-sender")
                self._sender.start()
            if was_empty or len(self._queued) >= self._batch_size:
                self._lock.notify_all()  # the sender waits for the first job or a full batch

    def _send_queued(self) -> None:
        """Hand queued jobs to the SDK together, so that a burst becomes few requests."""
        while True:
            failed: list[tuple[Job, BaseException]] = []
            with self._lock:
                while not self._queued and not self._closed:
                    self._lock.wait()
                if not self._queued:
                    break
                deadline = time.monotonic() + LINGER
                while len(self._queued) < self._batch_size and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
                tasks, self._queued = self._queued, []
                for task in tasks:
                    try:
                        self._send(task)
                    except Exception as send_error:
                        self._tasks.pop(task.job.id, None)
                        failed.append((task.job, send_error))
            for job, error in failed:  # resolved without the lock: their callbacks may submit
                _fail(job, error)
        with self._lock:
            cancel = self._cancelled
            self._sdk.close(cancel=cancel)

    def _shape(self, job: Job) -> tuple[str, int]:
        """The head shared by all functions of a script, and the command size without payload."""
        key = (job.head, job.tail)
        shape = self._shapes.get(key)
        if shape is None:
            if len(self._shapes) >= CACHE_LIMIT:
                self._shapes.clear()
            shape = self._shapes[key] = (shared_head(job.head), command_size(job.head, job.tail, 0))
        return shape

    def _check_size(self, job: Job) -> None:
        size = self._shape(job)[1] + 4 * ((len(job.payload) + 2) // 3)
        limit = ARG_LIMIT - ARG_MARGIN
        if size > limit:
            raise PayloadTooLargeError(
                f"task {job.id} ({job.description or 'bundle'}) is {size:,} bytes as a Globus "
                f"Compute ShellFunction command, over the {limit:,} bytes bash accepts as one "
                "argument on the endpoint; nothing was sent. Pass large arguments through a "
                "ProxyStore store (HogExecutor(..., store=...)) or a path the function reads "
                "remotely, or submit smaller chunks (map(..., chunksize=...)).",
                size=size, limit=limit,
            )
        request = task_request_size(len(job.payload))
        if request > REQUEST_LIMIT:  # pragma: no cover - the command limit is far lower
            raise PayloadTooLargeError(
                f"task {job.id} would be a {request:,}-byte request, over Globus Compute's "
                f"{REQUEST_LIMIT:,}-byte limit; nothing was sent. Pass large arguments through "
                "a ProxyStore store (HogExecutor(..., store=...)).",
                size=request, limit=REQUEST_LIMIT,
            )

    def _group(self, job: Job) -> Group:
        values = job.config or self.endpoint.values
        cached = self._configs.get(id(values))
        if cached is None or cached[0] is not values:
            if len(self._configs) >= CACHE_LIMIT:
                self._configs.clear()
            uep = user_endpoint_config(values)
            spec = resource_specification(values)
            cached = self._configs[id(values)] = (values, _dumps(uep), _dumps(spec))
        large = task_request_size(len(job.payload)) * self._batch_size > REQUEST_BUDGET
        return Group(cached[1], cached[2], large)

    def _function(self, job: Job) -> Any:
        return self._sdk.function(self._shape(job)[0], job.tail, job.walltime)

    def _send(self, task: _GlobusTask) -> None:
        """Hand ``task`` to its SDK executor (with the lock held)."""
        job = task.job
        assert task.group is not None, "a task followed from another client is never sent"
        future = self._sdk.submit(task.group, self._function(job),
                                  {PAYLOAD_FIELD: encode_payload(job.payload)}, f"task {job.id}")
        track_task_id(future, lambda task_id, group: self._assigned(task, task_id, group))
        task.sdk_future = future
        self._tasks[job.id] = task
        future.add_done_callback(lambda f: self._finished(task, f))

    def _assigned(self, task: _GlobusTask, task_id: str, task_group_id: str | None) -> None:
        """The service assigned ``task_id`` (an SDK thread, without the lock: `job_record`
        reads what is set here, the task id last)."""
        if task_id not in task.notified:
            task.task_group_id = task_group_id
            task.task_id = task_id
            task.notified.add(task_id)
            task.job.on_task_id(task_id)

    # -- following tasks other clients sent -------------------------------------------------

    def job_record(self, job_id: str) -> dict[str, Any] | None:
        """What another client needs to follow job ``job_id`` (see `attach`): its task id,
        task group and this endpoint. None: the service has not assigned a task id yet, or
        the job is over.

        Reads without the lock: it is called from ``job.on_task_id``, on the SDK's thread
        that assigns task ids.
        """
        task = self._tasks.get(job_id)
        if task is None:
            return None
        task_id, group = task.task_id, task.task_group_id
        if task_id is None or group is None:
            return None
        return {"task_id": task_id, "task_group_id": group, "endpoint": self._endpoint_id}

    def attach(self, job: Job, record: Mapping[str, Any]) -> None:
        """Follow a task another client sent (described by its `job_record`) as ``job``.

        The task's outcome resolves ``job.future`` as a task sent here would; a task that
        finished while nobody watched has its outcome loaded from the service. Nothing is
        sent, and the task is never sent again (``retries=`` and a dropped batch do not
        apply: ``job`` has no payload).

        Raises:
            BackendError: the record names another endpoint or no task, the service does not
                know the task (in its task group), or the backend is shut down.
        """
        task_id, group = record.get("task_id"), record.get("task_group_id")
        endpoint = str(record.get("endpoint", "")).lower()
        if endpoint != self._endpoint_id:
            raise BackendError(
                f"Globus Compute task {task_id} was sent to endpoint {endpoint or '(unknown)'}, "
                f"not to this executor's endpoint {self._endpoint_id}")
        if not task_id or not group:
            raise BackendError(f"the record of task {job.id} names no Globus Compute task "
                               "and task group")
        with self._lock:
            self._ensure_open()
            future = self._sdk.reattach(str(group), str(task_id))
            task = _GlobusTask(job, None, sdk_future=future, attached=True)
            self._tasks[job.id] = task
        self._assigned(task, str(task_id), str(group))
        future.add_done_callback(lambda f: self._finished(task, f))

    # -- results ----------------------------------------------------------------------------

    def _finished(self, task: _GlobusTask, future: Any) -> None:
        # Job futures are resolved after the lock is released: their callbacks may submit.
        job = task.job
        error: BaseException | None = None
        with self._lock:
            if self._tasks.get(job.id) is task and task.sdk_future is future:
                del self._tasks[job.id]
            if future.cancelled():
                if task.cancel_requested or self._cancelled:
                    cancel = True
                elif task.attached:
                    cancel = False
                    error = BackendError(
                        f"task {job.id} ({job.description or 'bundle'}): the Globus Compute "
                        f"SDK dropped task {task.task_id}, followed from another client")
                elif not self._closed and task.resends < MAX_RESENDS:
                    # The SDK executor shut itself down (a failed batch): send it again.
                    task.resends += 1
                    error = self._resend(task)
                    if error is None:
                        return
                    cancel = False
                else:
                    cancel = False
                    error = BackendError(
                        f"task {job.id} ({job.description or 'bundle'}): the Globus Compute "
                        "SDK executor dropped the call before it ran"
                        + (" (the backend is shut down)" if self._closed else
                           f" {task.resends} times"))
            else:
                cancel = False
        if cancel:
            resolve(job.future, cancel=True)
            return
        if error is not None:
            _fail(job, error)
            return
        exc = future.exception()
        if exc is None:
            try:
                output = output_from_result(future.result())
            except Exception as err:
                _fail(job, BackendError(
                    f"task {job.id}: unexpected result from the endpoint: {err}"))
                return
            resolve(job.future, output)
            return
        if type(exc).__name__ != "TaskExecutionFailed":  # the request failed, nothing ran
            with self._lock:
                retry = (task.retries < self._retries and not task.cancel_requested
                         and not self._closed and not task.attached)
                if retry:
                    task.retries += 1
                    error = self._resend(task)
            if retry:
                if error is not None:
                    _fail(job, error)
                return
        _fail(job, self._task_error(task, exc))

    def _resend(self, task: _GlobusTask) -> BaseException | None:
        """Send ``task`` again (with the lock held); the error if that failed."""
        try:
            self._send(task)
        except Exception as send_error:
            return send_error
        return None

    def _task_error(self, task: _GlobusTask, exc: BaseException) -> BaseException:
        job = task.job
        where = f"task {task.sdk_future.task_id or job.id} ({job.description or 'bundle'})"
        text = str(exc)
        if type(exc).__name__ == "TaskExecutionFailed":
            match = _RESULT_SIZE.search(text)
            if match or "MaxResultSizeExceeded" in text:
                found = [g for g in match.groups() if g] if match else []
                size = int(found[0]) if found else RESULT_LIMIT + 1
                limit = int(found[1]) if found else RESULT_LIMIT
                return PayloadTooLargeError(
                    f"{where}: the result is {size:,} bytes, over Globus Compute's limit of "
                    f"{limit:,} bytes per result. Return less data, write it to a file the "
                    "client can read, or pass large values through a ProxyStore store "
                    "(HogExecutor(..., store=...)).",
                    size=size, limit=limit,
                )
            lost = _WORKER_LOST.search(text)
            if lost:
                return RemoteProcessError(
                    f"{where} was lost: the endpoint worker running it died "
                    f"({lost.group(0)}); look at the endpoint's logs for why (memory?). "
                    f"retries= runs such calls again.\n{text}",
                    state="WorkerLost",
                )
            return BackendError(
                f"{where} failed on the endpoint (it could not run the bundle or read its "
                f"output):\n{text}"
            )
        return BackendError(
            f"{where}: Globus Compute did not accept the submission: "
            f"{type(exc).__name__}: {text}"
        )

    # -- cancellation and shutdown ----------------------------------------------------------

    def cancel(self, job: Job) -> bool:
        with self._lock:
            task = self._tasks.get(job.id)
            if task is not None:
                task.cancel_requested = True
                if task.sdk_future is None:  # not handed to the SDK yet: it is never sent
                    self._queued.remove(task)
                    del self._tasks[job.id]
        if task is None or task.sdk_future is None:
            return resolve(job.future, cancel=True)
        if task.sdk_future.cancel():
            return True
        return job.future.cancelled()

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        with self._lock:
            self._closed = True
            self._cancelled = self._cancelled or cancel
            dropped = self._queued if cancel else []
            if cancel:
                for task in dropped:
                    del self._tasks[task.job.id]
                self._queued = []
            self._lock.notify_all()
            sender = self._sender
        for task in dropped:
            resolve(task.job.future, cancel=True)
        if cancel:
            with self._lock:
                sent = [task for task in self._tasks.values() if task.sdk_future is not None]
            for task in sent:
                task.cancel_requested = True
                task.sdk_future.cancel()
        if sender is None:
            with self._lock:
                self._sdk.close(cancel=self._cancelled)
        elif wait and sender is not threading.current_thread():
            sender.join()  # the sender shuts the SDK executors down once everything is sent
        if wait:
            from concurrent.futures import wait as wait_all

            with self._lock:
                tasks = list(self._tasks.values())
            wait_all([task.job.future for task in tasks])


def _fail(job: Job, error: BaseException) -> None:
    if not isinstance(error, (BackendError, PayloadTooLargeError, RemoteProcessError)):
        error = BackendError(f"task {job.id}: {type(error).__name__}: {error}")
    resolve(job.future, error=error)
