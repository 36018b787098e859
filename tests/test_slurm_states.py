"""What a Slurm job's end means for its future: `states.settle`, read from its output.

Pure functions, no cluster: the job's files are stand-ins that record whether they were read.
"""

from __future__ import annotations

import pytest

from hog_executor.backends import Output
from hog_executor.backends.slurm import states as slurm_states
from hog_executor.backends.slurm.states import (
    RESULT_GRACE,
    STATE_NOTES,
    UNKNOWN_EXIT_CODE,
    VANISH_GRACE,
    Deliver,
    JobFacts,
    Lost,
    Result,
    exit_code_from_scontrol,
    settle,
)
from hog_executor.backends.slurm.watcher import TERMINAL_STATES
from hog_executor.runner import EXIT_WALLTIME, RESULT_BEGIN

LOG_PATHS = ("/jobs/s1/task-0.out", "/jobs/s1/task-0.err", "/jobs/s1/slurm-0.log")
FRAMED = b"printed\n" + RESULT_BEGIN + b"m@@\nb64\n@@HOG-END m@@\n"


class Files:
    """The job's files and scontrol, as `JobFacts` callables; counts what was asked."""

    def __init__(self, log: bytes = b"", stderr: bytes = b"", exit_code: int = 1) -> None:
        self.asked: list[str] = []
        self._log, self._stderr, self._exit_code = log, stderr, exit_code

    def facts(self) -> JobFacts:
        return JobFacts(
            slurm_id="42_0", job_id="abc", log=LOG_PATHS[2], log_paths=LOG_PATHS,
            result_file="/jobs/s1/task-0.hmac", shared_dir="/jobs", log_tail=self.log_tail,
            stderr=self.stderr, exit_code=self.exit_code,
        )

    def log_tail(self) -> bytes:
        self.asked.append("log")
        return self._log

    def stderr(self) -> bytes:
        self.asked.append("stderr")
        return self._stderr

    def exit_code(self) -> int:
        self.asked.append("scontrol")
        return self._exit_code


REQUEUABLE = slurm_states.REQUEUABLE_STATES


def _settle(state, result=None, files=None, missing_for=0.0, settling_for=None):
    """`settle` of a job in ``state``; a state Slurm may requeue from is past its grace."""
    files = files or Files()
    if settling_for is None:
        settling_for = slurm_states.REQUEUE_GRACE if state in REQUEUABLE else 0.0
    return settle(state, result, files.facts(), missing_for=missing_for,
                  settling_for=settling_for), files


# -- a job that completed ---------------------------------------------------------------------

def test_completed_with_a_result_delivers_it_without_a_state():
    outcome, files = _settle("COMPLETED", Result(0, FRAMED, b"err\n"))
    assert outcome == Deliver(Output(0, FRAMED, b"err\n", state=None, log_paths=LOG_PATHS),
                              keep=False)
    assert files.asked == []  # nothing else is read for a normal end


@pytest.mark.parametrize("result", [
    Result(3, FRAMED, b""),  # exited with a status: its files stay for inspection
    Result(0, b"no frame\n", b""),  # exited without a result frame
    Result(EXIT_WALLTIME, b"", b"walltime\n"),  # the bundle's own walltime
])
def test_completed_without_a_value_keeps_the_files_and_has_no_state(result):
    outcome, _ = _settle("COMPLETED", result)
    assert isinstance(outcome, Deliver) and outcome.keep
    assert outcome.output.state is None
    assert outcome.output.returncode == result.returncode


def test_completed_without_a_result_file_waits_then_is_lost():
    assert _settle("COMPLETED", settling_for=RESULT_GRACE - 1)[0] is None
    outcome, files = _settle("COMPLETED", files=Files(log=b"slurm said"),
                             settling_for=RESULT_GRACE)
    assert isinstance(outcome, Lost)
    assert outcome.message.startswith("Slurm job 42_0 (task abc) completed, but its result "
                                      "file /jobs/s1/task-0.hmac is not visible here after 30 s")
    assert "is shared_dir (/jobs) on a filesystem the compute nodes share?" in outcome.message
    assert outcome.message.endswith("\n--- Slurm log ---\nslurm said")
    assert files.asked == ["log"]


# -- a job squeue no longer lists ---------------------------------------------------------------

def test_missing_job_with_a_result_delivers_it():
    outcome, _ = _settle(None, Result(0, FRAMED, b""), missing_for=5)
    assert outcome == Deliver(Output(0, FRAMED, b"", log_paths=LOG_PATHS), keep=False)


