"""The ``slurm`` backend: bundles run as Slurm batch jobs, a ``map`` as one job array."""

from __future__ import annotations

import atexit
import hmac
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import InvalidStateError
from dataclasses import dataclass
from typing import Any, ClassVar

from ...config import Endpoint, Key, positive_int
from ...errors import BackendError
from ...runner import EXIT_WALLTIME, RESULT_BEGIN
from .. import Backend, Job, Output, run_finalizer
from ..processes import uv_binary
from .sbatch import (
    SbatchSpec,
    check_flags,
    render_sbatch,
    result_digest,
    sbatch_options,
    time_limit_minutes,
)
from .watcher import Watcher, watcher

__all__ = ["SlurmBackend", "default_shared_dir"]

#: ``workers`` (how ``map`` sizes its chunks) when ``max_parallel`` is not set.
DEFAULT_WORKERS = 16
#: Seconds between status queries at first (they grow while nothing changes).
DEFAULT_POLL_INTERVAL = 2.0
#: Most tasks in one job array (Slurm's default MaxArraySize is 1001).
ARRAY_LIMIT = 1000
#: Seconds a job may be missing from squeue, without a result, before its call fails.
VANISH_GRACE = 60.0
#: Seconds to wait for the result files of a COMPLETED job to appear (shared filesystems
#: can show new files late on other hosts).
RESULT_GRACE = 30.0
#: Seconds ``shutdown(wait=True, cancel=True)`` waits for cancelled jobs to leave the queue.
CANCEL_WAIT = 120.0
#: Seconds sbatch and scancel may take.
COMMAND_TIMEOUT = 60.0
#: Lines of the Slurm log quoted in errors.
LOG_TAIL_LINES = 20

_NAME = re.compile(r"^[A-Za-z0-9_.@+-]+$")
_LIST = re.compile(r"^[A-Za-z0-9_.@+-]+(,[A-Za-z0-9_.@+-]+)*$")
_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.,&|!*()\[\]:=-]+$")

_STATE_NOTES = {
    "TIMEOUT": "reached its Slurm time limit (--time) and was killed",
    "CANCELLED": "was cancelled outside hog-executor (scancel, an administrator, or the end "
                 "of a reservation)",
    "OUT_OF_MEMORY": "ran out of memory (ask for more with the mem key)",
    "NODE_FAIL": "ended because its node failed",
    "BOOT_FAIL": "ended because its node could not boot",
    "PREEMPTED": "was preempted",
    "DEADLINE": "reached its deadline",
    "FAILED": "failed before the bundle could record a result (do the compute nodes see "
              "shared_dir? see the Slurm log)",
}

_live: weakref.WeakSet[SlurmBackend] = weakref.WeakSet()


# -- configuration keys -----------------------------------------------------------------------

def _name(what: str, pattern: re.Pattern[str] = _NAME) -> Any:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not pattern.match(value):
            raise ValueError(f"expected {what}, got {value!r}")
        return value

    return check


def _mem(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"\d+[KMGTkmgt]?", value.strip()):
        return value.strip().upper()
    raise ValueError(f"expected megabytes or a size such as \"4G\", got {value!r}")


def _gpus(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"([A-Za-z0-9_.-]+:)?[1-9][0-9]*", value):
        return value
    raise ValueError(f"expected a GPU count or \"type:count\", got {value!r}")


def _nodes(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"[1-9][0-9]*(-[1-9][0-9]*)?", value):
        return value
    raise ValueError(f"expected a node count or \"min-max\", got {value!r}")


def _flags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError("expected a list of sbatch options such as [\"--exclusive\"]")
    return check_flags(value)


