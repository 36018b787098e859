"""The sbatch script that runs one bundle or a job array of bundles (pure functions).

One submission is a directory ``<job dir>`` holding ``task-<i>.sh`` (the bundles) and the
script rendered here. Task ``i`` (``$SLURM_ARRAY_TASK_ID``, 0 for a plain job) runs
``bash task-<i>.sh`` with its output in ``task-<i>.out``/``task-<i>.err``, writes the exit
status to ``task-<i>.rc``, then ``task-<i>.hmac``: an HMAC-SHA256, keyed with the executor's
secret, over :func:`result_message`. The client trusts nothing it has not authenticated.

The HMAC is computed in plain bash with ``sha256sum`` (coreutils), so compute nodes need no
Python or OpenSSL; the key is read from a ``0600`` file and never appears in a command line
or the environment. Every value reaches the script quoted: ``#SBATCH`` values with Slurm's
own double-quote rules, shell values with :func:`shlex.quote`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..._version import __version__
from ...runner import EXIT_WRAPPER_FAILED

__all__ = [
    "EXIT_RESULT_MISSING",
    "EXIT_WRAPPER_FAILED",
    "ClusterLimits",
    "SbatchSpec",
    "array_limit",
    "dependency_flags",
    "directive_quote",
    "parse_cluster_limits",
    "render_sbatch",
    "result_digest",
    "result_message",
    "sbatch_options",
    "signal_lead",
    "split_arrays",
    "time_limit_minutes",
]

#: Minutes added to a call's walltime for Slurm's ``--time``: the bundle enforces the exact
#: walltime itself; the margin covers building the environment on first use.
TIME_MARGIN_MINUTES = 5
#: First line of the authenticated message (bump when its layout changes).
RESULT_VERSION = "hog-result-v1"
#: A task's exit status when a call of its bundle left no result file (it failed): Slurm
#: then counts the job as failed, and jobs waiting on it (``afterok``) never run.
EXIT_RESULT_MISSING = 3

#: Backend keys that become sbatch options, in the order they are written.
OPTION_FLAGS: dict[str, str] = {
    "partition": "--partition",
    "account": "--account",
    "qos": "--qos",
    "nodes": "--nodes",
    "ranks": "--ntasks",
    "ranks_per_node": "--ntasks-per-node",
    "cpus_per_task": "--cpus-per-task",
    "mem": "--mem",
    "gpus": "--gpus",
    "constraint": "--constraint",
}

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class SbatchSpec:
    """Everything the sbatch script of one submission depends on.

    Attributes:
        job_dir: absolute path of the submission's directory (holds ``task-<i>.sh``).
        key_file: absolute path of the executor's HMAC key file (hex, mode ``0600``).
        submission: the submission's id (in the job name and in every authenticated result).
        count: number of bundles; more than one makes a job array ``0-(count-1)``.
        max_parallel: array tasks running at once (the ``%`` of ``--array``), None: no limit.
        options: ``(flag, value)`` pairs such as ``("--partition", "debug")``.
        time_minutes: ``--time`` in minutes, None: the partition's default.
        extra_flags: ``sbatch_flags`` of the endpoint, written last so that they win.
        uv: a uv binary for the bundles (exported as ``HOG_UV`` unless already set).
        after: Slurm ids (``"123"``, ``"123_4"``) of jobs that must complete successfully
            before this one starts (``--dependency=afterok``); the job is cancelled if one
            fails or is cancelled (``--kill-on-invalid-dep=yes``).
        signal_lead: seconds before the end of its time that a call is warned (``SIGUSR1``,
            see `hog_executor.checkpoint`): Slurm signals the job script that long before
            ``--time`` (``--signal=B:USR1@N``), and each bundle gets it that long before its
            own walltime (``HOG_SIGNAL_LEAD``). 0: no warning.
        comment: the job's ``--comment``: the client that sent it (see `.clients`), None:
            none.
    """

    job_dir: str
    key_file: str
    submission: str
    count: int = 1
    max_parallel: int | None = None
    options: tuple[tuple[str, str], ...] = ()
    time_minutes: int | None = None
    extra_flags: tuple[str, ...] = ()
    uv: str | None = None
    after: tuple[str, ...] = ()
    signal_lead: int = 0
    comment: str | None = None


def directive_quote(value: str) -> str:
    """Quote ``value`` for an ``#SBATCH`` line: Slurm reads ``"..."`` with ``\\`` escapes.

    Raises:
        ValueError: ``value`` contains a newline or another control character.
    """
    if _UNSAFE.search(value):
        raise ValueError(f"control characters cannot reach sbatch: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pattern_escape(path: str) -> str:
    """Escape ``%`` for Slurm's output file name patterns."""
    return path.replace("%", "%%")


