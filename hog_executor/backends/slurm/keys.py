"""Configuration keys of the ``slurm`` backend and how their values are checked."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from ...config import Key, positive_int
from .sbatch import check_flags, dependency_flags

__all__ = ["SLURM_KEYS", "default_shared_dir", "shared_dir_path"]

_NAME = re.compile(r"^[A-Za-z0-9_.@+-]+$")
_LIST = re.compile(r"^[A-Za-z0-9_.@+-]+(,[A-Za-z0-9_.@+-]+)*$")
_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.,&|!*()\[\]:=-]+$")
#: The shortest ``poll_interval`` accepted, in seconds.
MIN_POLL_INTERVAL = 0.1


def default_shared_dir() -> str:
    """``$SCRATCH/.hog-executor/slurm`` when ``$SCRATCH`` is set, else ``~/.hog-executor/slurm``."""
    base = os.environ.get("SCRATCH") or os.path.expanduser("~")
    return os.path.join(base, ".hog-executor", "slurm")


def _name(what: str, pattern: re.Pattern[str] = _NAME) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not pattern.match(value):
            raise ValueError(f"expected {what}, got {value!r}")
        return value

    return check


def _count_or(pattern: str, what: str) -> Callable[[Any], str]:
    """A check for a positive count, or a string matching ``pattern``; both as strings."""
    def check(value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return str(value)
        if isinstance(value, str) and re.fullmatch(pattern, value):
            return value
        raise ValueError(f"expected {what}, got {value!r}")

    return check


def _mem(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"\d+[KMGTkmgt]?", value.strip()):
        return value.strip().upper()
    raise ValueError(f"expected megabytes or a size such as \"4G\", got {value!r}")


def _flags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError("expected a list of sbatch options such as [\"--exclusive\"]")
    return check_flags(value)


def _after(value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError("expected a list of Slurm job ids such as [\"4711\", \"4712_3\"]")
    ids = tuple(str(v) for v in value)
    dependency_flags(ids)  # checks each id
    return ids


def shared_dir_path(value: Any) -> str:
    """The absolute path a ``shared_dir`` value names (it reaches the job script quoted)."""
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError("expected a path")
    path = os.path.abspath(os.path.expanduser(os.fspath(value)))
    if re.search(r'[\x00-\x1f\x7f"\\]', path):
        raise ValueError(f"{path!r} contains a quote, a backslash or a control character")
    return path


def _interval(value: Any) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or value < MIN_POLL_INTERVAL):
        raise ValueError(f"expected seconds (at least {MIN_POLL_INTERVAL}), got {value!r}")
    return float(value)


def _lead(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected whole seconds (0: no warning), got {value!r}")
    return value


def _job_key(name: str, doc: str, check: Callable[[Any], Any]) -> Key:
    """A key read from each submission's config, so ``ex.options(...)`` may change it."""
    return Key(name, doc, check, per_call=True)


def _backend_key(name: str, doc: str, check: Callable[[Any], Any]) -> Key:
    """A key of the backend as a whole: it cannot change per call."""
    return Key(name, doc, check, per_call=False)


SLURM_KEYS: dict[str, Key] = {
    k.name: k for k in [
        _job_key("partition", "Slurm partition(s) (--partition)",
                 _name("a partition name", _LIST)),
        _job_key("account", "account charged for the jobs (--account)", _name("an account")),
        _job_key("qos", "quality of service (--qos)", _name("a QOS name")),
        _job_key("cpus_per_task", "CPUs per bundle (--cpus-per-task)", positive_int),
        _job_key("mem", "memory per node: megabytes or \"4G\" (--mem)", _mem),
        _job_key("gpus", "GPUs per job: a count or \"type:count\" (--gpus)",
                 _count_or(r"([A-Za-z0-9_.-]+:)?[1-9][0-9]*", "a GPU count or \"type:count\"")),
        _job_key("nodes", "nodes per job: a count or \"min-max\" (--nodes); a call "
                 "with ranks > 1 spreads its ranks over them",
                 _count_or(r"[1-9][0-9]*(-[1-9][0-9]*)?", "a node count or \"min-max\"")),
        _job_key("ranks_per_node", "with ranks > 1: ranks on each node (--ntasks-per-node)",
                 positive_int),
        _job_key("constraint", "node features required (--constraint)",
                 _name("a feature expression", _CONSTRAINT)),
        _backend_key("max_parallel", "array tasks running at once (the %N of --array); also "
                     "sizes map chunks", positive_int),
        _backend_key("max_array_size", "most tasks in one job array: a map with more is "
                     "split into several arrays (default 1000, lowered to what the cluster's "
                     "MaxArraySize and MaxJobCount allow)", positive_int),
        _job_key("sbatch_flags", "extra sbatch options, each \"--flag=value\"", _flags),
        _job_key("after", "Slurm job ids the jobs wait for (--dependency=afterok, "
                 "--kill-on-invalid-dep=yes); set for futures passed as arguments", _after),
        _backend_key("shared_dir", "directory for job files, visible from the compute nodes "
                     "(default: $SCRATCH or ~, /.hog-executor/slurm)", shared_dir_path),
        _job_key("signal_lead", "seconds before the end of a call's time at which it is "
                 "warned with SIGUSR1 (hog_executor.time_is_up(); default: a tenth of the "
                 "walltime, 10 to 300 s; 0: no warning)", _lead),
        _backend_key("poll_interval", "seconds between status queries at first (default 2; "
                     "grows while nothing changes)", _interval),
    ]
}
