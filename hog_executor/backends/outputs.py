"""What a bundle run produced: `Output` for a job, `CallOutput` for one call of a warm runner.

Standard library only: with `hog_executor.backends.runners` these travel by value to Dask
workers, which need no hog-executor installation.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CallOutput", "Output"]


@dataclass(frozen=True)
class Output:
    """What a bundle run produced.

    The executor reads it without knowing any scheduler's vocabulary, so a backend maps what
    its scheduler reports onto these fields:

    - a job killed at its scheduler's time limit has ``returncode``
      `~hog_executor.runner.EXIT_WALLTIME`, the status a bundle exits with when a call
      overruns its own walltime;
    - ``state`` is set only when the scheduler's final state explains a failure (such as
      ``"OUT_OF_MEMORY"``, ``"CANCELLED"``, ``"TIMEOUT"``); it is None for a job that ended
      normally (Slurm's ``COMPLETED``), whatever its exit status, and for backends without a
      scheduler.

    Attributes:
        returncode: exit status (negative: killed by that signal).
        stdout: raw standard output.
        stderr: raw standard error.
        state: the scheduler's final state when it explains a failure, else None.
        log_paths: where the backend keeps this run's logs, if anywhere.
        streamed: every call's answer already went to ``Job.on_call`` (a warm runner);
            the other fields then say only how the job ended.
    """

    returncode: int
    stdout: bytes
    stderr: bytes
    state: str | None = None
    log_paths: tuple[str, ...] = ()
    streamed: bool = False


@dataclass(frozen=True)
class CallOutput:
    """One call's answer from a warm runner (see `Job.on_call`).

    Attributes:
        index: the call's index in its job's chunk.
        outcome: the runner's outcome tuple; None when the call ended its process.
        stdout: what the call printed.
        stderr: what the call wrote to stderr.
        started: when the call started (the runner's clock, seconds since the epoch).
        finished: when it finished.
        failure: how the process ended, when ``outcome`` is None.
        worker: the runner that answered (``host:pid``).
        startup: for the first call a new runner answers, how it started (``env_ready``,
            ``env_built``, ``imported``: see ``hog_executor.runner.process_times``).
    """

    index: int
    outcome: tuple[object, ...] | None
    stdout: bytes
    stderr: bytes
    started: float = 0.0
    finished: float = 0.0
    failure: Output | None = None
    worker: str | None = None
    startup: dict[str, object] | None = None
