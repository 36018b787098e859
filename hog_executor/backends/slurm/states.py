"""What a Slurm job's end means for its future (pure functions).

The watcher reports a job's final state, or that squeue no longer lists it; `settle` decides
from that and the job's authenticated result (if it wrote one) whether the job's future gets
an `Output`, fails with a `BackendError` (`Lost`), or waits for the next round (None). It
follows the `Output` contract: a job killed at its time limit has returncode `EXIT_WALLTIME`,
and ``state`` is set only for a state that explains a failure, never for ``COMPLETED``.

It reads no file and runs no command itself: what it may need of a job ended abnormally
(the Slurm log's tail, the bundle's stderr, the exit code from ``scontrol``) comes from the
`JobFacts` callables, called only when needed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ...runner import EXIT_WALLTIME, RESULT_BEGIN
from .. import Output

__all__ = [
    "REQUEUE_GRACE",
    "RESULT_GRACE",
    "STATE_NOTES",
    "VANISH_GRACE",
    "Deliver",
    "JobFacts",
    "Lost",
    "Result",
    "exit_code_from_scontrol",
    "settle",
]

#: Seconds a job may be missing from squeue, without a result, before its call fails.
VANISH_GRACE = 60.0
#: Seconds to wait for the result files of a COMPLETED job to appear (shared filesystems
#: can show new files late on other hosts).
RESULT_GRACE = 30.0
#: Seconds a job may stay ``PREEMPTED`` or ``NODE_FAIL`` without a result before that is its
#: end: jobs are submitted with ``--requeue``, and Slurm may yet put it back in the queue.
REQUEUE_GRACE = 30.0
#: States that Slurm may follow with a requeue.
REQUEUABLE_STATES = frozenset({"PREEMPTED", "NODE_FAIL"})
#: The exit status assumed when ``scontrol`` does not tell a job's.
UNKNOWN_EXIT_CODE = 1

#: What each state says about a job that ended in it without completing.
STATE_NOTES = {
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


@dataclass(frozen=True)
class Result:
    """A job's authenticated result: the bundle's exit status and output."""

    returncode: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True)
class JobFacts:
    """What `settle` may consult about a job besides its state and result.

    Attributes:
        slurm_id: ``"123"``, or ``"123_4"`` for task 4 of array job 123.
        job_id: the hog job id (as shown on the calls' futures).
        log: the Slurm log file.
        log_paths: every file the job's output is in (named in errors).
        result_file: the file whose presence marks a result (named in errors).
        shared_dir: the endpoint's ``shared_dir`` (named in errors).
        log_tail: the last lines of the Slurm log.
        stderr: what the bundle wrote to its stderr file (for a job without a result).
        exit_code: the job's exit code by ``scontrol`` (negative: killed by that signal).
    """

    slurm_id: str
    job_id: str
    log: str
    log_paths: tuple[str, ...]
    result_file: str
    shared_dir: str
    log_tail: Callable[[], bytes]
    stderr: Callable[[], bytes]
    exit_code: Callable[[], int]


@dataclass(frozen=True)
class Deliver:
    """The job's future gets ``output``; ``keep``: its files stay for inspection."""

    output: Output
    keep: bool


@dataclass(frozen=True)
class Lost:
    """No output will come: the job's future fails with ``BackendError(message)``; its files
    stay for inspection."""

    message: str


def settle(state: str | None, result: Result | None, job: JobFacts, *, missing_for: float,
           settling_for: float) -> Deliver | Lost | None:
    """The outcome of a job the watcher reports ended, or missing from squeue.

    Args:
        state: the job's final Slurm state; None when squeue no longer lists it.
        result: the job's authenticated result; None when it wrote none (yet).
        job: what else may be needed, read only when it is.
        missing_for: seconds the job has been missing from squeue.
        settling_for: seconds since the job was first reported ended or missing.

    Returns:
        `Deliver` or `Lost`; None: not yet (ask again next round). A job ``PREEMPTED`` or
        ``NODE_FAIL`` without a result waits `REQUEUE_GRACE` for Slurm to requeue it.
    """
    if state in REQUEUABLE_STATES and result is None and settling_for < REQUEUE_GRACE:
        return None
    if state is None or state == "COMPLETED":
        if result is not None:
            return Deliver(
                Output(result.returncode, result.stdout, result.stderr, log_paths=job.log_paths),
                keep=result.returncode != 0 or RESULT_BEGIN not in result.stdout,
            )
        if state is None and missing_for < VANISH_GRACE:
            return None
        if state == "COMPLETED" and settling_for < RESULT_GRACE:
            return None
        if state is None:
            why = (f"disappeared from the Slurm queue (squeue) {missing_for:.0f} s ago "
                   "without writing a result")
        else:
            why = (f"completed, but its result file {job.result_file} is not visible here "
                   f"after {settling_for:.0f} s: is shared_dir ({job.shared_dir}) on a "
                   "filesystem the compute nodes share?")
        log = job.log_tail().decode("utf-8", "replace")
        return Lost(f"Slurm job {job.slurm_id} (task {job.job_id}) {why}; logs: "
                    f"{', '.join(job.log_paths)}" + (f"\n--- Slurm log ---\n{log}" if log else ""))
    return Deliver(_ended(state, result, job), keep=True)


def _ended(state: str, result: Result | None, job: JobFacts) -> Output:
    """The output of a job that ended in ``state``, other than COMPLETED."""
    out, err = (result.stdout, result.stderr) if result is not None else (b"", job.stderr())
    if state == "TIMEOUT":
        rc = EXIT_WALLTIME  # as the bundle exits when its own walltime is over
    elif result is not None:
        rc = result.returncode
    else:
        rc = job.exit_code()
    note = STATE_NOTES.get(state, f"ended in state {state}")
    log_tail = job.log_tail()
    extra = b""
    if log_tail:
        extra += f"\n--- Slurm log {job.log} (last lines) ---\n".encode() + log_tail + b"\n"
    extra += f"hog: Slurm job {job.slurm_id} {note} (state {state}, exit status {rc})\n".encode()
    if err and not err.endswith(b"\n"):
        err += b"\n"
    return Output(rc, out, err + extra, state=state, log_paths=job.log_paths)


def exit_code_from_scontrol(text: str) -> int:
    """The exit code in ``scontrol show job --oneliner`` output (negative: killed by that
    signal; `UNKNOWN_EXIT_CODE` when it is not there)."""
    m = re.search(r"\bExitCode=(\d+):(\d+)", text)
    if not m:
        return UNKNOWN_EXIT_CODE
    code, sig = int(m.group(1)), int(m.group(2))
    return -sig if sig else code
