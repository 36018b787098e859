"""The ``slurm`` backend: bundles run as Slurm batch jobs, a ``map`` as one job array.

Each job is a plain Slurm job, or one task of a job array (one sbatch for the jobs of one
``submit``). :mod:`.keys` checks the configuration, :mod:`.sbatch` renders the job script,
:mod:`.watcher` follows the jobs in the queue, :mod:`.states` decides what a job's end means.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ...config import Endpoint, Key
from ...errors import BackendError
from .. import Backend, Job
from ..lifecycle import resolve, run_finalizer, stop_at_exit
from ..processes import uv_binary, write_private
from .clients import client_tag
from .keys import SLURM_KEYS, default_shared_dir, shared_dir_path
from .sbatch import (
    ClusterLimits,
    SbatchSpec,
    array_limit,
    parse_cluster_limits,
    render_sbatch,
    result_digest,
    sbatch_options,
    signal_lead,
    split_arrays,
    time_limit_minutes,
)
from .states import Deliver, JobFacts, Lost, Result, exit_code_from_scontrol, settle
from .watcher import Watcher, watcher

__all__ = ["SlurmBackend", "default_shared_dir"]

#: ``workers`` (how ``map`` sizes its chunks) when ``max_parallel`` is not set.
DEFAULT_WORKERS = 16
#: Seconds between status queries at first (they grow while nothing changes).
DEFAULT_POLL_INTERVAL = 2.0
#: Most tasks in one job array unless ``max_array_size`` says otherwise; the cluster's
#: ``MaxArraySize`` and ``MaxJobCount`` lower it (Slurm's default MaxArraySize is 1001).
ARRAY_LIMIT = 1000
#: Seconds ``shutdown(wait=True, cancel=True)`` waits for cancelled jobs to leave the queue.
CANCEL_WAIT = 120.0
#: Seconds sbatch, scancel and scontrol may take.
COMMAND_TIMEOUT = 60.0
#: Job ids named per scancel command line.
SCANCEL_BATCH = 500
#: Lines of the Slurm log quoted in errors.
LOG_TAIL_LINES = 20
#: Bytes read from the end of a Slurm log for its last lines.
LOG_TAIL_BYTES = 64 * 1024
#: Bytes of the HMAC key that authenticates results.
KEY_BYTES = 32
#: Characters of the host name kept in the name of the backend's directory.
HOST_LABEL_LENGTH = 32
#: The directory, in the backend's own, where each call also puts its result (a file store)
#: for calls that depend on it (futures as arguments).
RESULTS_DIR = "results"

logger = logging.getLogger(__name__)


def _same_config(jobs: Sequence[Job]) -> list[list[Job]]:
    """``jobs`` in runs that share their config (one sbatch cannot mix partitions)."""
    groups: list[list[Job]] = []
    for job in jobs:
        if groups and (groups[-1][0].config is job.config
                       or groups[-1][0].config == job.config):
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


# -- Slurm jobs -------------------------------------------------------------------------------

class _Forged(Exception):
    """A result file that does not carry this executor's HMAC."""


class _Submission:
    """One sbatch: a plain Slurm job or a job array, and the directory of its files."""

    def __init__(self, backend: SlurmBackend, sub_id: str, job_dir: str, count: int) -> None:
        self.backend = backend
        self.id = sub_id
        self.dir = job_dir
        self.remaining = count
        self.keep = False
        self.slurm_id = ""  # the Slurm job id, once sbatch has answered
        self.key: bytes | None = None  # another backend's key (a job taken over: `attach`)


