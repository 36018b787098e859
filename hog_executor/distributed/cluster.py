"""`HogCluster`: a ``LocalCluster`` whose workers run their tasks as hog calls."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from distributed import LocalCluster

from ..context import main_script
from ..executor import HogExecutor
from .executor import HogTaskExecutor

__all__ = ["EXECUTOR_NAME", "HogCluster"]

#: The name under which workers know the executor (``dask.annotate(executor="hog")``).
EXECUTOR_NAME = "hog"
#: Seconds worker processes get to stop their calls when the cluster closes.
STOP_TIMEOUT = 60.0


async def _stop_hog_executor(dask_worker: Any) -> None:
    """Run on each worker before the cluster closes: stop its hog executor (in a thread)."""
    executor = dask_worker.executors.get(EXECUTOR_NAME)
    if executor is not None:
        await asyncio.to_thread(executor.shutdown)


class HogCluster(LocalCluster):
    """A Dask cluster whose tasks run as hog calls on an endpoint.

    Use it as any cluster: ``Client(HogCluster("anvil"))``. The scheduler and workers run
    here (threads, or processes with ``processes=True``); every task routed to the hog
    executor runs through a `HogExecutor` on ``endpoint``, so its concurrency is the
    endpoint's: the workers' threads together equal ``backend.workers`` of the endpoint
    (``max_workers`` of ``local``, ``max_parallel`` of ``slurm``, ...), whatever this
    machine's cores.

    Args:
        endpoint: where calls run (as for `HogExecutor`).
        script: the PEP 723 script whose environment and endpoint tables apply; default: the
            ``__main__`` file when it has a PEP 723 block.
        default: route every task to the hog executor. With ``False``, only tasks annotated
            with ``dask.annotate(executor="hog")`` go there; others run on the workers' threads.
        n_workers: Dask workers to start (default 1).
        processes: run the workers in separate processes (each builds its own executor).
        nthreads: threads per worker (default: the endpoint's concurrency spread over the
            workers, times ``batch``).
        batch: up to this many waiting tasks of one function share a bundle (default 1).
            Worth it for many short tasks: 1,000 trivial tasks cost 1,000 process starts
            with 1, about 1,000 / ``batch`` with more; a task's result then arrives with its
            bundle's.
        cluster_options: other ``LocalCluster`` arguments (``dashboard_address``, ...).
        **config: endpoint keys (``walltime``, ``cache_dir``, ``max_workers``, ...).

    Raises:
        ConfigError: the endpoint or a key is unknown or invalid (before anything starts).
    """

    def __init__(self, endpoint: str = "local", *, script: str | os.PathLike[str] | None = None,
                 default: bool = True, n_workers: int = 1, processes: bool = False,
                 nthreads: int | None = None, batch: int = 1,
                 cluster_options: Mapping[str, Any] | None = None, **config: Any) -> None:
        if n_workers < 1:
            raise ValueError("n_workers must be >= 1")
        if batch < 1:
            raise ValueError("batch must be >= 1")
        script_path = os.path.abspath(script) if script is not None else main_script()
        hog = HogExecutor(endpoint, script=script_path, **config)  # validates the endpoint now
        try:
            concurrency = max(1, hog.backend.workers)
        except BaseException:
            hog.shutdown(wait=False, cancel_futures=True, terminate=True)
            raise
        slots = max(1, -(-concurrency // n_workers))
        if processes:  # each worker process builds its own from the configuration
            hog.shutdown(wait=True)
            self._hog: HogExecutor | None = None
            task_executor = HogTaskExecutor(endpoint, script=script_path, slots=slots,
                                            batch=batch, **config)
        else:  # in-process workers share this one (and its slots)
            self._hog = hog
            task_executor = HogTaskExecutor(endpoint, script=script_path, executor=hog,
                                            slots=concurrency, batch=batch, **config)
        self._task_executor = task_executor
        self.endpoint = hog.endpoint
        self.concurrency = concurrency
        executors = {EXECUTOR_NAME: task_executor}
        if default:
            executors["default"] = task_executor
        self.batch = batch
        per_worker = nthreads or slots * batch
        options = dict(cluster_options or {})
        options["plugins"] = [*options.get("plugins", ()), task_executor.worker_plugin()]
        try:
            super().__init__(  # type: ignore[no-untyped-call]
                n_workers=n_workers, threads_per_worker=per_worker,
                processes=processes, executor=executors, **options)
        except BaseException:
            if self._hog is not None:
                self._hog.shutdown(wait=False, cancel_futures=True, terminate=True)
            raise

    async def _close(self) -> None:
        if self._hog is None:
            await self._stop_worker_executors()
        try:
            await super()._close()  # type: ignore[no-untyped-call]
        finally:
            hog, self._hog = self._hog, None
            if hog is not None:
                await asyncio.get_running_loop().run_in_executor(None, self._stop_shared, hog)

    def _stop_shared(self, hog: HogExecutor) -> None:
        """The in-process workers are gone: settle the tasks they left, stop the calls."""
        try:
            self._task_executor.close()
        finally:
            hog.shutdown(wait=True, cancel_futures=True, terminate=True)

    async def _stop_worker_executors(self) -> None:
        """Let worker processes stop their calls and clean up before they are told to exit.

        A closing worker process gets a few seconds before its nanny terminates it; stopping
        the executors first keeps that deadline from cutting their clean-up short.
        """
        comm = getattr(self, "scheduler_comm", None)
        if comm is None or self.status.name in ("closing", "closed"):
            return
        from distributed.protocol.pickle import dumps

        msg = {"op": "run", "wait": True}
        for name, value in (("function", _stop_hog_executor), ("args", ()), ("kwargs", {})):
            msg[name] = dumps(value)  # type: ignore[no-untyped-call]
        try:
            await asyncio.wait_for(comm.broadcast(msg=msg, on_error="return_pickle"),
                                   STOP_TIMEOUT)
        except Exception:  # the workers' own close still runs
            pass

    def __repr__(self) -> str:
        return (f"<HogCluster endpoint={self.endpoint.name!r} workers={len(self.workers)} "
                f"threads={self.concurrency}>")
