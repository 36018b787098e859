"""A Globus Compute client that counts requests and answers every task at once.

Not a benchmark. It needs only globus-compute-sdk, so the same file serves hog-executor and
groundhog-hpc (in its own venv). ``batch_run`` and ``register_function`` build the JSON body a
real client would send (so that cost is counted) and record its size; every task gets a
canned ``ShellResult`` at once, so that what is timed is the client side only: serializing,
rendering, registering, batching.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

from globus_compute_sdk import ShellFunction
from globus_compute_sdk.sdk import executor as sdk_executor
from globus_compute_sdk.sdk.batch import Batch
from globus_compute_sdk.sdk.client import FunctionRegistrationData
from globus_compute_sdk.sdk.shell_function import ShellResult
from globus_compute_sdk.serialize import ComputeSerializer

__all__ = ["CountingClient", "ShellFunction"]


class _Watcher:
    """Resolves each watched future with a canned result (the service's result stream)."""

    def is_alive(self) -> bool:
        return True

    def watch_for_task_results(self, executor: Any, futures: list[Any]) -> int:
        for f in futures:
            if not f.done():
                try:
                    f.set_result(ShellResult("", "", "", 0))
                except Exception:
                    pass
        return len(futures)

    def get_open_futures(self, executor: Any = None) -> dict[str, Any]:
        return {}

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


class CountingClient:
    """The client methods the SDK Executor uses, plus endpoint metadata; counts requests.

    Attributes:
        requests: ``(kind, body_bytes, tasks)`` for every request a real client would send.
    """

    def __init__(self) -> None:
        self.fx_serializer = ComputeSerializer()
        self.task_group_id = uuid.uuid4()
        self.watcher = _Watcher()
        self.requests: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def _record(self, kind: str, body: str, tasks: int = 0) -> None:
        with self._lock:
            self.requests.append((kind, len(body), tasks))

    def register_function(self, function: Any, **kwargs: Any) -> str:
        data = FunctionRegistrationData(function=function, serializer=self.fx_serializer,
                                        **kwargs)
        self._record("register", json.dumps(data.to_dict()))
        return str(uuid.uuid4())

    def create_batch(self, task_group_id: Any = None, resource_specification: Any = None,
                     user_endpoint_config: Any = None, create_websocket_queue: bool = False,
                     result_serializers: Any = None) -> Batch:
        return Batch(task_group_id, resource_specification, user_endpoint_config,
                     create_websocket_queue, serializer=self.fx_serializer,
                     result_serializers=result_serializers)

    def batch_run(self, endpoint_id: Any, batch: Batch) -> dict[str, Any]:
        self._record("batch_run", json.dumps(batch.prepare()), len(batch))
        sdk_executor._RESULT_WATCHERS[self.task_group_id] = self.watcher  # type: ignore[assignment]
        return {
            "tasks": {str(fn): [str(uuid.uuid4()) for _ in tasks]
                      for fn, tasks in batch.tasks.items()},
            "task_group_id": str(self.task_group_id),
            "request_id": str(uuid.uuid4()),
            "endpoint_id": str(endpoint_id),
        }

    def get_endpoint_metadata(self, endpoint_id: Any) -> dict[str, Any]:
        self._record("metadata", "")
        return {}

    def summary(self) -> dict[str, int]:
        with self._lock:
            return {"requests": len(self.requests),
                    "bytes": sum(r[1] for r in self.requests),
                    "tasks": sum(r[2] for r in self.requests)}