class _SlurmJob:
    """One job as Slurm runs it: a plain Slurm job, or one task of a job array.

    What the watcher follows (a `~.watcher.Watched`); it holds the paths of the job's files.
    """

    def __init__(self, submission: _Submission, index: int, job: Job) -> None:
        self.submission = submission
        self.index = index
        self.job = job
        self.slurm_id = ""  # "123" or "123_4", once sbatch has answered
        self.cancelled = False
        self.requeues = 0  # times Slurm put the job back in the queue after it ran
        base = os.path.join(submission.dir, f"task-{index}")
        self.bundle = base + ".sh"
        self.out = base + ".out"
        self.err = base + ".err"
        self.rc = base + ".rc"
        self.hmac = base + ".hmac"
        self.keys = base + ".keys"
        self.log = os.path.join(submission.dir, f"slurm-{index}.log")
        #: Where each call puts its result (see `SlurmBackend.hold_result`).
        self.results: list[str] = []

    @property
    def array_id(self) -> str:
        return self.submission.slurm_id

    @property
    def poll_interval(self) -> float:
        return self.submission.backend.poll_interval

    @property
    def files(self) -> tuple[str, ...]:
        return (self.bundle, self.out, self.err, self.rc, self.hmac, self.keys, self.log)

    @property
    def log_paths(self) -> tuple[str, ...]:
        return (self.out, self.err, self.log)

    def facts(self) -> JobFacts:
        """What `~.states.settle` may read about this job."""
        return JobFacts(
            slurm_id=self.slurm_id, job_id=self.job.id, log=self.log, log_paths=self.log_paths,
            result_file=self.hmac, shared_dir=self.submission.backend.shared_dir,
            log_tail=lambda: _tail(self.log), stderr=lambda: _read(self.err) or b"",
            exit_code=lambda: _exit_code(self.slurm_id),
        )

    def started(self) -> None:
        if not self.cancelled and not self.job.future.done():
            self.job.on_start()

    def requeued(self) -> None:
        self.requeues += 1
        logger.info("Slurm job %s (task %s) was requeued (%d time%s); following it",
                    self.slurm_id, self.job.id, self.requeues, "" if self.requeues == 1 else "s")

    def settle(self, state: str | None, missing_for: float, settling_for: float) -> bool:
        return self.submission.backend._settle(self, state, missing_for, settling_for)

    def abandon(self, message: str) -> None:
        self.submission.backend._fail(
            self, BackendError(f"Slurm job {self.slurm_id} of task {self.job.id}: {message}"),
            keep=True,
        )


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _tail(path: str, lines: int = LOG_TAIL_LINES) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            data = f.read()
    except OSError:
        return b""
    return b"\n".join(data.rstrip(b"\n").split(b"\n")[-lines:])


def cluster_limits() -> ClusterLimits:
    """``MaxArraySize`` and ``MaxJobCount`` from ``scontrol show config`` (unknown: None)."""
    try:
        proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("scontrol show config failed: %s", exc)
        return ClusterLimits()
    if proc.returncode != 0:
        logger.debug("scontrol show config failed: %s", proc.stderr.strip())
        return ClusterLimits()
    return parse_cluster_limits(proc.stdout)