def time_limit_minutes(walltime: float | None, margin: int = TIME_MARGIN_MINUTES) -> int | None:
    """Slurm's ``--time`` (whole minutes) for a call of ``walltime`` seconds."""
    if walltime is None:
        return None
    return max(1, math.ceil(walltime / 60)) + margin


#: The longest warning ``--signal`` allows, in seconds.
MAX_SIGNAL_LEAD = 65535
#: The warning when ``signal_lead`` is not set: a tenth of the walltime, within these bounds
#: (seconds); the upper one also when there is no walltime (Slurm's own time limit).
SIGNAL_LEAD_BOUNDS = (10, 300)


def signal_lead(value: int | None, walltime: float | None) -> int:
    """Seconds of warning before the end of a call's time: ``value`` (the ``signal_lead``
    key) when set, else a tenth of ``walltime`` within `SIGNAL_LEAD_BOUNDS`."""
    if value is not None:
        return min(int(value), MAX_SIGNAL_LEAD)
    low, high = SIGNAL_LEAD_BOUNDS
    if walltime is None:
        return high
    return int(min(high, max(low, walltime // 10)))


def sbatch_options(values: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The ``(flag, value)`` pairs for the endpoint's resource keys that are set.

    ``ranks`` (``--ntasks``) and ``ranks_per_node`` (``--ntasks-per-node``) are written for
    calls on more than one rank: the job's allocation then holds the step that ``srun``
    starts the ranks in.
    """
    ranks = values.get("ranks") or 1
    return tuple(
        (flag, str(values[key])) for key, flag in OPTION_FLAGS.items()
        if values.get(key) is not None
        and (ranks > 1 or key not in ("ranks", "ranks_per_node"))
    )


def result_message(submission: str, index: int, returncode: int, out: bytes,
                   err: bytes) -> bytes:
    """What a task's HMAC covers: its identity, exit status, stdout and stderr."""
    header = f"{RESULT_VERSION}\n{submission}\n{index}\n{returncode}\n{len(out)}\n{len(err)}\n"
    return header.encode() + out + err


def result_digest(key: bytes, submission: str, index: int, returncode: int, out: bytes,
                  err: bytes) -> str:
    """The hex HMAC-SHA256 a task writes to ``task-<i>.hmac``."""
    message = result_message(submission, index, returncode, out, err)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


_SLURM_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")


def dependency_flags(after: Sequence[str]) -> tuple[str, ...]:
    """The sbatch options that make a job wait for the jobs ``after`` (Slurm ids ``"123"``
    or ``"123_4"``; an array's id waits for all of its tasks) to complete successfully, and
    be cancelled when one of them fails or is cancelled. Empty when ``after`` is.

    Raises:
        ValueError: an id is not a Slurm job or array task id.
    """
    if not after:
        return ()
    for job in after:
        if not _SLURM_ID.match(job):
            raise ValueError(f"{job!r} is not a Slurm job id (123, or 123_4 for an array task)")
    ids = ":".join(dict.fromkeys(after))
    return (f"--dependency=afterok:{ids}", "--kill-on-invalid-dep=yes")


# The job script's body. __EXIT__ is EXIT_WRAPPER_FAILED, __VERSION__ RESULT_VERSION.
_BODY = r"""set -u
umask 077
hog_fail() { printf 'hog: %s\n' "$1" >&2; exit __EXIT__; }
# hog_hmac KEYFILE < MESSAGE: HMAC-SHA256 (RFC 2104) of stdin with sha256sum, in hex.
hog_hmac() {
  local key b i ipad='' opad='' esc inner outer
  key=$(< "$1") || return 1
  [ "${#key}" -gt 0 ] && [ "${#key}" -le 128 ] || return 1
  for ((i = 0; i < 64; i++)); do
    b=0
    if ((2 * i < ${#key})); then b=$((16#${key:2*i:2})); fi
    printf -v esc '\\x%02x' $((b ^ 0x36)); ipad+=$esc
    printf -v esc '\\x%02x' $((b ^ 0x5c)); opad+=$esc
  done
  inner=$({ printf "$ipad"; cat; } | sha256sum) || return 1
  inner=${inner%% *}
  esc=''
  for ((i = 0; i < 64; i += 2)); do esc+="\\x${inner:i:2}"; done
  outer=$({ printf "$opad"; printf "$esc"; } | sha256sum) || return 1
  printf '%s\n' "${outer%% *}"
}
hog_i=${SLURM_ARRAY_TASK_ID:-0}
hog_task="$hog_dir/task-$hog_i"
[ -r "$hog_task.sh" ] \
  || hog_fail "cannot read $hog_task.sh on $(hostname): do compute nodes see shared_dir?"
[ -r "$hog_key" ] || hog_fail "cannot read the key file $hog_key on $(hostname)"
# A requeued job runs this script again from the start: no result of an earlier run stays.
rm -f "$hog_task.rc" "$hog_task.hmac" "$hog_task.hmac.part"
# SIGUSR1 (--signal=B:USR1@N, or scancel --signal=USR1 --batch) warns the call that its
# time is nearly up: the bundle runs in the background so that this shell can pass it on.
hog_bpid='' hog_sig=0
trap 'hog_sig=1; [ -z "$hog_bpid" ] || kill -USR1 "$hog_bpid" 2>/dev/null' USR1
bash "$hog_task.sh" < /dev/null > "$hog_task.out" 2> "$hog_task.err" &
hog_bpid=$!
while :; do
  hog_sig=0
  wait "$hog_bpid"
  hog_rc=$?
  [ "$hog_sig" = 1 ] || break  # a signal interrupted the wait, not the end of the bundle
done
printf '%s\n' "$hog_rc" > "$hog_task.rc" || hog_fail "cannot write $hog_task.rc"
hog_nout=$(wc -c < "$hog_task.out") && hog_nerr=$(wc -c < "$hog_task.err") \
  || hog_fail "cannot read the output of task $hog_i"
{ printf '__VERSION__\n%s\n%s\n%s\n%s\n%s\n' "$hog_sub" "$hog_i" "$hog_rc" \
    "$((hog_nout))" "$((hog_nerr))"
  cat "$hog_task.out" "$hog_task.err"
} | hog_hmac "$hog_key" > "$hog_task.hmac.part" \
  && mv -f "$hog_task.hmac.part" "$hog_task.hmac" \
  || hog_fail "cannot record the result of task $hog_i"
# The outcome of the call is in task-$hog_i.rc. A call whose result file (listed in
# task-$hog_i.keys) is missing failed: the job fails too, so that jobs depending on it
# (afterok) never run; otherwise the job succeeded.
if [ -r "$hog_task.keys" ]; then
  while IFS= read -r hog_k; do
    [ -z "$hog_k" ] || [ -e "$hog_k.ready" ] || exit __MISSING__
  done < "$hog_task.keys"
fi
exit 0
"""


@dataclass(frozen=True)
class ClusterLimits:
    """What the Slurm controller allows, from ``scontrol show config`` (None: not known).

    Attributes:
        max_array_size: ``MaxArraySize``: array indices go up to one less (0: no arrays).
        max_job_count: ``MaxJobCount``: jobs the controller holds; each array task counts.
    """

    max_array_size: int | None = None
    max_job_count: int | None = None


def parse_cluster_limits(text: str) -> ClusterLimits:
    """The limits in the output of ``scontrol show config`` (lines ``Name = value``)."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip().split(" ", 1)[0]
        if sep and name in ("MaxArraySize", "MaxJobCount") and value.isdigit():
            found[name] = int(value)
    return ClusterLimits(found.get("MaxArraySize"), found.get("MaxJobCount"))


def array_limit(limits: ClusterLimits, cap: int) -> int:
    """Most tasks one job array of indices ``0..n-1`` may have: ``cap``, lowered to what the
    cluster allows (at least 1: a cluster without arrays gets plain jobs)."""
    allowed = [cap]
    if limits.max_array_size is not None:
        allowed.append(limits.max_array_size)  # indices 0 .. MaxArraySize - 1
    if limits.max_job_count is not None:
        allowed.append(limits.max_job_count - 1)  # the array must fit beside other jobs
    return max(1, min(allowed))


def split_arrays(count: int, limit: int) -> list[range]:
    """``range(count)`` in consecutive runs of at most ``limit``: one job array each."""
    if limit < 1:
        raise ValueError("an array holds at least one task")
    return [range(start, min(start + limit, count)) for start in range(0, count, limit)]


def render_sbatch(spec: SbatchSpec) -> str:
    """The sbatch script (text) of one submission.

    Raises:
        ValueError: a value contains a control character, or ``count`` is below 1.
    """
    if spec.count < 1:
        raise ValueError("a submission runs at least one bundle")
    dq = directive_quote
    q = shlex.quote
    array = spec.count > 1
    log = "slurm-%a.log" if array else "slurm-0.log"
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={dq('hog-' + spec.submission)}",
        f"#SBATCH --output={dq(_pattern_escape(spec.job_dir) + '/' + log)}",
        "#SBATCH --requeue",
    ]
    if array:
        limit = f"%{spec.max_parallel}" if spec.max_parallel else ""
        lines.append(f"#SBATCH --array=0-{spec.count - 1}{limit}")
    if spec.time_minutes is not None:
        lines.append(f"#SBATCH --time={int(spec.time_minutes)}")
    if spec.signal_lead > 0:
        lines.append(f"#SBATCH --signal=B:USR1@{min(int(spec.signal_lead), MAX_SIGNAL_LEAD)}")
    if spec.comment:
        lines.append(f"#SBATCH --comment={dq(spec.comment)}")
    for flag, value in spec.options:
        lines.append(f"#SBATCH {flag}={dq(value)}")
    for flag in dependency_flags(spec.after):
        lines.append(f"#SBATCH {flag}")
    for extra in spec.extra_flags:
        lines.append(f"#SBATCH {dq(extra)}")
    what = f"{spec.count} bundles as a job array" if array else "one bundle"
    lines += [
        f"# hog-executor {__version__}: runs {what} from the directory below;",
        "# task i runs task-<i>.sh and records task-<i>.{out,err,rc,hmac} (authenticated).",
        f"hog_dir={q(spec.job_dir)}",
        f"hog_key={q(spec.key_file)}",
        f"hog_sub={q(spec.submission)}",
    ]
    if spec.uv:
        lines.append(f"[ -n \"${{HOG_UV:-}}\" ] || export HOG_UV={q(spec.uv)}")
    if spec.signal_lead > 0:
        lines.append(f"export HOG_SIGNAL_LEAD={int(spec.signal_lead)}")
    body = _BODY.replace("__EXIT__", str(EXIT_WRAPPER_FAILED)).replace(
        "__VERSION__", RESULT_VERSION).replace("__MISSING__", str(EXIT_RESULT_MISSING))
    return "\n".join(lines) + "\n" + body


def check_flags(flags: Sequence[str]) -> tuple[str, ...]:
    """Validate ``sbatch_flags`` (used by the backend's key check); see :data:`FORBIDDEN`."""
    out = []
    for flag in flags:
        if not isinstance(flag, str):
            raise ValueError(f"{flag!r} is not a string")
        if _UNSAFE.search(flag):
            raise ValueError(f"{flag!r} contains a control character")
        if not re.match(r"-[A-Za-z]|--[A-Za-z]", flag):
            raise ValueError(
                f"{flag!r} is not an option: write each option with its value in one item, "
                "as \"--flag=value\" or \"-Xvalue\""
            )
        if flag.startswith("--"):
            name = flag.split("=", 1)[0]
            if len(name) > 2 and any(f.startswith(name) for f in FORBIDDEN_LONG):
                raise ValueError(f"{flag!r}: {FORBIDDEN_REASON}")
        else:
            if flag[1] in FORBIDDEN_SHORT:
                raise ValueError(f"{flag!r}: {FORBIDDEN_REASON}")
            if flag[2:3].isspace():
                raise ValueError(f"{flag!r}: write the value right after the flag, or use "
                                 "the --long=value form")
        out.append(flag)
    return tuple(out)


#: sbatch options that would break how the backend runs and watches jobs.
FORBIDDEN_LONG = (
    "--array", "--output", "--error", "--input", "--parsable", "--wrap", "--wait",
    "--test-only", "--help", "--usage", "--version", "--requeue", "--no-requeue",
    "--signal",
)
FORBIDDEN_SHORT = "aoeiWhV"
FORBIDDEN_REASON = (
    "the slurm backend sets this itself (array, output files, requeueing, the warning signal "
    "and waiting are how it runs and watches jobs; see the signal_lead key)"
)
