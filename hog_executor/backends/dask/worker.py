"""What runs on a Dask worker for the ``dask`` backend: stdlib only.

These functions travel to the workers by value, together with `..processes` (see the
backend's ``_Shipped``), so a worker needs nothing but ``distributed`` and bash: no
hog-executor installation. Each bundle runs as ``bash`` in its own
session; the running ones are kept on the worker object so that `kill_bundles` can stop them.
"""

from __future__ import annotations

from typing import Any

from ..processes import same_machine_hints, stop_session

#: Attribute of the distributed Worker holding ``{job id: Popen}`` of running bundles.
RUNNING_ATTR = "_hog_running_bundles"
#: Attribute holding the ids of jobs stopped before their bundle started.
DOOMED_ATTR = "_hog_stopped_bundles"


def _registry(worker: Any) -> tuple[dict[str, Any], set[str]]:
    running = worker.__dict__.setdefault(RUNNING_ATTR, {})
    doomed = worker.__dict__.setdefault(DOOMED_ATTR, set())
    return running, doomed


def run_bundle(job_id: str, bundle: str, topic: str) -> tuple[int, bytes, bytes]:
    """Run one bundle with bash on this worker; return ``(returncode, stdout, stderr)``.

    Logs ``{"job": job_id}`` under ``topic`` when the bundle starts, so the client knows.
    """
    import os
    import shutil
    import subprocess
    import tempfile

    from distributed import get_worker

    worker = get_worker()
    running, doomed = _registry(worker)
    if job_id in doomed:
        doomed.discard(job_id)
        return -15, b"", b"hog: stopped before start\n"
    workdir = tempfile.mkdtemp(prefix="hog-dask-", dir=worker.local_directory)
    path = os.path.join(workdir, "bundle.sh")
    try:
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(bundle)
        cmd = ["bash", path]
        setpriv = shutil.which("setpriv")
        if setpriv:  # bash gets SIGTERM (and stops its call) if this worker dies
            cmd = [setpriv, "--pdeathsig", "TERM", *cmd]
        env = {**os.environ, **same_machine_hints(), "HOG_WORK_DIR": workdir}
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, start_new_session=True,
        )
        running[job_id] = proc
        if job_id in doomed:
            doomed.discard(job_id)
            stop_session(proc.pid)
        try:
            worker.log_event(topic, {"job": job_id})
        except Exception:
            pass
        out, err = proc.communicate()
        return proc.returncode, out, err
    finally:
        running.pop(job_id, None)
        shutil.rmtree(workdir, ignore_errors=True)


def kill_bundles(job_ids: list[str], dask_worker: Any = None) -> int:
    """Stop the bundles of ``job_ids`` on this worker (their whole sessions); count them.

    Ids not running yet are remembered, so a bundle that was about to start does not.
    """
    if dask_worker is None:
        from distributed import get_worker

        dask_worker = get_worker()
    running, doomed = _registry(dask_worker)
    stopped = 0
    for job_id in job_ids:
        proc = running.get(job_id)
        if proc is None:
            if len(doomed) > 10_000:  # ids of jobs that ran elsewhere pile up otherwise
                doomed.clear()
            doomed.add(job_id)
            continue
        if proc.poll() is None:
            stop_session(proc.pid)
            stopped += 1
    return stopped


def running_bundles(dask_worker: Any = None) -> list[int]:
    """Process ids of the bundles running on this worker (for tests and diagnostics)."""
    if dask_worker is None:
        from distributed import get_worker

        dask_worker = get_worker()
    running, _ = _registry(dask_worker)
    return [p.pid for p in list(running.values()) if p.poll() is None]
