"""The ``dask`` backend: each job is one Dask task that runs the bundle with bash on a worker."""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from ... import runner as _runner
from ...config import Endpoint, Key, parse_walltime, positive_int
from ...errors import BackendError, ConfigError, RemoteProcessError
from .. import Backend, Job, Output
from .. import outputs as _outputs
from .. import processes as _processes
from .. import runners as _runners
from ..lifecycle import mark_running, resolve
from ..outputs import CallOutput
from . import worker as _worker

__all__ = ["DaskBackend"]

#: Seconds to wait for the scheduler when connecting to ``address``.
CONNECT_TIMEOUT = 30.0
#: Seconds ``shutdown(cancel=True)`` waits for the workers to confirm that bundles are stopped.
KILL_TIMEOUT = 30.0
#: Characters of a job's description kept in its Dask task key.
KEY_LABEL_LENGTH = 60

logger = logging.getLogger(__name__)

_LABEL = re.compile(r"[^A-Za-z0-9_.:]+")


def _address(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected the scheduler address, such as \"tcp://host:8786\"")
    return value.strip()


def _client(value: Any) -> Any:
    from distributed import Client

    if not isinstance(value, Client):
        raise ValueError(f"expected a distributed.Client, got {type(value).__name__}")
    if value.asynchronous:
        raise ValueError("the client must be synchronous (created without asynchronous=True)")
    return value


