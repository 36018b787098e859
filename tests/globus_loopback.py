"""A stand-in for the Globus Compute web service, feeding a real endpoint engine.

`LoopbackClient` implements the client methods ``globus_compute_sdk.Executor`` uses
(``fx_serializer``, ``register_function``, ``create_batch``, ``batch_run``). ``batch_run``
does what the service does with a batch: it joins each task's serialized arguments to the
registered function's serialized code, packs them as a ``Task`` message and hands it to the
engine, exactly as an endpoint receives it. `LoopbackWatcher` stands in for the AMQP result
stream: it takes the engine's packed ``Result`` and resolves the SDK future as the SDK's own
result watcher does. Everything else (serialization, ShellFunction execution, the engine) is
the real code.

For clients in other processes, which may be killed while their tasks run, the service
outlives them: `LoopbackService` keeps functions, task groups and results next to the
engine, `serve` serves it from the test process (a ``multiprocessing.managers`` server on a
Unix socket with an authkey), and `ServiceClient` is the client side a client process
hands to its ``globus_compute_sdk.Executor``: it forwards registrations and batches,
answers ``reload_tasks`` (``_compute_web_client.v2.get_task_group`` and
``get_task_batch``), and `PollingWatcher` polls the service for results.
"""

from __future__ import annotations

import json
import secrets
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Any

from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Result, Task
from globus_compute_endpoint.engines.base import GCFuture
from globus_compute_sdk.errors import TaskExecutionFailed
from globus_compute_sdk.sdk import executor as sdk_executor
from globus_compute_sdk.sdk.batch import Batch
from globus_compute_sdk.sdk.client import FunctionRegistrationData
from globus_compute_sdk.serialize import ComputeSerializer


def run_task(engine: Any, task_id: uuid.UUID, fn_id: Any, code: str, payload: str,
             resources: Any, serializers: Any, on_result: Callable[[bytes], None]) -> None:
    """Hand one task to ``engine`` as the service does: the registered function's code joined
    to the task's serialized arguments, packed as a ``Task`` message; ``on_result`` receives
    the packed ``Result``."""
    packed = messagepack.pack(Task(task_id=task_id, task_buffer=code + payload))
    fut = GCFuture(task_id, function_id=fn_id)
    fut.add_done_callback(lambda f: on_result(f.result()))
    engine.submit(fut, packed, resources or {}, serializers)


def _create_batch(serializer: ComputeSerializer, task_group_id: Any = None,
                  resource_specification: Any = None, user_endpoint_config: Any = None,
                  create_websocket_queue: bool = False, result_serializers: Any = None) -> Batch:
    return Batch(task_group_id, resource_specification, user_endpoint_config,
                 create_websocket_queue, serializer=serializer,
                 result_serializers=result_serializers)


class LoopbackWatcher:
    """Resolves SDK futures from the engine's results (the service's result queue).

    Its open futures are kept as the SDK's ``_ResultWatcher`` keeps them (``_open_futures``
    under ``_new_futures_lock``), which the backend reaches into to stop watching tasks."""

    def __init__(self, serializer: ComputeSerializer) -> None:
        self._deserialize = serializer.deserialize
        self._new_futures_lock = threading.Lock()
        self._open_futures: dict[str, Any] = {}
        self._results: dict[str, Result] = {}

    # The part of the SDK's _ResultWatcher interface the Executor calls.
    def is_alive(self) -> bool:
        return True

    def watch_for_task_results(self, executor: Any, futures: list[Any]) -> int:
        ready = []
        with self._new_futures_lock:
            for f in futures:
                if f.task_id and not f.done():
                    f._metadata["executor_id"] = id(executor)
                    if f.task_id in self._results:
                        ready.append((f, self._results.pop(f.task_id)))
                    else:
                        self._open_futures[f.task_id] = f
        for f, res in ready:
            self._resolve(f, res)
        return len(futures)

    def get_open_futures(self, executor: Any = None) -> dict[str, Any]:
        with self._new_futures_lock:
            return {tid: f for tid, f in self._open_futures.items()
                    if executor is None or f._metadata.get("executor_id") == id(executor)}

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass

    def deliver(self, packed: bytes) -> None:
        res = messagepack.unpack(packed)
        tid = str(res.task_id)
        with self._new_futures_lock:
            fut = self._open_futures.pop(tid, None)
            if fut is None:
                self._results[tid] = res
                return
        self._resolve(fut, res)

    def _resolve(self, fut: Any, res: Result) -> None:
        if fut.done():
            return  # cancelled on the client: the result is dropped
        try:
            if res.is_error:
                fut.set_exception(TaskExecutionFailed(res.data))
            else:
                fut.set_result(self._deserialize(res.data))
        except Exception:  # cancelled concurrently
            pass