def _exit_code(slurm_id: str) -> int:
    """The job's exit code from ``scontrol show job`` (negative: killed by that signal)."""
    try:
        proc = subprocess.run(["scontrol", "show", "job", "--oneliner", slurm_id],
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return exit_code_from_scontrol("")
    return exit_code_from_scontrol(proc.stdout)


def _remove_job_dir(directory: str) -> None:
    """Remove a backend's key and its directory (kept if it holds files of failed jobs)."""
    _remove_quietly(os.path.join(directory, "key"))
    shutil.rmtree(os.path.join(directory, RESULTS_DIR), ignore_errors=True)
    _remove_quietly(directory)


def _remove_result(path: str) -> None:
    """Remove a call's result file and its marker (if they are there)."""
    for name in (path, path + ".ready"):
        try:
            os.unlink(name)
        except OSError:
            pass  # never written (the call failed), or removed already


def _with_result_keys(payload: bytes, paths: list[str]) -> bytes:
    """``payload`` whose header asks the runner to put each call's result at ``paths``."""
    line, sep, body = payload.partition(b"\n")
    try:
        header = json.loads(line)
    except ValueError:
        return payload  # not a runner's payload: nothing to ask
    header["result_keys"] = paths
    return json.dumps(header).encode() + sep + body


def _remove_quietly(path: str) -> None:
    """Remove the file or empty directory ``path``, if it can be."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError as exc:  # best effort: absent, or a directory that keeps failed jobs' files
        logger.debug("not removed: %s (%s)", path, exc)


class SlurmBackend(Backend):
    """Runs bundles as Slurm batch jobs; the bundles of one ``submit`` as one job array.

    Job files live in a private directory (``0700``, files ``0600``) under ``shared_dir``,
    which compute nodes must see. Each job's result is authenticated with an HMAC keyed by a
    secret of this backend before it is handed to the executor. One watcher thread per process
    follows every job with batched ``squeue`` queries. At interpreter exit, jobs not finished
    are cancelled: nobody is left to read their results.
    """

    keys: ClassVar[Mapping[str, Key]] = SLURM_KEYS
    #: Calls may wait in the queue for the jobs of their upstream calls (see
    #: `hog_executor.dependencies`, `hold_result`).
    queue_dependencies: ClassVar[bool] = True

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        values = endpoint.values
        self.shared_dir: str = values.get("shared_dir") or shared_dir_path(default_shared_dir())
        self.poll_interval: float = values.get("poll_interval", DEFAULT_POLL_INTERVAL)
        self._max_parallel: int | None = values.get("max_parallel")
        self._max_array_size: int | None = values.get("max_array_size")
        self._limits: ClusterLimits | None = None  # read at the first submit
        self._key = secrets.token_bytes(KEY_BYTES)
        self._dir: str | None = None
        self._cleanup: weakref.finalize[..., SlurmBackend] | None = None
        # Held while the key and job directory are removed (by whichever thread saw the last
        # job end): shutdown waits on it, so the process cannot exit half way through.
        self._cleaning = threading.RLock()
        self._lock = threading.RLock()
        self._jobs: dict[str, _SlurmJob] = {}
        self._holds: dict[str, int] = {}  # result file -> dependent calls holding it
        self._settled: set[str] = set()  # held result files of settled jobs
        self._uv = uv_binary()
        self._watcher: Watcher = watcher()
        stop_at_exit(self)

    # -- the interface ----------------------------------------------------------------------

    @property
    def workers(self) -> int:
        return int(self._max_parallel or DEFAULT_WORKERS)

    @property
    def directory(self) -> str | None:
        """This backend's private directory under ``shared_dir`` (None before any submit)."""
        return self._dir

    def slurm_id(self, job_id: str) -> str | None:
        """The Slurm id (``"123"`` or ``"123_4"``) of the Slurm job running job ``job_id``."""
        with self._lock:
            sjob = self._jobs.get(job_id)
        return sjob.slurm_id if sjob else None

    def slurm_ids(self) -> list[str]:
        """The Slurm ids of this backend's jobs that have not settled yet."""
        with self._lock:
            return [s.slurm_id for s in self._jobs.values()]

    def job_record(self, job_id: str) -> dict[str, Any] | None:
        """What another client needs to follow job ``job_id`` (see `attach`): its Slurm
        id, the submission's directory and id, its index, and the key file."""
        with self._lock:
            sjob = self._jobs.get(job_id)
            if sjob is None or self._dir is None:
                return None
            sub = sjob.submission
            return {"slurm_id": sjob.slurm_id, "dir": sub.dir, "sub": sub.id,
                    "index": sjob.index, "key_file": os.path.join(self._dir, "key")}

    def attach(self, job: Job, record: Mapping[str, Any]) -> None:
        """Follow a job another client sent (described by its `job_record`) as ``job``:
        the watcher follows it by its id, and its result is authenticated with the key of
        the backend that sent it. Nothing is submitted.

        Raises:
            BackendError: the key file cannot be read, or the backend is shut down.
        """
        key_file = str(record["key_file"])
        try:
            st = os.stat(key_file)
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise OSError(f"{key_file} is not private to this user")
            with open(key_file, encoding="utf-8") as f:
                key = bytes.fromhex(f.read().strip())
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot read the key of Slurm job {record.get('slurm_id')}: "
                               f"{exc}") from None
        slurm_id = str(record["slurm_id"])
        # Other tasks of the submission may belong to other clients: its directory stays.
        submission = _Submission(self, str(record["sub"]), str(record["dir"]), count=-1)
        submission.key = key
        submission.slurm_id = slurm_id.split("_", 1)[0]
        sjob = _SlurmJob(submission, int(record["index"]), job)
        sjob.slurm_id = slurm_id
        with self._lock:
            self._ensure_open()
            self._jobs[job.id] = sjob
        self._watcher.track([sjob])

    def hold_result(self, job_id: str, index: int) -> tuple[str, Any, str] | None:
        """Keep the result of call ``index`` of job ``job_id`` for a call that depends on it.

        Returns the Slurm id of the job, the handle that stands for the result in the
        dependent call's arguments (read where that call runs) and the result file, which
        stays until `release_result` is called for it as often as it was held. None: the job
        is no longer in the queue (or is being cancelled): its future has the result.
        """
        from ...payload import Proxied
        from ...store import FILE_CONNECTOR, FILE_KEY, StoredRef

        with self._lock:
            sjob = self._jobs.get(job_id)
            if (sjob is None or sjob.cancelled or not sjob.slurm_id or sjob.job.future.done()
                    or index >= len(sjob.results)):
                return None
            path = sjob.results[index]
            self._holds[path] = self._holds.get(path, 0) + 1
        directory, name = os.path.split(path)
        ref = StoredRef((FILE_CONNECTOR, {"store_dir": directory}), (FILE_KEY, (name,)), 0)
        return sjob.slurm_id, Proxied(ref), path

    def release_result(self, path: str) -> None:
        """A call that depended on the result at ``path`` is done (see `hold_result`)."""
        with self._lock:
            left = self._holds.get(path, 0) - 1
            if left > 0:
                self._holds[path] = left
                return
            self._holds.pop(path, None)
            if path not in self._settled:
                return
            self._settled.discard(path)
        _remove_result(path)

    def submit(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        with self._lock:
            self._ensure_open()
            directory = self._ensure_dir()
            submitted: list[_SlurmJob] = []
            limit = self.array_size_limit()
            try:
                for group in _same_config(jobs):
                    for run in split_arrays(len(group), limit):
                        submitted += self._sbatch(directory, group[run.start:run.stop])
            except BaseException:
                if submitted:
                    self._scancel([s.slurm_id for s in submitted])
                    for sub in {s.submission for s in submitted}:
                        shutil.rmtree(sub.dir, ignore_errors=True)
                raise
            for sjob in submitted:
                self._jobs[sjob.job.id] = sjob
        self._watcher.track(submitted)

    def cancel(self, job: Job) -> bool:
        with self._lock:
            sjob = self._jobs.get(job.id)
        if not resolve(job.future, cancel=True):
            return False
        if sjob is not None:
            sjob.cancelled = True
            self._scancel([sjob.slurm_id])
            self._watcher.kick()
        return True

    def leave_at_exit(self) -> bool:
        """With a result cache (``cache=``), jobs still in the queue at exit are left to
        finish: the journal records them, and a later client collects their results. Their
        directory and key stay."""
        if not self.endpoint.values.get("cache"):
            return False
        with self._lock:
            self._closed = True
            left = [s.slurm_id for s in self._jobs.values() if not s.job.future.done()]
            cleanup = self._cleanup
        if not left:
            return False
        if cleanup is not None:
            cleanup.detach()  # the directory is theirs now
        logger.info("leaving Slurm jobs %s to finish; rerun to collect their results",
                    ", ".join(left))
        return True

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        if cancel and jobs:
            for sjob in jobs:
                if resolve(sjob.job.future, cancel=True):
                    sjob.cancelled = True
            self._scancel([s.slurm_id for s in jobs if s.cancelled])
            self._watcher.kick()
        if wait and not self._watcher.wait_for(self._idle, CANCEL_WAIT if cancel else None):
            logger.warning("Slurm jobs %s are still in the queue %.0f s after scancel",
                           ", ".join(self.slurm_ids()), CANCEL_WAIT)
        self._cleanup_if_idle()
        with self._cleaning:  # a removal another thread started is over before we return
            pass

    def array_size_limit(self) -> int:
        """Most tasks in one job array: ``max_array_size`` (default `ARRAY_LIMIT`), lowered
        to what the cluster allows (read once, at the first submit)."""
        if self._limits is None:
            self._limits = cluster_limits()
        return array_limit(self._limits, self._max_array_size or ARRAY_LIMIT)

    # -- submission -------------------------------------------------------------------------

    def _ensure_dir(self) -> str:
        if self._dir is not None:
            return self._dir
        try:
            os.makedirs(self.shared_dir, mode=0o700, exist_ok=True)
            host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname().split(".")[0])
            host = host[:HOST_LABEL_LENGTH]
            directory = tempfile.mkdtemp(prefix=f"hog-{host}-", dir=self.shared_dir)
            st = os.stat(directory)
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise OSError(f"{directory} is not private to this user")
            write_private(os.path.join(directory, "key"), self._key.hex())
            os.mkdir(os.path.join(directory, RESULTS_DIR), 0o700)
        except OSError as exc:
            raise BackendError(
                f"cannot create the slurm backend's job directory under {self.shared_dir}: "
                f"{exc}"
            ) from None
        # Removes the key and the directory when the backend is collected without a
        # shutdown. It cannot run while jobs are unsettled: the watcher follows them, and
        # each one references this backend. At interpreter exit, the at-exit shutdown
        # (lifecycle.stop_at_exit) cancels the jobs, then removes them.
        self._cleanup = weakref.finalize(self, _remove_job_dir, directory)
        self._cleanup.atexit = False
        self._dir = directory
        return directory

    def _sbatch(self, directory: str, jobs: Sequence[Job]) -> list[_SlurmJob]:
        sub_id = "s" + secrets.token_hex(5)
        job_dir = os.path.join(directory, sub_id)
        submission = _Submission(self, sub_id, job_dir, len(jobs))
        sjobs = [_SlurmJob(submission, i, job) for i, job in enumerate(jobs)]
        walltimes = [j.walltime for j in jobs if j.walltime is not None]
        longest = max(walltimes) if walltimes else None
        config = jobs[0].config or self.endpoint.values  # shared by all (see _same_config)
        spec = SbatchSpec(
            job_dir=job_dir,
            key_file=os.path.join(directory, "key"),
            submission=sub_id,
            count=len(jobs),
            max_parallel=self._max_parallel,
            options=sbatch_options(config),
            time_minutes=time_limit_minutes(longest),
            extra_flags=tuple(config.get("sbatch_flags", ())),
            uv=self._uv,
            after=tuple(config.get("after", ())),
            signal_lead=signal_lead(config.get("signal_lead"), longest),
            comment=client_tag(self.endpoint.name),
        )
        script = os.path.join(job_dir, "job.sbatch")
        results = os.path.join(directory, RESULTS_DIR)
        try:
            os.mkdir(job_dir, 0o700)
            for sjob in sjobs:
                # Each call also puts its result in a file named now, before anything runs:
                # calls submitted later may wait in the queue for it and read it there.
                sjob.results = [os.path.join(results, uuid.uuid4().hex)
                                for _ in range(sjob.job.calls)]
                sjob.job.payload = _with_result_keys(sjob.job.payload, sjob.results)
                write_private(sjob.keys, "".join(p + "\n" for p in sjob.results))
                write_private(sjob.bundle, sjob.job.bundle)
            write_private(script, render_sbatch(spec))
        except (OSError, ValueError) as exc:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise BackendError(f"cannot write the job files under {job_dir}: {exc}") from None
        try:
            proc = subprocess.run(
                ["sbatch", "--parsable", script], capture_output=True, text=True,
                timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL, umask=0o077,
            )
        except FileNotFoundError:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise BackendError(
                "sbatch was not found: the slurm backend runs where Slurm's commands are "
                "(a login node of the cluster)"
            ) from None
        except subprocess.TimeoutExpired:
            # The controller may have queued the job without answering in time: cancel it by
            # its name, unique to this submission (render_sbatch names it hog-<submission>).
            cancelled = self._scancel_name(f"hog-{sub_id}")
            shutil.rmtree(job_dir, ignore_errors=True)
            what = ("any job it queued was cancelled" if cancelled else
                    f"cancelling a job it may have queued failed: run scancel --name=hog-{sub_id}")
            raise BackendError(
                f"sbatch did not answer within {COMMAND_TIMEOUT:.0f} s (is the Slurm controller "
                f"overloaded?); {what}"
            ) from None
        except (OSError, subprocess.SubprocessError) as exc:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise BackendError(f"sbatch could not run: {exc}") from None
        slurm_id = proc.stdout.strip().split(";", 1)[0]
        if proc.returncode != 0 or not slurm_id.isdigit():
            shutil.rmtree(job_dir, ignore_errors=True)
            message = proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}"
            raise BackendError(f"sbatch refused the job: {message}")
        submission.slurm_id = slurm_id
        for sjob in sjobs:
            sjob.slurm_id = slurm_id if len(jobs) == 1 else f"{slurm_id}_{sjob.index}"
        return sjobs

    def _scancel_name(self, name: str) -> bool:
        """Cancel this user's jobs named ``name``; False when scancel failed."""
        try:
            proc = subprocess.run(
                ["scancel", f"--name={name}", f"--user={os.getuid()}"], capture_output=True,
                text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("scancel --name=%s failed: %s", name, exc)
            return False
        return proc.returncode == 0

    def _scancel(self, slurm_ids: Sequence[str]) -> None:
        for start in range(0, len(slurm_ids), SCANCEL_BATCH):
            try:
                subprocess.run(["scancel", *slurm_ids[start:start + SCANCEL_BATCH]],
                               capture_output=True, timeout=COMMAND_TIMEOUT,
                               stdin=subprocess.DEVNULL)
            except (OSError, subprocess.SubprocessError) as exc:
                logger.warning("scancel failed: %s", exc)

    # -- results ----------------------------------------------------------------------------

    def _read_result(self, sjob: _SlurmJob) -> Result | None:
        """The job's authenticated result, None when it has not written one.

        Raises:
            _Forged: the files exist but do not carry this backend's HMAC.
        """
        digest = _read(sjob.hmac)
        if digest is None:
            return None
        rc_text, out, err = _read(sjob.rc), _read(sjob.out), _read(sjob.err)
        if rc_text is None or out is None or err is None:
            raise _Forged("a result file is missing")
        try:
            rc = int(rc_text.strip())
        except ValueError:
            raise _Forged("the exit status is not a number") from None
        key = sjob.submission.key or self._key
        expected = result_digest(key, sjob.submission.id, sjob.index, rc, out, err)
        if not hmac.compare_digest(expected.encode(), digest.strip()):
            raise _Forged("the HMAC does not match")
        return Result(rc, out, err)

    def _settle(self, sjob: _SlurmJob, state: str | None, missing_for: float,
                settling_for: float) -> bool:
        if sjob.cancelled or sjob.job.future.done():
            self._done(sjob, keep=False)
            return True
        where = f"task {sjob.job.id} (Slurm job {sjob.slurm_id})"
        try:
            result = self._read_result(sjob)
        except _Forged as exc:
            self._fail(sjob, BackendError(
                f"the result files of {where} failed authentication ({exc}): they were not "
                f"written by this executor's job; kept for inspection in {sjob.submission.dir}"
            ), keep=True)
            return True
        except OSError as exc:
            self._fail(sjob, BackendError(f"cannot read the result of {where}: {exc}"),
                       keep=True)
            return True
        if state == "FAILED" and result is not None:
            # The job script recorded the bundle's result, then failed the job on purpose
            # (EXIT_RESULT_MISSING: a call failed, so its dependents must not run).
            state = "COMPLETED"
        outcome = settle(state, result, sjob.facts(), missing_for=missing_for,
                         settling_for=settling_for)
        if isinstance(outcome, Deliver):
            if state == "CANCELLED" and result is None and sjob.job.config.get("after"):
                # Dropped, never run, as an upstream job failed (or cancelled by hand): its
                # files tell nothing, and the call's future names the upstream error.
                outcome = Deliver(outcome.output, keep=False)
            self._done(sjob, keep=outcome.keep)
            resolve(sjob.job.future, outcome.output)
        elif isinstance(outcome, Lost):
            self._fail(sjob, BackendError(outcome.message), keep=True)
        return outcome is not None

    def _fail(self, sjob: _SlurmJob, error: BaseException, *, keep: bool) -> None:
        self._done(sjob, keep=keep)
        resolve(sjob.job.future, error=error)

    # -- bookkeeping and cleanup ------------------------------------------------------------

    def _done(self, sjob: _SlurmJob, *, keep: bool) -> None:
        sub = sjob.submission
        with self._lock:
            if self._jobs.get(sjob.job.id) is not sjob:
                return
            del self._jobs[sjob.job.id]
            unheld = [p for p in sjob.results if p not in self._holds]
            self._settled.update(p for p in sjob.results if p in self._holds)
            sub.remaining -= 1
            sub.keep = sub.keep or keep
            if not keep:
                for path in sjob.files:
                    _remove_quietly(path)  # some are never written (a job that failed early)
            if sub.remaining == 0 and not sub.keep:
                shutil.rmtree(sub.dir, ignore_errors=True)
        for path in unheld:
            _remove_result(path)
        self._cleanup_if_idle()

    def _idle(self) -> bool:
        with self._lock:
            return not self._jobs

    def _cleanup_if_idle(self) -> None:
        """After shutdown, once no job is left: remove the key and every file not kept."""
        with self._lock:
            if not self._closed or self._jobs or self._dir is None:
                return
            self._dir = None
            cleanup, self._cleanup = self._cleanup, None
            self._cleaning.acquire()  # before the lock is released: shutdown sees it held
        try:
            run_finalizer(cleanup)
        finally:
            self._cleaning.release()
