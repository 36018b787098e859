"""A stand-in for the Globus Compute web service, feeding a real endpoint engine.

`LoopbackClient` implements the client methods ``globus_compute_sdk.Executor`` uses
(``fx_serializer``, ``register_function``, ``create_batch``, ``batch_run``). ``batch_run``
does what the service does with a batch: it joins each task's serialized arguments to the
registered function's serialized code, packs them as a ``Task`` message and hands it to the
engine, exactly as an endpoint receives it. `LoopbackWatcher` stands in for the AMQP result
stream: it takes the engine's packed ``Result`` and resolves the SDK future as the SDK's own
result watcher does. Everything else (serialization, ShellFunction execution, the engine) is
the real code.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Result, Task
from globus_compute_endpoint.engines.base import GCFuture
from globus_compute_sdk.errors import TaskExecutionFailed
from globus_compute_sdk.sdk import executor as sdk_executor
from globus_compute_sdk.sdk.batch import Batch
from globus_compute_sdk.sdk.client import FunctionRegistrationData
from globus_compute_sdk.serialize import ComputeSerializer


class LoopbackWatcher:
    """Resolves SDK futures from the engine's results (the service's result queue)."""

    def __init__(self, serializer: ComputeSerializer) -> None:
        self._deserialize = serializer.deserialize
        self._lock = threading.Lock()
        self._futures: dict[str, Any] = {}
        self._results: dict[str, Result] = {}

    # The part of the SDK's _ResultWatcher interface the Executor calls.
    def is_alive(self) -> bool:
        return True

    def watch_for_task_results(self, executor: Any, futures: list[Any]) -> int:
        ready = []
        with self._lock:
            for f in futures:
                if f.task_id and not f.done():
                    f._metadata["executor_id"] = id(executor)
                    if f.task_id in self._results:
                        ready.append((f, self._results.pop(f.task_id)))
                    else:
                        self._futures[f.task_id] = f
        for f, res in ready:
            self._resolve(f, res)
        return len(futures)

    def get_open_futures(self, executor: Any = None) -> dict[str, Any]:
        with self._lock:
            return {tid: f for tid, f in self._futures.items()
                    if executor is None or f._metadata.get("executor_id") == id(executor)}

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass

    def deliver(self, packed: bytes) -> None:
        res = messagepack.unpack(packed)
        tid = str(res.task_id)
        with self._lock:
            fut = self._futures.pop(tid, None)
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

    def create_batch(self, task_group_id: Any = None, resource_specification: Any = None,
                     user_endpoint_config: Any = None, create_websocket_queue: bool = False,
                     result_serializers: Any = None) -> Batch:
        return Batch(task_group_id, resource_specification, user_endpoint_config,
                     create_websocket_queue, serializer=self.fx_serializer,
                     result_serializers=result_serializers)

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
                packed = messagepack.pack(Task(task_id=task_id, task_buffer=code + payload))
                fut = GCFuture(task_id, function_id=fn_id)
                fut.add_done_callback(lambda f: self.watcher.deliver(f.result()))
                self.engine.submit(fut, packed, batch.resource_specification or {},
                                   batch.result_serializers)
        return {
            "tasks": tasks,
            "task_group_id": str(self.task_group_id),
            "request_id": str(uuid.uuid4()),
            "endpoint_id": str(endpoint_id),
        }