class LoopbackClient:
    """The four client methods the SDK Executor calls, served by an in-process engine.

    Attributes:
        requests: one entry per request a real client would send: ``("register", bytes)``
            or ``("batch_run", bytes, task_count)`` with the JSON body size.
        fail_next_batch: when set, the next ``batch_run`` raises this exception.
        batch_configs: ``(user_endpoint_config, resource_specification)`` of every batch.
    """

    def __init__(self, engine: Any, endpoint_id: str) -> None:
        self.engine = engine
        self.endpoint_id = endpoint_id
        self.fx_serializer = ComputeSerializer()
        self.watcher = LoopbackWatcher(self.fx_serializer)
        self.task_group_id = uuid.uuid4()
        self.functions: dict[str, str] = {}
        self.requests: list[tuple[Any, ...]] = []
        self.fail_next_batch: BaseException | None = None
        self.batch_configs: list[tuple[Any, Any]] = []
        self._lock = threading.Lock()

    @property
    def batch_runs(self) -> list[tuple[Any, ...]]:
        return [r for r in self.requests if r[0] == "batch_run"]

    def register_function(self, function: Any, **kwargs: Any) -> str:
        data = FunctionRegistrationData(function=function, serializer=self.fx_serializer,
                                        **kwargs)
        body = json.dumps(data.to_dict())
        fn_id = str(uuid.uuid4())
        with self._lock:
            self.requests.append(("register", len(body)))
            self.functions[fn_id] = data.function_code
        return fn_id

    def create_batch(self, *args: Any, **kwargs: Any) -> Batch:
        return _create_batch(self.fx_serializer, *args, **kwargs)

    def batch_run(self, endpoint_id: Any, batch: Batch) -> dict[str, Any]:
        body = json.dumps(batch.prepare())
        with self._lock:
            self.requests.append(("batch_run", len(body), len(batch)))
            self.batch_configs.append((batch.user_endpoint_config,
                                       batch.resource_specification))
            failure, self.fail_next_batch = self.fail_next_batch, None
        if failure is not None:
            raise failure
        # The SDK looks its result watcher up by task group: answer with ours.
        sdk_executor._RESULT_WATCHERS[self.task_group_id] = self.watcher  # type: ignore[assignment]
        tasks: dict[str, list[str]] = {}
        for fn_id, payloads in batch.tasks.items():
            code = self.functions[str(fn_id)]
            ids = tasks.setdefault(str(fn_id), [])
            for payload in payloads:
                task_id = uuid.uuid4()
                ids.append(str(task_id))
                run_task(self.engine, task_id, fn_id, code, payload,
                         batch.resource_specification, batch.result_serializers,
                         self.watcher.deliver)
        return {
            "tasks": tasks,
            "task_group_id": str(self.task_group_id),
            "request_id": str(uuid.uuid4()),
            "endpoint_id": str(endpoint_id),
        }


# -- a service outliving its clients --------------------------------------------------------

