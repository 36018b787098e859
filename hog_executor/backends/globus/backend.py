"""The ``globus`` backend: bundles run as Globus Compute ``ShellFunction`` tasks.

One ``ShellFunction`` is registered per bundle head and tail (a script and its resolved
configuration); each call sends only its payload as the function's format argument. Calls go
through ``globus_compute_sdk.Executor`` objects, created lazily, one per distinct
``user_endpoint_config``/``resource_specification``, so the SDK batches bursts of calls into
few requests.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...config import Endpoint, Key
from ...errors import BackendError, ConfigError, PayloadTooLargeError
from .. import Backend, Job
from .keys import GLOBUS_KEYS, user_endpoint_config
from .shell import (
    ARG_LIMIT,
    ARG_MARGIN,
    PAYLOAD_FIELD,
    command_size,
    command_template,
    encode_payload,
    output_from_result,
    payload_budget,
    shared_head,
)

__all__ = ["GlobusBackend"]

#: ``workers`` (how ``map`` sizes its chunks) when ``max_workers`` is not set.
DEFAULT_WORKERS = 16
#: Calls per request when ``batch_size`` is not set (the SDK's default).
DEFAULT_BATCH_SIZE = 128
#: The service's limit for one submission request (a task or a whole batch).
REQUEST_LIMIT = 10_000_000
#: What a batch of tasks may add up to: the rest is room for the request's other fields.
REQUEST_BUDGET = 9_000_000
#: Bytes `payload_limit` keeps back for the executor's estimate of how a chunk is framed.
CHUNK_SLACK = 512
#: The service's limit for one task result.
RESULT_LIMIT = 10 * 1024 * 1024
#: Seconds queued calls wait for more before they are handed to the SDK together.
LINGER = 0.02
#: Lines of stdout/stderr the endpoint keeps: the result frame is always the last lines.
SNIPPET_LINES = 1000
#: Seconds the ShellFunction's own walltime allows beyond the bundle's, which is enforced
#: by the bundle itself (and kills the whole process group).
WALLTIME_BACKSTOP = 60.0

_RESULT_SIZE = re.compile(
    r"Task result of (\d+)B exceeded current limit of (\d+)B"
    r"|MaxResultSizeExceeded\((\d+), (\d+)\)"
)


def task_request_size(payload_size: int) -> int:
    """An upper bound of what one task with a payload of ``payload_size`` bytes adds to a
    request: the base64 payload, serialized by the SDK (base64 again), plus framing."""
    encoded = 4 * ((payload_size + 2) // 3)
    return 4 * ((encoded + 200 + 2) // 3) + 400


#: The largest a single task can be in a request (its command is capped by `ARG_LIMIT`).
MAX_TASK_REQUEST = task_request_size(3 * (ARG_LIMIT // 4))


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


@dataclass(eq=False)
class _Task:
    """One job on its way through an SDK executor."""

    job: Job
    group: tuple[str, str, int]
    future: Any = None
    cancel_requested: bool = False
    resends: int = 0
    retries: int = 0
    notified: set[str] = field(default_factory=set)


def _tracking_class() -> type:
    """A ComputeFuture whose ``task_id`` reports when the service assigns it."""
    global _Tracked
    if _Tracked is None:
        from globus_compute_sdk.sdk.asynchronous.compute_future import ComputeFuture

        class TrackedComputeFuture(ComputeFuture):  # type: ignore[misc,unused-ignore]
            @property
            def task_id(self) -> str | None:
                return self.__dict__.get("task_id")  # type: ignore[no-any-return,unused-ignore]

            @task_id.setter
            def task_id(self, value: str | None) -> None:
                self.__dict__["task_id"] = value
                callback = self.__dict__.get("_hog_on_task_id")
                if value and callback is not None:
                    callback(str(value))

        _Tracked = TrackedComputeFuture
    return _Tracked


_Tracked: type | None = None


class GlobusBackend(Backend):
    """Runs bundles on a Globus Compute endpoint through ``globus_compute_sdk.Executor``.

    Calls already sent to the service cannot be stopped: cancelling one resolves its future
    as cancelled at once and its result is discarded when it arrives.
    """

    keys: ClassVar[Mapping[str, Key]] = GLOBUS_KEYS

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        values = endpoint.values
        if "endpoint" not in values:
            raise ConfigError(
                f"endpoint {endpoint.name!r} uses the globus backend but names no endpoint: add "
                "endpoint = \"<Globus Compute endpoint UUID>\""
            )
        self._endpoint_id: str = values["endpoint"]
        self._batch_size: int = values.get("batch_size", DEFAULT_BATCH_SIZE)
        self._retries: int = values.get("retries", 0)
        self._workers: int = values.get("max_workers", DEFAULT_WORKERS)
        self._amqp_port: int | None = values.get("amqp_port")
        self._given: Any = values.get("globus_executor")
        self._lock = threading.Condition(threading.RLock())
        self._pending: list[_Task] = []
        self._sender: threading.Thread | None = None
        self._client: Any = None
        self._executors: dict[tuple[str, str, int], Any] = {}
        self._functions: dict[tuple[str, str, float | None], Any] = {}
        self._shapes: dict[tuple[str, str], tuple[str, int]] = {}
        self._configs: dict[int, tuple[Any, str, str]] = {}
        self._function_ids: dict[int, str] = {}
        self._tasks: dict[str, _Task] = {}
        self._closed = False
        self._cancelled = False
        #: SDK executors created so far (a failed batch retires one; a new one takes over).
        self.executors_created = 0
        if self._given is not None:
            given_id = getattr(self._given, "endpoint_id", None)
            if given_id is not None and str(given_id).lower() != self._endpoint_id:
                raise ConfigError(
                    f"globus_executor submits to endpoint {given_id}, but this endpoint is "
                    f"{self._endpoint_id}; create the Executor with endpoint_id=None or the same "
                    "endpoint"
                )

    @property
    def workers(self) -> int:
        return self._workers

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
            if self._closed:
                raise BackendError("the globus backend is shut down")
            tasks = [_Task(job, self._group(job)) for job in jobs]
            # Everything that can fail without sending a task happens first.
            for task in tasks:
                self._function_id(self._executor(task.group), self._function(task.job))
            for task in tasks:
                self._tasks[task.job.id] = task
            was_empty = not self._pending
            self._pending.extend(tasks)
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_pending, daemon=True,
                                                name="hog-globus-sender")
                self._sender.start()
            if was_empty or len(self._pending) >= self._batch_size:
                self._lock.notify_all()  # the sender waits for the first call or a full batch

    def _send_pending(self) -> None:
        """Hand queued calls to the SDK together, so that a burst becomes few requests."""
        while True:
            failed: list[tuple[Job, BaseException]] = []
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                if not self._pending:
                    break
                deadline = time.monotonic() + LINGER
                while len(self._pending) < self._batch_size and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
                tasks, self._pending = self._pending, []
                for task in tasks:
                    try:
                        self._send(task)
                    except Exception as send_error:
                        self._tasks.pop(task.job.id, None)
                        failed.append((task.job, send_error))
            for job, error in failed:  # resolved without the lock: their callbacks may submit
                _fail(job, error)
        self._close_executors()

    def _close_executors(self) -> None:
        """Shut down the SDK executors this backend created (once nothing is left to send)."""
        with self._lock:
            executors = [e for e in self._executors.values() if e is not self._given]
            cancel = self._cancelled
        for executor in executors:
            try:
                executor.shutdown(wait=False, cancel_futures=cancel)
            except Exception:
                pass

    def _shape(self, job: Job) -> tuple[str, int]:
        """The head shared by all functions of a script, and the command size without payload."""
        key = (job.head, job.tail)
        shape = self._shapes.get(key)
        if shape is None:
            if len(self._shapes) > 256:
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

    def _group(self, job: Job) -> tuple[str, str, int]:
        values = job.config or self.endpoint.values
        cached = self._configs.get(id(values))
        if cached is None or cached[0] is not values:
            if len(self._configs) > 256:
                self._configs.clear()
            uep = user_endpoint_config(values)
            spec = values.get("resource_specification") or None
            cached = self._configs[id(values)] = (values, _dumps(uep), _dumps(spec))
        large = int(task_request_size(len(job.payload)) * self._batch_size > REQUEST_BUDGET)
        return cached[1], cached[2], large

    def _function(self, job: Job) -> Any:
        walltime = None if job.walltime is None else job.walltime + WALLTIME_BACKSTOP
        key = (self._shape(job)[0], job.tail, walltime)
        fn = self._functions.get(key)
        if fn is None:
            from globus_compute_sdk import ShellFunction

            fn = ShellFunction(command_template(key[0], job.tail), walltime=walltime,
                               snippet_lines=SNIPPET_LINES, name="hog_bundle")
            if len(self._functions) > 256:
                self._functions.clear()
                self._function_ids.clear()
            self._functions[key] = fn
        return fn

    def _function_id(self, executor: Any, fn: Any) -> str:
        """Register ``fn`` once per client; later executors reuse its id (no request)."""
        known = self._function_ids.get(id(fn))
        registry = getattr(executor, "_function_registry", {})
        if known is not None and registry.get(fn) == known:
            return known
        try:
            fn_id = executor.register_function(fn, function_id=known)
        except Exception as exc:
            raise BackendError(
                f"Globus Compute did not register the bundle function: {type(exc).__name__}: "
                f"{exc}"
            ) from exc
        self._function_ids[id(fn)] = str(fn_id)
        return str(fn_id)

    def _executor(self, group: tuple[str, str, int]) -> Any:
        executor = self._executors.get(group)
        if executor is not None and not getattr(executor, "_stopped", False):
            return executor
        uep, spec, large = json.loads(group[0]), json.loads(group[1]), group[2]
        if large:
            batch_size = max(1, min(self._batch_size, REQUEST_BUDGET // MAX_TASK_REQUEST))
        else:
            batch_size = self._batch_size
        given = self._given
        if (executor is None and given is not None and not getattr(given, "_stopped", False)
                and not large and given.user_endpoint_config == uep
                and given.resource_specification == spec):
            executor = given
            if executor.endpoint_id is None:
                executor.endpoint_id = self._endpoint_id
            executor.batch_size = min(executor.batch_size, batch_size)
        else:
            cls, client = self._sdk_class_and_client()
            kwargs: dict[str, Any] = {}
            if self._amqp_port is not None:
                kwargs["amqp_port"] = self._amqp_port
            elif given is not None and getattr(given, "amqp_port", None) is not None:
                kwargs["amqp_port"] = given.amqp_port
            try:
                executor = cls(endpoint_id=self._endpoint_id, client=client,
                               user_endpoint_config=uep, resource_specification=spec,
                               batch_size=batch_size, **kwargs)
            except Exception as exc:
                raise BackendError(
                    f"cannot create a Globus Compute executor: {type(exc).__name__}: {exc}"
                ) from exc
        self.executors_created += 1
        self._executors[group] = executor
        return executor

    def _sdk_class_and_client(self) -> tuple[type, Any]:
        if self._given is not None:
            return type(self._given), self._given.client
        from globus_compute_sdk import Executor

        if self._client is None:
            self._client = _login_client()
        return Executor, self._client

    def _send(self, task: _Task) -> None:
        job = task.job
        kwargs = {PAYLOAD_FIELD: encode_payload(job.payload)}
        for attempt in (1, 2):
            executor = self._executor(task.group)  # replaces one that shut itself down
            fn_id = self._function_id(executor, self._function(job))
            try:
                future = executor.submit_to_registered_function(fn_id, kwargs=kwargs)
                break
            except Exception as exc:
                if attempt == 1 and getattr(executor, "_stopped", False):
                    continue  # a failed batch stopped it in the meantime
                raise BackendError(
                    f"Globus Compute did not accept task {job.id}: {type(exc).__name__}: {exc}"
                ) from exc
        future.__dict__["_hog_on_task_id"] = lambda task_id: self._assigned(task, task_id)
        future.__class__ = _tracking_class()
        if future.task_id:
            self._assigned(task, future.task_id)
        task.future = future
        self._tasks[job.id] = task
        future.add_done_callback(lambda f: self._finished(task, f))

    def _assigned(self, task: _Task, task_id: str) -> None:
        if task_id not in task.notified:
            task.notified.add(task_id)
            task.job.on_task_id(task_id)

    # -- results ----------------------------------------------------------------------------

    def _finished(self, task: _Task, future: Any) -> None:
        # Job futures are resolved after the lock is released: their callbacks may submit.
        job = task.job
        error: BaseException | None = None
        with self._lock:
            if self._tasks.get(job.id) is task and task.future is future:
                del self._tasks[job.id]
            if future.cancelled():
                if task.cancel_requested or self._cancelled:
                    cancel = True
                elif not self._closed and task.resends < 3:
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
            job.future.cancel()
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
            if not job.future.done():
                try:
                    job.future.set_result(output)
                except Exception:  # cancelled concurrently
                    pass
            return
        if type(exc).__name__ != "TaskExecutionFailed":  # the request failed, nothing ran
            with self._lock:
                retry = (task.retries < self._retries and not task.cancel_requested
                         and not self._closed)
                if retry:
                    task.retries += 1
                    error = self._resend(task)
            if retry:
                if error is not None:
                    _fail(job, error)
                return
        _fail(job, self._task_error(task, exc))

    def _resend(self, task: _Task) -> BaseException | None:
        """Send ``task`` again (with the lock held); the error if that failed."""
        try:
            self._send(task)
        except Exception as send_error:
            return send_error
        return None

    def _task_error(self, task: _Task, exc: BaseException) -> BaseException:
        job = task.job
        where = f"task {task.future.task_id or job.id} ({job.description or 'bundle'})"
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
            unsent = task is None or task.future is None
            if task is not None:
                task.cancel_requested = True
                if task.future is None:  # not handed to the SDK yet: it is never sent
                    self._pending.remove(task)
                    del self._tasks[job.id]
        if unsent or task is None:
            return job.future.cancel()
        if task.future.cancel():
            return True
        return job.future.cancelled()

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        with self._lock:
            self._closed = True
            self._cancelled = self._cancelled or cancel
            dropped = self._pending if cancel else []
            if cancel:
                for task in dropped:
                    del self._tasks[task.job.id]
                self._pending = []
            self._lock.notify_all()
            sender = self._sender
        for task in dropped:
            task.job.future.cancel()
        if cancel:
            with self._lock:
                sent = [task for task in self._tasks.values() if task.future is not None]
            for task in sent:
                task.cancel_requested = True
                task.future.cancel()
        if sender is None:
            self._close_executors()
        elif wait and sender is not threading.current_thread():
            sender.join()  # the sender shuts the SDK executors down once everything is sent
        if wait:
            from concurrent.futures import wait as wait_all

            with self._lock:
                tasks = list(self._tasks.values())
            wait_all([task.job.future for task in tasks])


def _fail(job: Job, error: BaseException) -> None:
    if not isinstance(error, (BackendError, PayloadTooLargeError)):
        error = BackendError(f"task {job.id}: {type(error).__name__}: {error}")
    fut: Future[Any] = job.future
    if not fut.done():
        try:
            fut.set_exception(error)
        except Exception:
            pass


def _login_client() -> Any:
    """A ``globus_compute_sdk.Client`` with the user's stored credentials.

    Raises:
        BackendError: no credentials and no terminal to log in from, or the client failed.
    """
    from globus_compute_sdk import Client

    try:
        from globus_compute_sdk.sdk.auth.globus_app import get_globus_app
    except ImportError:  # an SDK without GlobusApp logins
        return Client()
    try:
        app = get_globus_app()
    except ValueError as exc:
        raise BackendError(f"Globus Compute credentials: {exc}") from None
    interactive = sys.stdin is not None and sys.stdin.isatty()
    needs_login = type(app).__name__ == "UserApp" and app.login_required()
    if needs_login and not interactive:
        raise BackendError(
            "no Globus credentials for Globus Compute, and this process cannot ask for a "
            "login (stdin is not a terminal). Log in once from a terminal (python -c "
            "\"import globus_compute_sdk as g; g.Client()\"), or set "
            "GLOBUS_COMPUTE_CLIENT_ID and GLOBUS_COMPUTE_CLIENT_SECRET for a client identity, "
            "or pass HogExecutor(..., globus_executor=Executor(client=...))."
        )
    try:
        return Client(app=app)
    except Exception as exc:
        raise BackendError(
            f"cannot reach Globus Compute: {type(exc).__name__}: {exc}"
        ) from exc
