"""Which client sent each Slurm job, and whether it is still alive (``hog cancel``).

Every sbatch carries a ``--comment`` naming its client: the host, the process id and that
process's start time (so that a recycled pid is not taken for the client), a run id and the
endpoint. After the client is killed (SIGKILL, a lost login session), its jobs stay in the
queue on purpose: a rerun with the result cache (``cache=``) collects them. `hog_jobs` lists
this user's jobs with such a comment, `client_status` tells which clients are gone.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ALIVE",
    "GONE",
    "RUN_ID",
    "UNKNOWN",
    "ClientTag",
    "HogJob",
    "client_status",
    "client_tag",
    "hog_jobs",
    "parse_squeue_jobs",
    "parse_tag",
    "process_start",
    "slurm_command",
]

#: First word of the comment of every job hog-executor submits.
TAG_PREFIX = "hog-client"
#: This process's run id: one per client process, in the comment of each of its jobs.
RUN_ID = secrets.token_hex(4)
#: Seconds squeue may take.
QUERY_TIMEOUT = 60.0

#: The client of a job is running.
ALIVE = "alive"
#: The client of a job is gone (its process ended, or the pid now runs another process).
GONE = "gone"
#: The client ran on another host: whether it is alive is not known here.
UNKNOWN = "unknown"

_WORD = re.compile(r"[^A-Za-z0-9_.@+:-]")


@dataclass(frozen=True)
class ClientTag:
    """The client named in a job's comment.

    Attributes:
        host: the client's host name (short form).
        pid: its process id.
        start: its start time in clock ticks since boot (``/proc/<pid>/stat``), None: unknown.
        run: the client process's run id (`RUN_ID`).
        endpoint: the endpoint name the job was sent through.
    """

    host: str
    pid: int
    start: int | None
    run: str
    endpoint: str


def _host() -> str:
    return socket.gethostname().split(".")[0]


def process_start(pid: int, proc: str = "/proc") -> int | None:
    """When process ``pid`` started, in clock ticks since boot (None: no such process, or
    no ``/proc``)."""
    try:
        with open(os.path.join(proc, str(pid), "stat"), "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()  # after the command name, which may hold spaces
    try:
        return int(fields[19])  # field 22 of stat(5); the 20th after the name
    except (IndexError, ValueError):
        return None


def client_tag(endpoint: str) -> str:
    """The comment of a job this process sends through ``endpoint``."""
    pid = os.getpid()
    start = process_start(pid)
    words = [TAG_PREFIX, f"host={_WORD.sub('_', _host())}", f"pid={pid}",
             f"start={start if start is not None else '-'}", f"run={RUN_ID}",
             f"endpoint={_WORD.sub('_', endpoint) or '-'}"]
    return " ".join(words)


def parse_tag(comment: str) -> ClientTag | None:
    """The client a job's comment names; None: not a comment `client_tag` wrote."""
    words = comment.split()
    if not words or words[0] != TAG_PREFIX:
        return None
    fields = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    try:
        pid = int(fields["pid"])
        start = None if fields.get("start", "-") == "-" else int(fields["start"])
        return ClientTag(fields["host"], pid, start, fields.get("run", ""),
                         fields.get("endpoint", "-"))
    except (KeyError, ValueError):
        return None


def client_status(tag: ClientTag, host: str | None = None, proc: str = "/proc") -> str:
    """`ALIVE`, `GONE`, or `UNKNOWN` (the client ran on another host than ``host``, by
    default this one)."""
    if tag.host != (host or _WORD.sub("_", _host())):
        return UNKNOWN
    start = process_start(tag.pid, proc)
    if start is None:
        return GONE
    if tag.start is not None and start != tag.start:
        return GONE  # the pid was recycled: another process has it now
    return ALIVE


@dataclass(frozen=True)
class HogJob:
    """A job of this user that hog-executor sent.

    Attributes:
        array_id: the id to cancel it by (an array's id covers all of its tasks).
        slurm_id: its id as squeue shows it (``123``, ``123_4``, ``123_[5-9]``).
        name: its job name.
        state: its Slurm state.
        client: the client that sent it.
    """

    array_id: str
    slurm_id: str
    name: str
    state: str
    client: ClientTag


def parse_squeue_jobs(text: str) -> list[HogJob]:
    """The hog jobs in ``squeue -h -o '%F|%i|%j|%T|%k'`` output (other jobs are left out)."""
    jobs = []
    for line in text.splitlines():
        parts = line.split("|", 4)
        if len(parts) < 5:
            continue
        tag = parse_tag(parts[4])
        if tag is not None:
            jobs.append(HogJob(parts[0].strip(), parts[1].strip(), parts[2].strip(),
                               parts[3].strip(), tag))
    return jobs


def slurm_command(words: list[str], timeout: float = QUERY_TIMEOUT,
                  run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> str:
    """Run a Slurm command (``squeue``, ``scancel``, ...); its standard output.

    Raises:
        RuntimeError: the command could not run or failed (with its message).
    """
    try:
        proc = run(words, capture_output=True, text=True, timeout=timeout,
                   stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"{words[0]} could not run: {exc}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{words[0]} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def hog_jobs(run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
             ) -> list[HogJob]:
    """This user's jobs in the Slurm queue that hog-executor sent.

    Raises:
        RuntimeError: squeue could not run or failed.
    """
    return parse_squeue_jobs(slurm_command(
        ["squeue", "--noheader", f"--user={os.getuid()}", "--format=%F|%i|%j|%T|%k"],
        run=run))