class LoopbackService:
    """The service side for clients in other processes: functions, task groups, and each
    task's packed ``Result`` once the engine has it. Thread-safe (the server answers each
    client connection in a thread of its own).

    Attributes:
        batches: the task count of every ``batch_run`` received.
    """

    def __init__(self, engine: Any, endpoint_id: str) -> None:
        self.engine = engine
        self.endpoint_id = endpoint_id
        self.batches: list[int] = []
        self._lock = threading.Lock()
        self._functions: dict[str, str] = {}
        self._groups: dict[str, list[str]] = {}
        self._results: dict[str, bytes | None] = {}  # None: not finished
        self._accepting = threading.Event()
        self._accepting.set()
        self._held = 0

    def register_function(self, function_code: str) -> str:
        fn_id = str(uuid.uuid4())
        with self._lock:
            self._functions[fn_id] = function_code
        return fn_id

    def batch_run(self, endpoint_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """Run the tasks of a batch (``Batch.prepare()``) in its task group, a new one when
        it names none; the response the SDK reads. Waits while batches are held."""
        if not self._accepting.is_set():
            with self._lock:
                self._held += sum(len(payloads) for payloads in data["tasks"].values())
            self._accepting.wait()
        group = str(data.get("task_group_id") or uuid.uuid4())
        tasks: dict[str, list[str]] = {}
        for fn_id, payloads in data["tasks"].items():
            code = self._functions[fn_id]
            for payload in payloads:
                task_id = uuid.uuid4()
                tid = str(task_id)
                tasks.setdefault(fn_id, []).append(tid)
                with self._lock:
                    self._results[tid] = None
                    self._groups.setdefault(group, []).append(tid)
                run_task(self.engine, task_id, fn_id, code, payload,
                         data.get("resource_specification"), data.get("result_serializers"),
                         lambda packed, tid=tid: self._finished(tid, packed))
        with self._lock:
            self.batches.append(sum(len(ids) for ids in tasks.values()))
        return {"tasks": tasks, "task_group_id": group, "request_id": str(uuid.uuid4()),
                "endpoint_id": str(endpoint_id)}

    def hold_batches(self, hold: bool = True) -> None:
        """Have ``batch_run`` wait (True) until called with False: a client sending a batch
        has no task id until then."""
        if hold:
            self._accepting.clear()
        else:
            self._accepting.set()

    def held(self) -> int:
        """How many tasks the held batches carry."""
        with self._lock:
            return self._held

    def _finished(self, task_id: str, packed: bytes) -> None:
        with self._lock:
            if task_id in self._results:  # not forgotten
                self._results[task_id] = packed

    def get_task_group(self, task_group_id: str) -> dict[str, Any]:
        """The tasks of a task group that the service still knows (none: an unknown group)."""
        with self._lock:
            ids = [t for t in self._groups.get(task_group_id, []) if t in self._results]
        return {"taskgroup_id": task_group_id, "tasks": [{"id": t} for t in ids]}

    def results(self, task_ids: list[str]) -> dict[str, bytes | None]:
        """The packed ``Result`` of each task known (None: not finished yet)."""
        with self._lock:
            return {t: self._results[t] for t in task_ids if t in self._results}

    def forget(self, task_ids: list[str]) -> None:
        """Forget tasks, as the service does with old ones."""
        with self._lock:
            for t in task_ids:
                self._results.pop(t, None)

    def task_ids(self) -> list[str]:
        with self._lock:
            return list(self._results)

    def finished(self) -> int:
        """How many tasks known have their result."""
        with self._lock:
            return sum(1 for r in self._results.values() if r is not None)

    def batch_count(self) -> int:
        with self._lock:
            return len(self.batches)


class _ServiceManager(BaseManager):
    pass


class _ServiceConnection(BaseManager):
    pass


_ServiceConnection.register("service")

#: Environment variables that tell a client process where the service is (see `serve`).
ADDRESS_VAR, AUTHKEY_VAR = "HOGTEST_GLOBUS_SERVICE", "HOGTEST_GLOBUS_SERVICE_KEY"


@contextmanager
def serve(service: LoopbackService) -> Iterator[dict[str, str]]:
    """Serve ``service`` from this process on a private Unix socket; yields the environment
    variables a client process passes to `ServiceClient.from_environment`.

    The manager's server answers each connection in a thread; its own ``serve_forever`` is
    not used (it would reset this process's ``sys.stdout`` when it ends)."""
    home = Path(tempfile.mkdtemp(prefix="hog-svc-"))  # short: a socket path has a limit
    address, authkey = str(home / "s"), secrets.token_bytes(32)
    manager = _ServiceManager(address=address, authkey=authkey)
    manager.register("service", callable=lambda: service)
    server = manager.get_server()
    server.stop_event = threading.Event()

    def accept() -> None:
        while True:
            conn = server.listener.accept()
            if server.stop_event.is_set():
                conn.close()
                return
            threading.Thread(target=server.handle_request, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True, name="loopback-service")
    thread.start()
    try:
        yield {ADDRESS_VAR: address, AUTHKEY_VAR: authkey.hex()}
    finally:
        server.stop_event.set()
        with socket.socket(socket.AF_UNIX) as wake:  # the accepting thread sees the event
            wake.connect(address)
        thread.join(timeout=10)
        server.listener.close()
        for path in home.iterdir():
            path.unlink()
        home.rmdir()


class PollingWatcher(LoopbackWatcher):
    """Resolves SDK futures with the results a `LoopbackService` has, polled every
    ``interval`` seconds."""

    def __init__(self, serializer: ComputeSerializer, service: Any,
                 interval: float = 0.1) -> None:
        super().__init__(serializer)
        self._service = service
        self._interval = interval
        threading.Thread(target=self._poll, daemon=True, name="loopback-watcher").start()

    def _poll(self) -> None:
        while True:
            time.sleep(self._interval)
            with self._new_futures_lock:
                ids = list(self._open_futures)
            if not ids:
                continue
            try:
                found = self._service.results(ids)
            except (OSError, EOFError):  # the service is gone
                return
            for packed in found.values():
                if packed is not None:
                    self.deliver(packed)


class ServiceClient:
    """The client methods the SDK Executor calls, forwarded to a `LoopbackService` served
    by another process (`serve`); ``_compute_web_client.v2`` is the client itself."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.fx_serializer = ComputeSerializer()
        self.watcher = PollingWatcher(self.fx_serializer, service)
        self._compute_web_client = self  # .v2.get_task_group, .v2.get_task_batch

    @property
    def v2(self) -> ServiceClient:
        return self

    @classmethod
    def from_environment(cls, environ: dict[str, str]) -> ServiceClient:
        """Connect to the service `serve` named in ``environ``."""
        conn = _ServiceConnection(address=environ[ADDRESS_VAR],
                                  authkey=bytes.fromhex(environ[AUTHKEY_VAR]))
        conn.connect()
        return cls(conn.service())  # type: ignore[attr-defined]

    def _watch(self, task_group_id: Any) -> None:
        # The SDK looks its result watcher up by task group: answer with ours.
        sdk_executor._RESULT_WATCHERS[uuid.UUID(str(task_group_id))] = self.watcher  # type: ignore[assignment]

    def register_function(self, function: Any, **kwargs: Any) -> str:
        data = FunctionRegistrationData(function=function, serializer=self.fx_serializer,
                                        **kwargs)
        return str(self.service.register_function(data.function_code))

    def create_batch(self, *args: Any, **kwargs: Any) -> Batch:
        return _create_batch(self.fx_serializer, *args, **kwargs)

    def batch_run(self, endpoint_id: Any, batch: Batch) -> dict[str, Any]:
        response: dict[str, Any] = self.service.batch_run(str(endpoint_id), batch.prepare())
        self._watch(response["task_group_id"])
        return response

    def get_task_group(self, task_group_id: Any) -> dict[str, Any]:
        self._watch(task_group_id)
        return dict(self.service.get_task_group(str(task_group_id)))

    def get_task_batch(self, task_ids: Any) -> Any:
        found = self.service.results([str(t) for t in task_ids])
        return _Response({"results": {t: _status(packed) for t, packed in found.items()}})


class _Response:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data


def _status(packed: bytes | None) -> dict[str, Any]:
    """A task's status as the service reports it to ``get_task_batch``."""
    if packed is None:
        return {"status": "waiting-for-ep", "completion_t": None}
    res = messagepack.unpack(packed)
    done = str(time.time())
    if res.is_error:
        return {"status": "failed", "completion_t": done, "exception": res.data}
    return {"status": "success", "completion_t": done, "result": res.data}
