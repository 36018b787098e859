"""The Globus Compute SDK as the ``globus`` backend uses it.

`SdkExecutors` keeps the SDK ``Executor`` objects of one backend, one per `Group` (distinct
``user_endpoint_config``/``resource_specification``), created lazily and replaced when one
stops itself after a failed batch; and the registered ``ShellFunction`` objects, registered
once per client; and the tasks of other clients' task groups, loaded to be followed
(`SdkExecutors.reattach`). `track_task_id` makes an SDK future report the task id (and task
group) the service assigns; `login_client` logs in. The SDK is imported here only, and only
when used.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ...errors import BackendError, ConfigError
from .shell import ARG_LIMIT, command_template

__all__ = [
    "MAX_TASK_REQUEST",
    "REQUEST_BUDGET",
    "REQUEST_LIMIT",
    "Group",
    "SdkExecutors",
    "login_client",
    "task_request_size",
    "track_task_id",
]

logger = logging.getLogger(__name__)

#: The service's limit for one submission request (a task or a whole batch).
REQUEST_LIMIT = 10_000_000
#: What a batch of tasks may add up to: the rest is room for the request's other fields.
REQUEST_BUDGET = 9_000_000
#: Lines of stdout/stderr the endpoint keeps: the result frame is always the last lines.
SNIPPET_LINES = 1000
#: Seconds the ShellFunction's own walltime allows beyond the bundle's, which is enforced
#: by the bundle itself (and kills the whole process group).
WALLTIME_BACKSTOP = 60.0
#: Distinct bundle functions kept registered; beyond, all are forgotten (and registered
#: again when used: only a process running very many scripts gets there).
FUNCTION_CACHE_LIMIT = 256
#: Times a task is handed to the executor replacing one that stopped meanwhile.
SUBMIT_ATTEMPTS = 2


def task_request_size(payload_size: int) -> int:
    """An upper bound of what one task with a payload of ``payload_size`` bytes adds to a
    request: the base64 payload, serialized by the SDK (base64 again), plus framing."""
    encoded = 4 * ((payload_size + 2) // 3)
    return 4 * ((encoded + 200 + 2) // 3) + 400


#: The largest a single task can be in a request (its command is capped by `ARG_LIMIT`).
MAX_TASK_REQUEST = task_request_size(3 * (ARG_LIMIT // 4))


class Group(NamedTuple):
    """What the tasks sent through one SDK executor share."""

    #: ``user_endpoint_config`` as JSON (``"null"``: none).
    endpoint_config: str
    #: ``resource_specification`` as JSON (``"null"``: none).
    resources: str
    #: Whether its tasks are so large that a batch must hold fewer of them.
    large: bool


def _stopped(executor: Any) -> bool:
    """Whether an SDK executor has shut down (it does after a failed batch)."""
    return bool(getattr(executor, "_stopped", False))


class SdkExecutors:
    """The SDK executors and registered functions of one backend.

    Not thread-safe: the backend calls it with its lock held.

    Attributes:
        created: SDK executors taken into use so far (a failed batch retires one; a new one
            takes over).
    """

    def __init__(self, endpoint_id: str, *, batch_size: int, amqp_port: int | None,
                 given: Any) -> None:
        """
        Args:
            endpoint_id: the Globus Compute endpoint.
            batch_size: most tasks per request.
            amqp_port: the port for results (None: the SDK's default).
            given: an SDK executor to submit through, when its configuration fits (None).

        Raises:
            ConfigError: ``given`` submits to another endpoint.
        """
        if given is not None:
            given_id = getattr(given, "endpoint_id", None)
            if given_id is not None and str(given_id).lower() != endpoint_id:
                raise ConfigError(
                    f"globus_executor submits to endpoint {given_id}, but this endpoint is "
                    f"{endpoint_id}; create the Executor with endpoint_id=None or the same "
                    "endpoint"
                )
        self._endpoint_id = endpoint_id
        self._batch_size = batch_size
        self._amqp_port = amqp_port
        self._given = given
        self._client: Any = None
        self._executors: dict[Group, Any] = {}
        self._functions: dict[tuple[str, str, float | None], Any] = {}
        self._function_ids: dict[int, str] = {}
        #: The executor that loads other clients' task groups (`reattach`), once needed.
        self._reloader: Any = None
        #: Per task group loaded: the SDK futures of its tasks not followed yet, by task id.
        self._reloaded: dict[str, dict[str, Any]] = {}
        self.created = 0

    @property
    def executors(self) -> list[Any]:
        """The SDK executors in use, one per group."""
        return list(self._executors.values())

    def function(self, head: str, tail: str, walltime: float | None) -> Any:
        """The ``ShellFunction`` running ``head``, a payload, ``tail`` (the same object for
        the same arguments, so it is registered once)."""
        limit = None if walltime is None else walltime + WALLTIME_BACKSTOP
        key = (head, tail, limit)
        fn = self._functions.get(key)
        if fn is None:
            from globus_compute_sdk import ShellFunction

            fn = ShellFunction(command_template(head, tail), walltime=limit,
                               snippet_lines=SNIPPET_LINES, name="hog_bundle")
            if len(self._functions) >= FUNCTION_CACHE_LIMIT:
                self._functions.clear()
                self._function_ids.clear()
            self._functions[key] = fn
        return fn

    def function_id(self, executor: Any, fn: Any) -> str:
        """Register ``fn`` once per client; later executors reuse its id (no request).

        Raises:
            BackendError: the service refused the registration.
        """
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

    def executor(self, group: Group) -> Any:
        """The SDK executor of ``group``: a new one if it has none, or if it stopped.

        Raises:
            BackendError: the executor (or the client it needs) could not be created.
        """
        executor = self._executors.get(group)
        if executor is not None and not _stopped(executor):
            return executor
        uep, spec = json.loads(group.endpoint_config), json.loads(group.resources)
        if group.large:
            batch_size = max(1, min(self._batch_size, REQUEST_BUDGET // MAX_TASK_REQUEST))
        else:
            batch_size = self._batch_size
        given = self._given
        if (executor is None and given is not None and not _stopped(given)
                and not group.large and given.user_endpoint_config == uep
                and given.resource_specification == spec):
            executor = given
            if executor.endpoint_id is None:
                executor.endpoint_id = self._endpoint_id
            executor.batch_size = min(executor.batch_size, batch_size)
        else:
            executor = self._new_executor(uep, spec, batch_size)
        self.created += 1
        self._executors[group] = executor
        return executor

    def _new_executor(self, uep: Mapping[str, Any] | None, spec: Mapping[str, Any] | None,
                      batch_size: int) -> Any:
        given = self._given
        kwargs: dict[str, Any] = {}
        if self._amqp_port is not None:
            kwargs["amqp_port"] = self._amqp_port
        elif given is not None and getattr(given, "amqp_port", None) is not None:
            kwargs["amqp_port"] = given.amqp_port
        if given is not None:
            cls, client = type(given), given.client
        else:
            from globus_compute_sdk import Executor

            if self._client is None:
                self._client = login_client()
            cls, client = Executor, self._client
        try:
            return cls(endpoint_id=self._endpoint_id, client=client, user_endpoint_config=uep,
                       resource_specification=spec, batch_size=batch_size, **kwargs)
        except Exception as exc:
            raise BackendError(
                f"cannot create a Globus Compute executor: {type(exc).__name__}: {exc}"
            ) from exc

    def submit(self, group: Group, fn: Any, kwargs: Mapping[str, Any], what: str) -> Any:
        """Hand one task of ``fn`` to the SDK executor of ``group``; return its SDK future.

        Raises:
            BackendError: the task was not accepted (``what`` names it).
        """
        attempts = 0
        while True:
            executor = self.executor(group)  # replaces one that shut itself down
            fn_id = self.function_id(executor, fn)
            attempts += 1
            try:
                return executor.submit_to_registered_function(fn_id, kwargs=dict(kwargs))
            except Exception as exc:
                if attempts < SUBMIT_ATTEMPTS and _stopped(executor):
                    continue  # a failed batch stopped it in the meantime
                raise BackendError(
                    f"Globus Compute did not accept {what}: {type(exc).__name__}: {exc}"
                ) from exc

    def reattach(self, task_group_id: str, task_id: str) -> Any:
        """The SDK future of task ``task_id``, sent by another client in ``task_group_id``.

        The task group is loaded once (``Executor.reload_tasks`` on an SDK executor of its
        own, created like the others): tasks already finished come with their outcome, the
        others are watched for it. Each task's future is handed out once; those never handed
        out are no longer watched after `close` (the SDK would hold the process at exit
        until they finish).

        Raises:
            BackendError: the service could not list the task group, or ``task_id`` is not
                in it (no longer known, or already followed).
        """
        tasks = self._reloaded.get(task_group_id)
        if tasks is None:
            if self._reloader is None or _stopped(self._reloader):
                self._reloader = self._new_executor(None, None, self._batch_size)
            tasks = self._reloaded[task_group_id] = _reload(self._reloader, task_group_id)
        future = tasks.pop(task_id, None)
        if future is None:
            raise BackendError(
                f"Globus Compute does not list task {task_id} in task group {task_group_id}"
            )
        return future

    def close(self, *, cancel: bool) -> None:
        """Shut down the SDK executors created here (not the one given), without waiting.

        Tasks already followed (`reattach`) keep being watched for their outcome; the other
        tasks of their groups no longer are."""
        for group, tasks in self._reloaded.items():
            _unwatch(group, list(tasks.values()))
        self._reloaded.clear()
        reloader, self._reloader = self._reloader, None
        for executor in [*self._executors.values(), *([reloader] if reloader else [])]:
            if executor is self._given:
                continue
            try:
                executor.shutdown(wait=False, cancel_futures=cancel)
            except Exception as exc:  # best effort: its tasks are resolved or dropped anyway
                logger.debug("shutting down a Globus Compute executor failed: %s", exc)


def _reload(executor: Any, task_group_id: str) -> dict[str, Any]:
    """The SDK futures of the tasks of ``task_group_id``, by task id (see `SdkExecutors.reattach`).

    ``reload_tasks`` makes the group the default of executors created later in this process:
    the default is put back, so that this client's own tasks stay in groups of their own.

    Raises:
        BackendError: the service could not list the group.
    """
    from globus_compute_sdk.sdk.executor import Executor

    missing: Any = object()
    default: Any = getattr(Executor, "_default_task_group_id", missing)
    try:
        futures = executor.reload_tasks(task_group_id)
    except Exception as exc:
        raise BackendError(
            f"Globus Compute did not list task group {task_group_id}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if default is not missing:  # an SDK without the class default has nothing to restore
            Executor._default_task_group_id = default
    return {str(f.task_id): f for f in futures}


def _unwatch(task_group_id: str, futures: list[Any]) -> None:
    """Have the SDK's result watcher of ``task_group_id`` stop waiting for ``futures``.

    It keeps every future it watches until its result arrives, and the process waits for
    them at exit: tasks of another client that nobody here follows must not hold it.
    Reaches into the watcher (``_open_futures``); a watcher without it is left alone.
    """
    import uuid

    from globus_compute_sdk.sdk.executor import _RESULT_WATCHERS

    try:
        watcher = _RESULT_WATCHERS.get(uuid.UUID(task_group_id))
    except ValueError:
        return
    lock = getattr(watcher, "_new_futures_lock", None)
    watched = getattr(watcher, "_open_futures", None)
    if lock is None or not isinstance(watched, dict):
        return
    with lock:
        for future in futures:
            task_id = future.task_id
            if watched.get(task_id) is future:
                del watched[task_id]
        empty = getattr(watcher, "_open_futures_empty", None)
        if not watched and empty is not None:
            empty.set()


def track_task_id(future: Any, on_task_id: Callable[[str, str | None], None]) -> None:
    """Have the SDK future ``future`` call ``on_task_id(task_id, task_group_id)`` when the
    service assigns its task id (at once if it has one). The SDK records the task group
    before the task id; None when it did not."""
    future.__dict__["_hog_on_task_id"] = on_task_id
    future.__class__ = _tracking_class()
    if future.task_id:
        on_task_id(str(future.task_id), _task_group(future))


def _task_group(future: Any) -> str | None:
    group = getattr(future, "_metadata", {}).get("task_group_uuid")
    return None if group is None else str(group)


_Tracked: type | None = None


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
                    callback(str(value), _task_group(self))

        _Tracked = TrackedComputeFuture
    return _Tracked


def login_client() -> Any:
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
