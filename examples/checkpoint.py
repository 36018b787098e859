# /// script
# requires-python = ">=3.10"
# dependencies = []
#
# [tool.hog.cluster]
# backend = "slurm"
# partition = "debug"
# walltime = "00:02:00"
# signal_lead = 30
# ///
"""A computation longer than its walltime: warned before its time is up, it saves its state
and returns a continuation, which runs as a new call; the future gets the final value.

    python examples/checkpoint.py            # local: each call may run 6 s, warned at 3 s
    python examples/checkpoint.py cluster    # the [tool.hog.cluster] table: Slurm warns
                                             # 30 s before the 2-minute limit

On Slurm the warning comes from the scheduler (``--signal``, ``signal_lead`` seconds ahead).
On the local endpoint it is asked for with ``HOG_SIGNAL_LEAD`` in ``env``, for a call in a
process of its own (``fresh_process=True``). The state file lives in a temporary directory of
this machine: on a real cluster, put it where the compute nodes see it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import hog_executor
from hog_executor import Continue, HogExecutor


def count_to(target: int, state_file: str, start: int = 0, step_seconds: float = 0.05):
    """Count from ``start`` to ``target``, one step every ``step_seconds``; when warned, save
    where it got to and hand the rest of the count back as a continuation."""
    n = start
    while n < target:
        time.sleep(step_seconds)  # one unit of work
        n += 1
        if hog_executor.time_is_up():
            with open(state_file, "w") as f:
                json.dump({"n": n, "pid": os.getpid()}, f)
            return Continue(count_to, target, state_file, n, step_seconds)
    return n


if __name__ == "__main__":
    endpoint = sys.argv[1] if len(sys.argv) > 1 else "local"
    state = os.path.join(tempfile.mkdtemp(), "state.json")
    if endpoint == "local":
        ex = HogExecutor("local", walltime=6, fresh_process=True, max_requeues=10,
                         env={"HOG_SIGNAL_LEAD": "3"})
        target = 150  # 7.5 s of work: more than one walltime
    else:
        ex = HogExecutor(endpoint, max_requeues=10)
        target = 3000  # 150 s of work
    with ex:
        future = ex.submit(count_to, target, state)
        print(f"counted to {future.result()} in {future.continuations + 1} calls")