def _resources(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of resource = amount, such as {GPU = 1}")
    out: dict[str, float] = {}
    for name, amount in value.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{name!r} is not a resource name")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0:
            raise ValueError(f"the amount of {name} must be a positive number, got {amount!r}")
        out[name] = amount
    return out


def _refuse_ranks(values: Mapping[str, Any], name: str) -> None:
    """Dask workers run one bundle per task, with no launcher to start ranks.

    Raises:
        ConfigError: ``ranks`` is over 1.
    """
    if (values.get("ranks") or 1) > 1:
        raise ConfigError(
            f"endpoint {name!r} (backend dask) cannot run a call on ranks = {values['ranks']}: "
            "a Dask task runs one process; run MPI calls on a local, slurm or globus endpoint"
        )


class _Shipped:
    """A function that travels to workers by value: it unpickles as the function itself.

    The worker then needs only cloudpickle (which every Dask worker has), not hog-executor.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        import cloudpickle

        shipped = (_worker, _processes, _runners, _outputs, _runner)
        for module in shipped:  # by value for this pickle only
            cloudpickle.register_pickle_by_value(module)
        try:
            self.blob = cloudpickle.dumps(fn)
        finally:
            for module in shipped:
                cloudpickle.unregister_pickle_by_value(module)
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        import cloudpickle

        return (cloudpickle.loads, (self.blob,))


class _DaskTask:
    """The Dask task running one job: its Dask future, and whether its bundle started."""

    __slots__ = ("dfuture", "job", "started", "user_cancelled")

    def __init__(self, job: Job, dfuture: Any) -> None:
        self.job = job
        self.dfuture = dfuture
        self.started = False
        self.user_cancelled = False  # cancel() or shutdown(cancel=True) asked for it


class DaskBackend(Backend):
    """Runs each bundle as a bash subprocess inside one Dask task on an existing cluster.

    Connects to ``address`` (or uses the ``client`` given). Workers need bash and
    ``distributed``, nothing else: the bundle builds the call's environment with uv as on any
    endpoint. Cancelling a job cancels its Dask task and stops the bundle's whole session on
    the worker. A task whose workers keep dying fails with `RemoteProcessError`.
    """

    # Not registered with lifecycle.stop_at_exit: the cluster outlives this process, and at
    # exit the scheduler drops the tasks of a client that went away.
    keys: ClassVar[Mapping[str, Key]] = {
        "address": Key("address", "the Dask scheduler's address (tcp://host:8786)", _address,
                       per_call=False),
        "client": Key("client", "a distributed.Client to submit through (instead of address)",
                      _client, per_call=False),
        "resources": Key("resources", "Dask worker resources each call needs ({GPU = 1})",
                         _resources),
        "idle_timeout": Key("idle_timeout", "seconds an idle warm runner on a worker waits for "
                            "a call before it leaves (default 300)", parse_walltime,
                            per_call=False),
        "max_calls_per_process": Key("max_calls_per_process", "calls a warm runner serves "
                                     "before it is replaced (default: no limit)", positive_int,
                                     per_call=False),
    }

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        values = endpoint.values
        _refuse_ranks(values, endpoint.name)
        client = values.get("client")
        address = values.get("address")
        if client is None and address is None:
            raise ConfigError(
                f"endpoint {endpoint.name!r} (backend dask) needs the scheduler: set address = "
                "\"tcp://host:8786\", or pass client=<distributed.Client>"
            )
        if client is not None and address is not None:
            raise ConfigError(
                f"endpoint {endpoint.name!r} (backend dask): give address or client, not both"
            )
        if client is None:
            from distributed import Client

            try:
                client = Client(  # type: ignore[no-untyped-call]
                    address, set_as_default=False, timeout=CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError) as exc:
                raise BackendError(
                    f"cannot connect to the Dask scheduler at {address}: {exc}"
                ) from None
            self._own_client = True
        else:
            self._own_client = False
        self._client = client
        self._lock = threading.Lock()
        self._tasks: dict[str, _DaskTask] = {}
        self._last_workers = 1
        self._topic = f"hog-started-{uuid.uuid4().hex}"
        self._run = _Shipped(_worker.run_bundle)
        self._run_warm = _Shipped(_worker.run_warm)
        self._kill = _Shipped(_worker.kill_bundles)
        self._client.subscribe_topic(self._topic, self._on_event)

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` jobs are submitted through."""
        return self._client

    @property
    def workers(self) -> int:
        """Worker threads of the cluster now (at least 1: an adaptive cluster may have none)."""
        try:
            self._last_workers = max(1, sum(self._client.nthreads().values()))
        except Exception:  # the scheduler does not answer now: the last count will do
            logger.debug("could not ask the Dask scheduler for its workers", exc_info=True)
        return self._last_workers

    def submit(self, jobs: Sequence[Job]) -> None:
        with self._lock:
            self._ensure_open()
        for job in jobs:
            _refuse_ranks(job.config, self.endpoint.name)
        submitted: list[_DaskTask] = []
        try:
            for job in jobs:
                label = (_LABEL.sub("_", job.description or "call").strip("_")[:KEY_LABEL_LENGTH]
                         or "call")
                if job.runner_key is None:
                    args: tuple[Any, ...] = (self._run, job.id, job.bundle, self._topic)
                else:  # on one of the worker's warm runners
                    args = (self._run_warm, job.id, job.bundle, job.payload, job.calls,
                            job.walltime, job.runner_key,
                            self.endpoint.values.get("max_calls_per_process"),
                            self.endpoint.values.get("idle_timeout"), self._topic)
                dfuture = self._client.submit(
                    *args, key=f"hog-{label}-{job.id}", pure=False,
                    resources=job.config.get("resources"),
                )
                task = _DaskTask(job, dfuture)
                submitted.append(task)
                with self._lock:
                    self._tasks[job.id] = task
        except Exception as exc:
            with self._lock:
                for task in submitted:
                    self._tasks.pop(task.job.id, None)
            try:
                self._client.cancel([t.dfuture for t in submitted])
            except Exception:  # best effort: the submission fails with the first error anyway
                logger.debug("could not cancel a failed submission's tasks", exc_info=True)
            raise BackendError(f"could not submit to the Dask cluster: {exc}") from exc
        for task in submitted:
            task.dfuture.add_done_callback(
                lambda dfuture, task=task: self._finished(task, dfuture)
            )

    def _on_event(self, event: Any) -> None:
        try:
            job_id = event[1]["job"]
        except (TypeError, KeyError, IndexError):
            return
        with self._lock:
            task = self._tasks.get(job_id)
            if task is None or task.started:
                return
            task.started = True
            if not mark_running(task.job.future):
                return
        task.job.on_start()

    def _finished(self, task: _DaskTask, dfuture: Any) -> None:
        job = task.job
        with self._lock:
            self._tasks.pop(job.id, None)
            task.started = True
            asked = task.user_cancelled
        status = dfuture.status
        output: Output | None = None
        error: BaseException | None = None
        if status == "finished":
            try:
                if job.runner_key is None:
                    rc, out, err = dfuture.result()
                    output = Output(int(rc), bytes(out), bytes(err))
                else:
                    output = self._replay(job, *dfuture.result())
            except Exception as exc:
                error = BackendError(f"could not fetch the output of task {job.id}: {exc}")
        elif status == "cancelled":
            if asked and resolve(job.future, cancel=True):
                return
            error = BackendError(
                f"the Dask task of {job.id} ({job.description}) was cancelled on the cluster, "
                "not by this executor (another client cancelled it, the cluster restarted, or "
                "the connection to the scheduler was lost)"
            )
        else:
            error = self._task_error(job, dfuture)
        resolve(job.future, output, error=error)

    @staticmethod
    def _replay(job: Job, answers: list[tuple[Any, ...]],
                end: tuple[int, bytes, bytes, bool]) -> Output:
        """Hand a warm job's call answers to the job; its final output."""
        for index, outcome, out, err, started, finished, failure, worker, startup in answers:
            job.on_call(CallOutput(index, outcome, out, err, started, finished,
                                   None if failure is None else Output(*failure), worker,
                                   startup))
        rc, out, err, streamed = end
        return Output(int(rc), bytes(out), bytes(err), streamed=bool(streamed))

    def _task_error(self, job: Job, dfuture: Any) -> BaseException:
        try:
            exc = dfuture.exception()
        except Exception as fetch:
            exc = fetch
        from distributed import KilledWorker

        where = f"task {job.id} ({job.description})"
        if isinstance(exc, KilledWorker):
            return RemoteProcessError(
                f"{where} was lost: the Dask workers running it died ({exc}). The cluster "
                "retries a task on another worker up to distributed.scheduler.allowed-failures "
                "times; look at the workers' logs for why they died (memory?)",
                state="KilledWorker",
            )
        return BackendError(
            f"{where} failed on the Dask cluster before its bundle finished: "
            f"{type(exc).__name__}: {exc}"
        )

    def cancel(self, job: Job) -> bool:
        with self._lock:
            task = self._tasks.get(job.id)
            if task is None or task.dfuture.done():
                return False
            task.user_cancelled = True
        resolve(job.future, cancel=True)
        try:
            self._client.cancel([task.dfuture])
            self._client.run(self._kill, [job.id], wait=False)
        except Exception:
            logger.debug("could not cancel Dask task of job %s", job.id, exc_info=True)
            return False
        return True

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        with self._lock:
            already = self._closed
            self._closed = True
            tasks = list(self._tasks.values())
            if cancel:
                for task in tasks:
                    task.user_cancelled = True
        if cancel and tasks:
            for task in tasks:
                resolve(task.job.future, cancel=True)
            try:
                self._client.cancel([t.dfuture for t in tasks])
            except Exception:  # best effort: the workers are still told to stop the bundles
                logger.debug("could not cancel the Dask tasks", exc_info=True)
            self._kill_bundles([t.job.id for t in tasks])
        if already:
            return
        if wait:
            self._close(tasks)
        else:
            threading.Thread(target=self._close, args=(tasks,), daemon=True).start()

    def _kill_bundles(self, job_ids: list[str]) -> None:
        """Have every worker stop these jobs' bundles; wait at most `KILL_TIMEOUT` seconds.

        ``Client.run`` takes no timeout: it runs on a thread this call stops waiting for.
        """
        confirmed = threading.Event()

        def run() -> None:
            try:
                self._client.run(self._kill, job_ids, wait=True, on_error="ignore")
            except Exception:
                logger.warning("could not ask the Dask workers to stop the cancelled bundles",
                               exc_info=True)
            confirmed.set()

        threading.Thread(target=run, name="hog-dask-kill", daemon=True).start()
        if not confirmed.wait(KILL_TIMEOUT):
            logger.warning("the Dask workers did not confirm within %.0f s that the cancelled "
                           "bundles stopped", KILL_TIMEOUT)

    def _close(self, tasks: list[_DaskTask]) -> None:
        from concurrent.futures import wait

        wait([t.job.future for t in tasks])
        try:
            self._client.unsubscribe_topic(self._topic)
        except Exception:  # the connection is gone already: nothing left to unsubscribe
            logger.debug("could not unsubscribe from the Dask start events", exc_info=True)
        if self._own_client:
            try:
                self._client.close()
            except Exception:  # closing a client whose scheduler went away may fail
                logger.debug("closing the Dask client failed", exc_info=True)