def _shared_dir(value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError("expected a path")
    path = os.path.abspath(os.path.expanduser(os.fspath(value)))
    if re.search(r'[\x00-\x1f\x7f"\\]', path):
        raise ValueError(f"{path!r} contains a quote, a backslash or a control character")
    return path


def _interval(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0.1:
        raise ValueError(f"expected seconds (at least 0.1), got {value!r}")
    return float(value)


def _key(name: str, doc: str, check: Any, per_call: bool = False) -> Key:
    return Key(name, doc, check, per_call=per_call)


def _job_key(name: str, doc: str, check: Any) -> Key:
    """A key read from each submission's config, so ``ex.options(...)`` may change it."""
    return _key(name, doc, check, per_call=True)


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


def default_shared_dir() -> str:
    """``$SCRATCH/.hog-executor/slurm`` when ``$SCRATCH`` is set, else ``~/.hog-executor/slurm``."""
    base = os.environ.get("SCRATCH") or os.path.expanduser("~")
    return os.path.join(base, ".hog-executor", "slurm")


# -- tasks ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Result:
    returncode: int
    out: bytes
    err: bytes


class _Forged(Exception):
    """A result file that does not carry this executor's HMAC."""


class _Submission:
    """One sbatch: a plain job or a job array, and the directory of its files."""

    def __init__(self, backend: SlurmBackend, sub_id: str, job_dir: str, count: int) -> None:
        self.backend = backend
        self.id = sub_id
        self.dir = job_dir
        self.remaining = count
        self.keep = False
        self.job_id = ""


class _Task:
    """One bundle: a plain job, or one task of an array (what the watcher follows)."""

    def __init__(self, submission: _Submission, index: int, job: Job, slurm_id: str) -> None:
        self.submission = submission
        self.index = index
        self.job = job
        self._slurm_id = slurm_id
        self.cancelled = False
        base = os.path.join(submission.dir, f"task-{index}")
        self.bundle = base + ".sh"
        self.out = base + ".out"
        self.err = base + ".err"
        self.rc = base + ".rc"
        self.hmac = base + ".hmac"
        self.log = os.path.join(submission.dir, f"slurm-{index}.log")

    @property
    def slurm_id(self) -> str:
        return self._slurm_id

    @property
    def array_id(self) -> str:
        return self.submission.job_id

    @property
    def poll_interval(self) -> float:
        return self.submission.backend.poll_interval

    @property
    def log_paths(self) -> tuple[str, ...]:
        return (self.out, self.err, self.log)

    def started(self) -> None:
        if not self.cancelled and not self.job.future.done():
            self.job.on_start()

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
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read()
    except OSError:
        return b""
    return b"\n".join(data.rstrip(b"\n").split(b"\n")[-lines:])


class SlurmBackend(Backend):
    """Runs bundles as Slurm batch jobs; the bundles of one ``submit`` as one job array.

    Job files live in a private directory (``0700``, files ``0600``) under ``shared_dir``,
    which compute nodes must see. Each task's result is authenticated with an HMAC keyed by a
    secret of this backend before it is handed to the executor. One watcher thread per process
    follows every job with batched ``squeue`` queries.
    """

    keys: ClassVar[Mapping[str, Key]] = {
        k.name: k for k in [
            _job_key("partition", "Slurm partition(s) (--partition)",
                 _name("a partition name", _LIST)),
            _job_key("account", "account charged for the jobs (--account)", _name("an account")),
            _job_key("qos", "quality of service (--qos)", _name("a QOS name")),
            _job_key("cpus_per_task", "CPUs per bundle (--cpus-per-task)", positive_int),
            _job_key("mem", "memory per node: megabytes or \"4G\" (--mem)", _mem),
            _job_key("gpus", "GPUs per job: a count or \"type:count\" (--gpus)", _gpus),
            _job_key("nodes", "nodes per job: a count or \"min-max\" (--nodes)", _nodes),
            _job_key("constraint", "node features required (--constraint)",
                 _name("a feature expression", _CONSTRAINT)),
            _key("max_parallel", "array tasks running at once (the %N of --array); also "
                 "sizes map chunks", positive_int),
            _job_key("sbatch_flags", "extra sbatch options, each \"--flag=value\"", _flags),
            _key("shared_dir", "directory for job files, visible from the compute nodes "
                 "(default: $SCRATCH or ~, /.hog-executor/slurm)", _shared_dir),
            _key("poll_interval", "seconds between status queries at first (default 2; "
                 "grows while nothing changes)", _interval),
        ]
    }

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        values = endpoint.values
        self._shared_dir: str = values.get("shared_dir") or _shared_dir(default_shared_dir())
        self.poll_interval: float = values.get("poll_interval", DEFAULT_POLL_INTERVAL)
        self._max_parallel: int | None = values.get("max_parallel")
        self._key = secrets.token_bytes(32)
        self._dir: str | None = None
        self._cleanup: weakref.finalize[..., SlurmBackend] | None = None
        self._lock = threading.RLock()
        self._tasks: dict[str, _Task] = {}
        self._closed = False
        self._uv = uv_binary()
        self._watcher: Watcher = watcher()
        _live.add(self)

    # -- the interface ----------------------------------------------------------------------

    @property
    def workers(self) -> int:
        return int(self._max_parallel or DEFAULT_WORKERS)

    @property
    def directory(self) -> str | None:
        """This backend's private directory under ``shared_dir`` (None before any submit)."""
        return self._dir

    def slurm_id(self, job_id: str) -> str | None:
        """The Slurm id (``"123"`` or ``"123_4"``) of the task running job ``job_id``."""
        with self._lock:
            task = self._tasks.get(job_id)
        return task.slurm_id if task else None

    def slurm_ids(self) -> list[str]:
        """The Slurm ids of this backend's jobs that have not settled yet."""
        with self._lock:
            return [t.slurm_id for t in self._tasks.values()]

    def submit(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        with self._lock:
            if self._closed:
                raise BackendError("the slurm backend is shut down")
            directory = self._ensure_dir()
            submitted: list[_Task] = []
            try:
                for group in _same_config(jobs):
                    for start in range(0, len(group), ARRAY_LIMIT):
                        submitted += self._sbatch(directory, group[start:start + ARRAY_LIMIT])
            except BaseException:
                if submitted:
                    self._scancel([t.slurm_id for t in submitted])
                    for sub in {t.submission for t in submitted}:
                        shutil.rmtree(sub.dir, ignore_errors=True)
                raise
            for task in submitted:
                self._tasks[task.job.id] = task
        self._watcher.track(submitted)

    def cancel(self, job: Job) -> bool:
        with self._lock:
            task = self._tasks.get(job.id)
        if task is None:
            return job.future.cancel()
        if not job.future.cancel():
            return False
        task.cancelled = True
        self._scancel([task.slurm_id])
        self._watcher.kick()
        return True

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        with self._lock:
            self._closed = True
            tasks = list(self._tasks.values())
        if cancel and tasks:
            for task in tasks:
                if task.job.future.cancel():
                    task.cancelled = True
            self._scancel([t.slurm_id for t in tasks if t.cancelled])
            self._watcher.kick()
        if wait and not self._watcher.wait_for(self._idle, CANCEL_WAIT if cancel else None):
            print(f"hog-executor: Slurm jobs {', '.join(self.slurm_ids())} still in the "
                  f"queue {CANCEL_WAIT:.0f} s after scancel", file=sys.stderr)
        self._cleanup_if_idle()

    # -- submission -------------------------------------------------------------------------

    def _ensure_dir(self) -> str:
        if self._dir is not None:
            return self._dir
        try:
            os.makedirs(self._shared_dir, mode=0o700, exist_ok=True)
            host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname().split(".")[0])[:32]
            directory = tempfile.mkdtemp(prefix=f"hog-{host}-", dir=self._shared_dir)
            st = os.stat(directory)
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise OSError(f"{directory} is not private to this user")
            fd = os.open(os.path.join(directory, "key"), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                         0o600)
            with open(fd, "w") as f:
                f.write(self._key.hex())
        except OSError as exc:
            raise BackendError(
                f"cannot create the slurm backend's job directory under {self._shared_dir}: "
                f"{exc}"
            ) from None
        # Removes the key and the directory when the backend is collected without a
        # shutdown. It cannot run while jobs are unsettled: the watcher follows them, and
        # each one references this backend. Interpreter exit is _at_exit's (it cancels jobs).
        self._cleanup = weakref.finalize(self, _remove_job_dir, directory)
        self._cleanup.atexit = False
        self._dir = directory
        return directory

    def _sbatch(self, directory: str, jobs: Sequence[Job]) -> list[_Task]:
        sub_id = "s" + secrets.token_hex(5)
        job_dir = os.path.join(directory, sub_id)
        submission = _Submission(self, sub_id, job_dir, len(jobs))
        tasks = [_Task(submission, i, job, "") for i, job in enumerate(jobs)]
        walltimes = [j.walltime for j in jobs if j.walltime is not None]
        config = jobs[0].config or self.endpoint.values  # shared by all (see _same_config)
        spec = SbatchSpec(
            job_dir=job_dir,
            key_file=os.path.join(directory, "key"),
            submission=sub_id,
            count=len(jobs),
            max_parallel=self._max_parallel,
            options=sbatch_options(config),
            time_minutes=time_limit_minutes(max(walltimes)) if walltimes else None,
            extra_flags=tuple(config.get("sbatch_flags", ())),
            uv=self._uv,
        )
        script = os.path.join(job_dir, "job.sbatch")
        try:
            os.mkdir(job_dir, 0o700)
            for task in tasks:
                _write_private(task.bundle, task.job.bundle)
            _write_private(script, render_sbatch(spec))
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
        job_id = proc.stdout.strip().split(";", 1)[0]
        if proc.returncode != 0 or not job_id.isdigit():
            shutil.rmtree(job_dir, ignore_errors=True)
            message = proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}"
            raise BackendError(f"sbatch refused the job: {message}")
        submission.job_id = job_id
        for task in tasks:
            task._slurm_id = job_id if len(jobs) == 1 else f"{job_id}_{task.index}"
        return tasks

    def _scancel_name(self, name: str) -> bool:
        """Cancel this user's jobs named ``name``; False when scancel failed."""
        try:
            proc = subprocess.run(
                ["scancel", f"--name={name}", f"--user={os.getuid()}"], capture_output=True,
                text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"hog-executor: scancel --name={name} failed: {exc}", file=sys.stderr)
            return False
        return proc.returncode == 0

    def _scancel(self, slurm_ids: Sequence[str]) -> None:
        for start in range(0, len(slurm_ids), 500):
            try:
                subprocess.run(["scancel", *slurm_ids[start:start + 500]], capture_output=True,
                               timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
            except (OSError, subprocess.SubprocessError) as exc:
                print(f"hog-executor: scancel failed: {exc}", file=sys.stderr)

    # -- results ----------------------------------------------------------------------------

    def _read_result(self, task: _Task) -> _Result | None:
        """The task's authenticated result, None when it has not written one.

        Raises:
            _Forged: the files exist but do not carry this backend's HMAC.
        """
        digest = _read(task.hmac)
        if digest is None:
            return None
        rc_text, out, err = _read(task.rc), _read(task.out), _read(task.err)
        if rc_text is None or out is None or err is None:
            raise _Forged("a result file is missing")
        try:
            rc = int(rc_text.strip())
        except ValueError:
            raise _Forged("the exit status is not a number") from None
        expected = result_digest(self._key, task.submission.id, task.index, rc, out, err)
        if not hmac.compare_digest(expected.encode(), digest.strip()):
            raise _Forged("the HMAC does not match")
        return _Result(rc, out, err)

    def _settle(self, task: _Task, state: str | None, missing_for: float,
                settling_for: float) -> bool:
        if task.cancelled or task.job.future.done():
            self._done(task, keep=False)
            return True
        try:
            result = self._read_result(task)
        except _Forged as exc:
            self._fail(task, BackendError(
                f"the result files of task {task.job.id} (Slurm job {task.slurm_id}) failed "
                f"authentication ({exc}): they were not written by this executor's job; kept "
                f"for inspection in {task.submission.dir}"
            ), keep=True)
            return True
        except OSError as exc:
            self._fail(task, BackendError(
                f"cannot read the result of task {task.job.id} (Slurm job {task.slurm_id}): "
                f"{exc}"
            ), keep=True)
            return True
        if state is None or state == "COMPLETED":
            if result is not None:
                self._resolve(task, Output(result.returncode, result.out, result.err,
                                           state="COMPLETED", log_paths=task.log_paths),
                              keep=result.returncode != 0 or RESULT_BEGIN not in result.out)
                return True
            if state is None and missing_for < VANISH_GRACE:
                return False
            if state == "COMPLETED" and settling_for < RESULT_GRACE:
                return False
            if state is None:
                why = (f"disappeared from the Slurm queue (squeue) {missing_for:.0f} s ago "
                       "without writing a result")
            else:
                why = (f"completed, but its result file {task.hmac} is not visible here "
                       f"after {settling_for:.0f} s: is shared_dir ({self._shared_dir}) on a "
                       "filesystem the compute nodes share?")
            log = _tail(task.log).decode("utf-8", "replace")
            self._fail(task, BackendError(
                f"Slurm job {task.slurm_id} (task {task.job.id}) {why}; logs: "
                f"{', '.join(task.log_paths)}" + (f"\n--- Slurm log ---\n{log}" if log else "")
            ), keep=True)
            return True
        # The job ended in another state: a process error carrying that state.
        if result is not None:
            rc, out, err = result.returncode, result.out, result.err
        else:
            rc, out, err = _exit_code(task.slurm_id), b"", _read(task.err) or b""
        if state == "TIMEOUT":
            rc = EXIT_WALLTIME
        note = _STATE_NOTES.get(state, f"ended in state {state}")
        log_tail = _tail(task.log)
        extra = b""
        if log_tail:
            extra += (f"\n--- Slurm log {task.log} (last lines) ---\n".encode() + log_tail
                      + b"\n")
        extra += (f"hog: Slurm job {task.slurm_id} {note} (state {state}, exit status {rc})\n"
                  .encode())
        if err and not err.endswith(b"\n"):
            err += b"\n"
        self._resolve(task, Output(rc, out, err + extra, state=state, log_paths=task.log_paths),
                      keep=True)
        return True

    def _resolve(self, task: _Task, output: Output, *, keep: bool) -> None:
        self._done(task, keep=keep)
        try:
            task.job.future.set_result(output)
        except InvalidStateError:  # cancelled meanwhile
            pass

    def _fail(self, task: _Task, error: BaseException, *, keep: bool) -> None:
        self._done(task, keep=keep)
        try:
            task.job.future.set_exception(error)
        except InvalidStateError:
            pass

    # -- bookkeeping and cleanup ------------------------------------------------------------

    def _done(self, task: _Task, *, keep: bool) -> None:
        sub = task.submission
        with self._lock:
            if self._tasks.get(task.job.id) is not task:
                return
            del self._tasks[task.job.id]
            sub.remaining -= 1
            sub.keep = sub.keep or keep
            if not keep:
                for path in (task.bundle, task.out, task.err, task.rc, task.hmac, task.log):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
            if sub.remaining == 0 and not sub.keep:
                shutil.rmtree(sub.dir, ignore_errors=True)
        self._cleanup_if_idle()

    def _idle(self) -> bool:
        with self._lock:
            return not self._tasks

    def _cleanup_if_idle(self) -> None:
        """After shutdown, once no job is left: remove the key and every file not kept."""
        with self._lock:
            if not self._closed or self._tasks or self._dir is None:
                return
            self._dir = None
            cleanup, self._cleanup = self._cleanup, None
        run_finalizer(cleanup)


def _remove_job_dir(directory: str) -> None:
    """Remove a backend's key and its directory (kept if it holds files of failed tasks)."""
    try:
        os.unlink(os.path.join(directory, "key"))
    except OSError:
        pass
    try:
        os.rmdir(directory)
    except OSError:
        pass


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _exit_code(slurm_id: str) -> int:
    """The job's exit code from ``scontrol show job`` (negative: killed by that signal)."""
    try:
        proc = subprocess.run(["scontrol", "show", "job", "--oneliner", slurm_id],
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return 1
    m = re.search(r"\bExitCode=(\d+):(\d+)", proc.stdout)
    if not m:
        return 1
    code, sig = int(m.group(1)), int(m.group(2))
    return -sig if sig else code


@atexit.register
def _at_exit() -> None:  # pragma: no cover - runs at interpreter exit
    """Cancel the jobs of executors never shut down: nobody is left to read their results."""
    for backend in list(_live):
        try:
            if not backend._closed or not backend._idle():
                backend.shutdown(wait=True, cancel=True)
        except Exception as exc:
            print(f"hog-executor: shutting down the slurm backend failed: {exc}", file=sys.stderr)
