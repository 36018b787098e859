"""What runs on a Dask worker for the ``dask`` backend: stdlib only.

These functions travel to the workers by value, together with `..processes` (see the
backend's ``_Shipped``), so a worker needs nothing but ``distributed`` and bash: no
hog-executor installation. Each bundle runs as ``bash`` in its own session; the worker
object keeps a `~..processes.BundleProcesses` so that `kill_bundles` can stop them.
"""

from __future__ import annotations

import logging
from typing import Any

from ..processes import BundleProcesses, same_machine_hints

#: Attribute of the distributed Worker holding the `BundleProcesses` of its bundles.
PROCESSES_ATTR = "_hog_bundle_processes"

logger = logging.getLogger(__name__)


def _processes(worker: Any) -> BundleProcesses:
    processes: BundleProcesses = worker.__dict__.setdefault(PROCESSES_ATTR, BundleProcesses())
    return processes


def run_bundle(job_id: str, bundle: str, topic: str) -> tuple[int, bytes, bytes]:
    """Run one bundle with bash on this worker; return ``(returncode, stdout, stderr)``.

    Logs ``{"job": job_id}`` under ``topic`` when the bundle starts, so the client knows. The
    bundle gets SIGTERM (and stops its call) if this worker dies, where ``setpriv`` exists.
    """
    import os
    import shutil
    import tempfile

    from distributed import get_worker

    worker = get_worker()

    def announce() -> None:
        try:
            worker.log_event(topic, {"job": job_id})
        except Exception:  # the call runs all the same; the client sees it start at its end
            logger.warning("could not tell the client that job %s started", job_id,
                           exc_info=True)

    workdir = tempfile.mkdtemp(prefix="hog-dask-", dir=worker.local_directory)
    try:
        env = {**os.environ, **same_machine_hints(), "HOG_WORK_DIR": workdir}
        return _processes(worker).run(job_id, bundle, os.path.join(workdir, "bundle.sh"), env,
                                      on_start=announce, die_with_parent=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def kill_bundles(job_ids: list[str], dask_worker: Any = None) -> int:
    """Stop the bundles of ``job_ids`` on this worker (their whole sessions); count them.

    Ids not running yet are remembered, so a bundle that was about to start does not.
    """
    if dask_worker is None:
        from distributed import get_worker

        dask_worker = get_worker()
    processes = _processes(dask_worker)
    return sum(processes.stop(job_id, remember=True) for job_id in job_ids)