def test_missing_job_without_a_result_waits_then_is_lost():
    assert _settle(None, missing_for=VANISH_GRACE - 1)[0] is None
    outcome, files = _settle(None, missing_for=VANISH_GRACE + 1)
    assert outcome == Lost(
        "Slurm job 42_0 (task abc) disappeared from the Slurm queue (squeue) 61 s ago without "
        f"writing a result; logs: {', '.join(LOG_PATHS)}"
    )
    assert files.asked == ["log"]  # an empty log adds nothing


# -- a job that ended otherwise ---------------------------------------------------------------

def test_timeout_is_the_walltime_exit_status_without_asking_scontrol():
    outcome, files = _settle("TIMEOUT", files=Files(log=b"CANCELLED DUE TO TIME LIMIT",
                                                    stderr=b"partial"))
    assert isinstance(outcome, Deliver) and outcome.keep
    out = outcome.output
    assert out.returncode == EXIT_WALLTIME and out.state == "TIMEOUT"
    assert out.stdout == b""
    assert out.stderr == (
        b"partial\n"
        b"\n--- Slurm log /jobs/s1/slurm-0.log (last lines) ---\nCANCELLED DUE TO TIME LIMIT\n"
        b"hog: Slurm job 42_0 reached its Slurm time limit (--time) and was killed "
        b"(state TIMEOUT, exit status 124)\n"
    )
    assert "scontrol" not in files.asked


def test_timeout_after_a_result_is_still_the_walltime_exit_status():
    outcome, _ = _settle("TIMEOUT", Result(0, FRAMED, b""))
    assert isinstance(outcome, Deliver)
    assert outcome.output.returncode == EXIT_WALLTIME and outcome.output.stdout == FRAMED


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES - {"COMPLETED", "TIMEOUT"}))
def test_every_other_final_state_names_itself_with_the_exit_code_of_scontrol(state):
    outcome, files = _settle(state, files=Files(stderr=b"no newline", exit_code=-9))
    assert isinstance(outcome, Deliver) and outcome.keep
    out = outcome.output
    assert out.state == state and out.returncode == -9 and out.stdout == b""
    assert out.log_paths == LOG_PATHS
    note = STATE_NOTES.get(state, f"ended in state {state}")
    assert out.stderr == (f"no newline\nhog: Slurm job 42_0 {note} (state {state}, exit status "
                          "-9)\n").encode()
    assert files.asked == ["stderr", "scontrol", "log"]


@pytest.mark.parametrize("state, note", [
    ("FAILED", "failed before the bundle could record a result"),
    ("CANCELLED", "was cancelled outside hog-executor"),
    ("OUT_OF_MEMORY", "ran out of memory (ask for more with the mem key)"),
    ("NODE_FAIL", "ended because its node failed"),
    ("PREEMPTED", "was preempted"),
    ("BOOT_FAIL", "ended because its node could not boot"),
    ("DEADLINE", "reached its deadline"),
    ("REVOKED", "ended in state REVOKED"),
    ("SPECIAL_EXIT", "ended in state SPECIAL_EXIT"),
])
def test_each_failure_state_is_explained(state, note):
    outcome, _ = _settle(state)
    assert isinstance(outcome, Deliver)
    assert f"hog: Slurm job 42_0 {note}".encode() in outcome.output.stderr


def test_a_result_written_before_another_end_is_kept_with_its_own_exit_status():
    outcome, files = _settle("OUT_OF_MEMORY", Result(137, b"out", b"err\n"))
    assert isinstance(outcome, Deliver) and outcome.keep
    out = outcome.output
    assert (out.returncode, out.stdout, out.state) == (137, b"out", "OUT_OF_MEMORY")
    assert out.stderr.startswith(b"err\nhog: Slurm job 42_0 ran out of memory")
    assert files.asked == ["log"]  # the result has the exit status and stderr


# -- scontrol ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, code", [
    ("JobId=42 JobName=hog-s1 ExitCode=97:0 DerivedExitCode=0:0", 97),
    ("JobId=42 ExitCode=0:9", -9),
    ("JobId=42 ExitCode=0:0", 0),
    ("slurm_load_jobs error: Invalid job id specified", UNKNOWN_EXIT_CODE),
    ("", UNKNOWN_EXIT_CODE),
])
def test_exit_code_from_scontrol(text, code):
    assert exit_code_from_scontrol(text) == code
